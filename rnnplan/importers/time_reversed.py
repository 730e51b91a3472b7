"""Reverse-only layers (ONNX `direction="reverse"`) as the forward network on reversed sequences: a
reverse layer reads each sequence from its own last step back, so reversing every sequence within
its length, running the forward layers and reversing their outputs back gives its output, and its
final state (the one at each sequence's first step). Needs torch."""

from __future__ import annotations

import numpy as np
import torch


class TimeReversed(torch.nn.Module):
    """A compiled forward network run on each sequence reversed in time within its own length, and
    its outputs reversed back: ONNX's `direction="reverse"` layers (their final state is the one at
    each sequence's first step). Called like the compiled module; `explain`, `cache_info` and `clear`
    are its."""

    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled

    def forward(self, input, hx=None):
        if isinstance(input, torch.nn.utils.rnn.PackedSequence):
            out, state = self.compiled(reversed_packed(input), hx)
            return reversed_packed(out), state
        steps = 1 if self.compiled.template.batch_first else 0
        out, state = self.compiled(input.flip(steps), hx)
        return out.flip(steps), state

    def explain(self) -> str:
        return "reverse-only layers: each sequence reversed in time, then\n" + self.compiled.explain()

    def cache_info(self):
        return self.compiled.cache_info()

    def clear(self) -> None:
        self.compiled.clear()


def reversed_packed(packed):
    """A PackedSequence with each sequence reversed within its own length (its own inverse): row
    (step t, j-th longest sequence of length L_j) becomes row (L_j - 1 - t, j). Computed from
    batch_sizes on the host, one gather of the data where it lives."""
    sizes = packed.batch_sizes.numpy()
    offsets = np.cumsum(sizes) - sizes
    step = np.repeat(np.arange(len(sizes)), sizes)
    position = np.arange(len(step)) - offsets[step]
    length = (sizes[None, :] > np.arange(int(sizes[0]))[:, None]).sum(1)  # L_j of the j-th longest
    rows = torch.from_numpy(offsets[length[position] - 1 - step] + position).to(packed.data.device)
    return torch.nn.utils.rnn.PackedSequence(packed.data.index_select(0, rows), packed.batch_sizes,
                                             packed.sorted_indices, packed.unsorted_indices)
