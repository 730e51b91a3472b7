"""What every backend returns, shaped the way torch returns it."""

from __future__ import annotations

from rnnplan.ir.cells import CELLS


def pack_outputs(spec, out, h_n, c_n):
    """Shape (seq, batch, D*H) / batch-first outputs and the state the way torch returns them: LSTM
    `(out, (h_n, c_n))`, the other cells `(out, h_n)`."""
    out = out.reshape(spec.seq_len, spec.batch, -1)
    if spec.batch_first:
        out = out.transpose(1, 0, 2)
    return (out, (h_n, c_n)) if "c" in CELLS[spec.cell].states else (out, h_n)
