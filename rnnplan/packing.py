"""A torch PackedSequence as rnnplan runs it: a padded time-major batch read by one gather of the
packed rows, the lengths (or, on the GPU, their mask), and the gather back into packed order. For
`rnnplan.compile`; needs PyTorch."""

from __future__ import annotations

import numpy as np
import torch


def packed_layout(packed, dtype: torch.dtype):
    """For a PackedSequence (T steps, B sequences, N rows of data): the lengths (B ints on the host;
    where torch keeps the sorting on the GPU, the (T, B) mask of them there instead, 1 inside a
    sequence, in `dtype`), the row of `data` each (t, b) of the padded time-major batch reads (row 0
    past a sequence's end: masked, so any finite row will do), and the padded (t*B + b) row each
    packed row comes from. What depends on batch_sizes alone is computed on the host in NumPy
    (torch's small CPU ops cost several times as much); the permutation by sorted_indices is applied
    where torch keeps them, so that a packed batch on the GPU costs no host synchronization (reading
    them on the host waited for all the GPU's queued work every call). torch's pad_packed_sequence
    and pack_padded_sequence copy one step a launch (0.4-0.8 ms each at T 100 on the H200)."""
    sizes = packed.batch_sizes.numpy()
    steps, batch = len(sizes), int(sizes[0])
    offsets = np.cumsum(sizes) - sizes
    inside = np.arange(batch)[None, :] < sizes[:, None]  # (t, j): the j-th longest sequence has step t
    step_of_row = np.repeat(np.arange(steps), sizes)
    host = np.concatenate([np.where(inside, offsets[:, None] + np.arange(batch)[None, :], 0).ravel(),
                           step_of_row * batch, np.arange(len(step_of_row)) - offsets[step_of_row], inside.ravel()])
    n, rows = steps * batch, len(step_of_row)
    if packed.sorted_indices is None:  # sorted already: sequence b is the b-th longest
        on = torch.from_numpy(host)
        return inside.sum(0).tolist(), on[:n], on[n:n + rows] + on[n + rows:n + 2 * rows]
    order, rank = packed.sorted_indices, packed.unsorted_indices  # who is j-th; b's position
    device = order.device
    on = torch.from_numpy(host).to(device, non_blocking=True)
    pad_sorted, base, j_of_row, inside_sorted = on[:n].view(steps, batch), on[n:n + rows], on[n + rows:n + 2 * rows], \
        on[n + 2 * rows:].view(steps, batch)
    pad_rows = pad_sorted.index_select(1, rank).reshape(-1)
    pack_rows = base + order.index_select(0, j_of_row)
    if device.type == "cpu":
        return inside.sum(0)[rank.numpy()].tolist(), pad_rows, pack_rows
    return inside_sorted.index_select(1, rank).to(dtype), pad_rows, pack_rows


def host_lengths(lengths):
    """Lengths on the host: a (T, B) mask on the device summed and read back (a synchronization:
    only for the paths that need them there, torch.compile's op and Executor.run)."""
    return lengths.sum(0).round().int().tolist() if isinstance(lengths, torch.Tensor) else lengths
