"""The `recurrent` node's payload: the whole recurrence of the network (every layer's recurrent GEMM
and cell update, every step, both directions) as one kernel, for the persistent lowering.

Operands, in order (`operand_shapes`): per chain (layer l, direction d, in layer-major order)
- l = 0: `xproj`, layer 0's input projection x @ W_ih^T for every step, (T*B, G*H), no bias;
  l > 0: `w_ih`, (G*H, D*H) in PyTorch's layout (the projection is computed inside the kernel);
- `w_hh` (G*H, H) in PyTorch's layout; with bias, `b_ih` and `b_hh` (1, G*H); with projections
  (LSTM `proj_size` P), `w_hr` (P, H);
then `h0` (and `c0` for LSTM), (L*D*B, H), and with variable lengths the `mask` (T*B, 1). Outputs:
every layer's output sequence `y{l}` (T*B, D*H), then `c_n` (L*D*B, H) for LSTM. With projections
h is P wide wherever it is read or written (`h_width`: w_hh (G*H, P), w_ih above layer 0 (G*H, D*P),
h0 and y), c stays H wide, and each step's h is `w_hr` times the cell's h. With variable
lengths y is 0 past a sequence's end, so h_n cannot be read from it: the outputs are then the last
layer's sequence only (the layers above read h from the kernel's own hand-off), `c_n`, and `h_n`
(L*D*B, H). `run_recurrence` is the reference semantics: plain
loops over layers, directions and steps with the cell's equations (`ir/cells.py`); h is rounded to
the storage dtype each step (it is re-read from memory), c stays in fp32 (it stays on-chip).

The payload also records which persistent kernel runs it (units per block, batch tile, where the
weights are held, the math mode), as a Gemm records its weight layout; what those choices imply
(shared-memory layout, register budgets, whether it fits a device) is the kernel's own business:
`rnnplan.persistent.PersistentKernel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnplan.ir.cells import CELLS, Cell
from rnnplan.precision import Precision


@dataclass(frozen=True, slots=True)
class Recurrence:
    cell: str
    num_layers: int
    directions: int
    seq_len: int
    batch: int
    hidden: int
    input_size: int
    bias: bool
    dtype: str
    units_per_block: int  # hidden units of one chain that one GPU block owns (its weight slice)
    # 0: the FFMA kernel (fp32 dot products); > 0: the tensor-core kernel (mma.sync), which works
    # through the batch in tiles of this many rows (a multiple of 8, the mma's N).
    batch_tile: int = 0
    # Each warp keeps its share of the weights in registers for the whole sequence, instead of
    # reading them from shared memory at every step.
    weights_in_registers: bool = False
    # PlanOptions.math the kernel runs with (tf32 whenever tensor cores run on fp32 storage).
    math: str = "fp32"
    # Sequences of their own lengths (RNNSpec.variable_lengths): the cell is the masked one.
    variable_lengths: bool = False
    # LSTM projections (RNNSpec.proj_size): h = W_hr @ (the cell's h) each step; 0 for none.
    proj_size: int = 0
    # Tensor-core kernel: the blocks of each chain form one thread-block cluster and hand h to each
    # other through distributed shared memory, instead of through global memory and counters.
    cluster: bool = False

    @property
    def cell_def(self) -> Cell:
        """The cell the kernel runs: with variable lengths its masked form (`Cell.masked`)."""
        return CELLS[self.cell].masked() if self.variable_lengths else CELLS[self.cell]

    @property
    def gates(self) -> int:
        return len(CELLS[self.cell].gates)

    @property
    def h_width(self) -> int:
        """The width of h as the recurrence reads and writes it: proj_size with projections, else hidden."""
        return self.proj_size or self.hidden

    @property
    def chains(self) -> list[tuple[int, int]]:
        """(layer, direction) of every chain of cell-steps, in operand order."""
        return [(l, d) for l in range(self.num_layers) for d in range(self.directions)]

    @property
    def precision(self) -> Precision:
        return Precision.of(self.dtype, self.math)


# The fields that say which network a Recurrence runs (the others say which kernel runs it).
NETWORK_FIELDS = ("cell", "num_layers", "directions", "seq_len", "batch", "hidden", "input_size", "bias", "dtype",
                  "variable_lengths", "proj_size")


def network_of(spec) -> dict[str, object]:
    """The network fields of a recurrence that runs `spec` (an RNNSpec, whose field for `hidden` is
    `hidden_size`)."""
    return {f: getattr(spec, "hidden_size" if f == "hidden" else f) for f in NETWORK_FIELDS}


def operand_shapes(r: Recurrence) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(input shapes, output shapes) of a recurrent node or step, in operand order."""
    G, H, T, B, D, L = r.gates, r.hidden, r.seq_len, r.batch, r.directions, r.num_layers
    R = r.h_width
    has_c = "c" in CELLS[r.cell].states
    ins = []
    for layer in range(L):
        for _ in range(D):
            ins.append((T * B, G * H) if layer == 0 else (G * H, D * R))
            ins.append((G * H, R))
            if r.bias:
                ins += [(1, G * H), (1, G * H)]
            if r.proj_size:
                ins.append((R, H))
    ins += [(L * D * B, R)] + ([(L * D * B, H)] if has_c else []) + ([(T * B, 1)] if r.variable_lengths else [])
    outs = [(T * B, D * R)] * (1 if r.variable_lengths else L) + ([(L * D * B, H)] if has_c else []) + \
        ([(L * D * B, R)] if r.variable_lengths else [])
    return ins, outs


def wavefront(r: Recurrence) -> dict[tuple[int, int, int], int]:
    """(layer, direction, step) -> the earliest round at which the persistent kernel can run that
    cell-step: one round after its own previous step and after the layer below produced its time
    step in every direction. The largest value + 1 is the kernel's dependent depth."""
    T, D = r.seq_len, r.directions
    level: dict[tuple[int, int, int], int] = {}
    for layer in range(r.num_layers):
        for d in range(D):
            for s in range(T):
                t = s if d == 0 else T - 1 - s
                ready = level[(layer, d, s - 1)] + 1 if s else 0
                if layer:
                    ready = max([ready] + [level[(layer - 1, d2, t if d2 == 0 else T - 1 - t)] + 1
                                           for d2 in range(D)])
                level[(layer, d, s)] = ready
    return level


def _by_gate(a: np.ndarray, cell: Cell) -> dict[str, np.ndarray]:
    return dict(zip(cell.gates, np.split(a, len(cell.gates), axis=1)))


def run_recurrence(r: Recurrence, args) -> list[np.ndarray]:
    """Reference semantics of the recurrent node (float32 math, `r.dtype` storage for h). With
    variable lengths the masked cell: past a sequence's end the state is kept and y is 0."""
    f32 = np.float32
    dtype = np.dtype(r.dtype)
    cell = r.cell_def
    has_c = "c" in cell.states
    T, B, H, D, L, R = r.seq_len, r.batch, r.hidden, r.directions, r.num_layers, r.h_width
    args = list(args)
    per_chain = (4 if r.bias else 2) + bool(r.proj_size)
    ys = [np.empty((T * B, D * R), dtype) for _ in range(L)]
    c_n, h_n = np.empty((L * D * B, H), dtype), np.empty((L * D * B, R), dtype)
    h0 = args[L * D * per_chain]
    c0 = args[L * D * per_chain + 1] if has_c else None
    mask = args[L * D * per_chain + 1 + has_c].astype(f32) if r.variable_lengths else None
    no_h = np.zeros((B, H), f32)  # the cell's h_prev with a projection (see below)
    for ci, (layer, d) in enumerate(r.chains):
        ops = [a.astype(f32) for a in args[ci * per_chain:(ci + 1) * per_chain]]
        rows = slice(ci * B, (ci + 1) * B)
        h = h0[rows].astype(f32)
        c = c0[rows].astype(f32) if c0 is not None else None
        for s in range(T):
            t = s if d == 0 else T - 1 - s
            here = slice(t * B, (t + 1) * B)
            gx = ops[0][here] if layer == 0 else ys[layer - 1][here].astype(f32) @ ops[0].T
            gh = h @ ops[1].T
            if r.bias:
                gx, gh = gx + ops[2], gh + ops[3]
            m = None if mask is None else mask[here]
            # (with a projection the cell's h_prev is unused by LSTM's equations but for the masked
            # cell's keep, which the projected h then replaces: the kept h is the projected one)
            new = cell.step(_by_gate(gx, cell), _by_gate(gh, cell), no_h if r.proj_size else h, c, m)
            c = new.get("c")
            h_cell = new["h"].astype(dtype).astype(f32)  # as the kernel re-reads it
            if r.proj_size:
                projected = (h_cell @ ops[-1].T).astype(dtype).astype(f32)
                h = projected if m is None else np.where(m != 0, projected, h)
            else:
                h = h_cell
            ys[layer][here, d * R:(d + 1) * R] = h if m is None else np.where(m != 0, h, f32(0))
        h_n[rows] = h
        if c is not None:
            c_n[rows] = c
    if r.variable_lengths:
        return [ys[-1]] + ([c_n] if has_c else []) + [h_n]
    return ys + ([c_n] if has_c else [])
