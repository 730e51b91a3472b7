"""Calls of rnnplan's executors on torch tensors, for `rnnplan.compile`: by device pointers on the
caller's stream (`backends.pointer_call`; padded batches, and packed ones at a cached shape), or
through `Executor.run` (NumPy on the CPU, CuPy through DLPack on torch's current stream). Each call
returns `(out, h_n, c_n)` (c_n empty but for LSTMs), or for a packed call `(PackedSequence, state)`."""

from __future__ import annotations

import numpy as np
import torch

from rnnplan.executor import Executor
from rnnplan.packing import host_lengths
from rnnplan.spec import RNNSpec

_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def raw_stream(device: torch.device) -> int:
    """torch's current stream on `device`, as a pointer (torch's own C call, as Triton uses it, where
    it exists: a tenth of the microseconds of building a torch.cuda.Stream)."""
    return _RAW_STREAM(device.index) if _RAW_STREAM is not None else torch.cuda.current_stream(device).cuda_stream


def stream_of(x: torch.Tensor) -> int:
    """torch's current stream on the device of the CUDA tensor `x`, as a pointer (`raw_stream`, with
    no torch.device made: a call's hot path)."""
    return _RAW_STREAM(x.get_device()) if _RAW_STREAM is not None else raw_stream(x.device)


class OutputsAhead:
    """The tensors a call returns, for calls by one launch (`PointerCall.whole`, the cuDNN
    candidate's), whose copy-out needs their addresses before the launch: `take(x, stream)` returns
    the set made after the previous call's launch (while its GPU work ran, so that its allocations
    do not delay this call's start) where it was made on `stream` (the caching allocator's blocks
    belong to a stream), else a new one; `refill(x, stream)` then makes the next. So a compiled
    module holds one output set more than its callers do (`nbytes`)."""

    def __init__(self, shapes: tuple[tuple[int, ...], ...], nbytes: int):
        self.shapes, self.nbytes = shapes, nbytes
        self._ready, self._stream = None, None
        # One allocation a set (a CUDA tensor costs about 4 us of host time to allocate, a view of one
        # about 1): where the non-empty shapes differ in their first size alone, one split of a tensor
        # stacking them makes the set (LSTMs and GRUs without a second direction or a projection);
        # else views of one flat tensor. An empty shape (c_n but for LSTMs) is one empty tensor, the
        # same every call: it holds nothing to overwrite.
        sizes = [int(np.prod(s)) for s in shapes]
        sized = [s for s, n in zip(shapes, sizes) if n]
        trailing = {s[1:] for s in sized}
        self._stacked = ((sum(s[0] for s in sized), *trailing.pop()), [s[0] for s in sized]) \
            if len(trailing) == 1 and all(len(s) > 1 for s in sized) else None
        offsets = np.cumsum([0] + sizes).tolist()
        self._total = offsets[-1]
        self._views = [(s, tuple(int(np.prod(s[i + 1:])) for i in range(len(s))), o)
                       for s, o, n in zip(shapes, offsets, sizes) if n]
        self._empty_at = [i for i, n in enumerate(sizes) if not n]
        self._empty = None

    def _make(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._stacked is not None:
            made = list(x.new_empty(self._stacked[0]).split_with_sizes(self._stacked[1]))
        else:
            flat = x.new_empty(self._total)
            made = [flat.as_strided(s, stride, o) for s, stride, o in self._views]
        if self._empty_at:  # (a set's dtype and device are the candidate's, every call)
            if self._empty is None:
                self._empty = x.new_empty((0,))
            for i in self._empty_at:
                made.insert(i, self._empty)
        return tuple(made)

    def take(self, x: torch.Tensor, stream: int) -> tuple[torch.Tensor, ...]:
        ready = self._ready  # (made like x: a candidate's calls all have its dtype and device)
        if ready is None or self._stream != stream:
            return self._make(x)
        self._ready = None
        return ready

    def refill(self, x: torch.Tensor, stream: int) -> None:
        self._ready, self._stream = self._make(x), stream


def outputs_ahead(shapes: tuple[tuple[int, ...], ...], item: int) -> OutputsAhead:
    """`OutputsAhead` of `shapes` in a dtype of `item` bytes."""
    return OutputsAhead(shapes, sum(int(np.prod(s)) for s in shapes) * item)


def by_pointers(call, spec: RNNSpec, item: int):
    """A call on CUDA tensors by device pointers (backends.pointer_call): the outputs are allocated by
    torch on the caller's stream, filled there, and returned as they are. By one launch
    (`PointerCall.whole`) where the plan's graph takes its copies, else three (`start`, then the
    outputs allocated while the plan runs, then `finish`). `item`: bytes of the plan's dtype."""
    lstm = spec.cell == "lstm"
    out_shape = (spec.seq_len, spec.batch, spec.directions * spec.output_size)
    state_shape = (spec.num_layers * spec.directions, spec.batch, spec.output_size)
    c_shape = (*state_shape[:2], spec.hidden_size)
    steps = torch.arange(spec.seq_len)[:, None]
    ahead = outputs_ahead((out_shape, state_shape, c_shape if lstm else (0,)), item) \
        if call.one_launch is not None else None

    def run(x, h0, c0, lengths):
        mask = lengths if isinstance(lengths, torch.Tensor) else None  # (T, B) on the device already
        if spec.variable_lengths and mask is None:  # made on the host from the lengths, one copy to the device
            mask = (steps < torch.as_tensor(lengths)[None, :]).to(x.dtype).pin_memory().to(x.device, non_blocking=True)
        stream, states = stream_of(x), state_pointers(h0, c0)
        mask_ptr = None if mask is None else mask.data_ptr()
        capturing = torch.cuda.is_current_stream_capturing()
        if ahead is not None and not capturing:
            outs = ahead.take(x, stream)
            o, h, c = outs
            if call.whole(stream, x.data_ptr(), states, (o.data_ptr(), h.data_ptr(), c.data_ptr()), mask_ptr):
                ahead.refill(x, stream)
                return outs
        call.start(stream, x.data_ptr(), states, capturing, mask_ptr)
        # Allocated while the plan runs (stream-ordered: nothing launched above touches new blocks).
        out, h_n = x.new_empty(out_shape), x.new_empty(state_shape)
        c_n = x.new_empty(c_shape if lstm else (0,))
        call.finish(stream, (out.data_ptr(), h_n.data_ptr(), c_n.data_ptr()))
        return out, h_n, c_n
    run.call = call  # (for inspection: which launches it takes)
    run.ahead = ahead
    if call.packing is not None:  # PackedSequences by two launches of packed.cu (repeat calls at a shape)
        run.packed = packed_by_pointers(call, spec)
    return run


def state_pointers(h0, c0) -> tuple[int, int]:
    """The initial states' device pointers (0 where left out: zeros), as PointerCall and CopyJobs take them."""
    return (0 if h0 is None else h0.data_ptr(), 0 if c0 is None else c0.data_ptr())


def whole_tensor_copies(device: int, ins: list, outs: list):
    """(copy in, copy out): `backends.pointer_call.CopyJobs` between contiguous tensors of the callee
    (fixed) and the caller's four pointers, whole tensors each, `ins` and `outs` as (tensor, which):
    which of the caller's pointers (0-3), + 4 for a copy out. None without CuPy."""
    try:
        import cupy
    except ImportError:
        return None
    from rnnplan.backends.pointer_call import CopyJobs

    def jobs(pairs):
        return [(t.data_ptr(), 0, 0, 0, 1, t.numel() * t.element_size(), which) for t, which in pairs]
    return CopyJobs(cupy, device, jobs(ins)), CopyJobs(cupy, device, jobs(outs))


def graph_with_copies(graph: int, copies):
    """The CUDA graph `graph` (a cudaGraph_t of the current device) between the copies
    `whole_tensor_copies` made, as one launch (`backends.pointer_call.between_copies`), or None."""
    from rnnplan.backends.pointer_call import between_copies

    return between_copies(graph, *copies)


def graph_replay(graph: torch.cuda.CUDAGraph, device: int):
    """`replay(stream)` of a captured torch CUDA graph on torch's current stream `stream` of `device`:
    by the CUDA driver (`backends.driver_launch`) where torch exposes the cudaGraphExec_t and `device`
    is current, a microsecond or two before the replay starts instead of torch's replay, which also
    restores its random generators' state (for graphs that draw no random numbers: an RNN in eval
    mode); else torch's replay."""
    from rnnplan.backends import driver_launch

    raw = getattr(graph, "raw_cuda_graph_exec", None)
    handle = int(raw()) if raw is not None and driver_launch.why_not() is None else 0
    if not handle:
        return lambda stream: graph.replay()

    def replay(stream: int) -> None:
        if torch.cuda.current_device() == device:  # the driver acts in the current context
            driver_launch.launch_graph(handle, stream)
        else:
            graph.replay()
    return replay


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a NumPy array sharing its memory (bfloat16 as ml_dtypes' dtype, bit for bit)."""
    return t.view(torch.int16).numpy().view("bfloat16") if t.dtype == torch.bfloat16 else t.numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """`_numpy` the other way."""
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype.name == "bfloat16" else \
        torch.from_numpy(a)


def run_executor(ex: Executor, x: torch.Tensor, h0, c0, lengths):
    """One call of rnnplan's executor on torch tensors: NumPy on the CPU, CuPy through DLPack on
    torch's current stream."""
    lengths = host_lengths(lengths)
    state = None if h0 is None else ((h0, c0) if c0 is not None else h0)
    if x.device.type == "cpu":
        state = None if state is None else tuple(_numpy(s) for s in state) if isinstance(state, tuple) \
            else _numpy(state)
        out, st = ex.run(_numpy(x), state, lengths=lengths)
        tensors = [_tensor(np.ascontiguousarray(out))] + [_tensor(s) for s in (st if isinstance(st, tuple) else (st,))]
    else:
        import cupy

        with cupy.cuda.Device(x.device.index), _cupy_stream(cupy, torch.cuda.current_stream(x.device)):
            out, st = ex.run(x, state, lengths=lengths)
        tensors = [torch.from_dlpack(a) for a in (out, *(st if isinstance(st, tuple) else (st,)))]
        if x.dtype == torch.bfloat16:  # CuPy holds bf16 as its bits (int16)
            tensors = [t.view(torch.bfloat16) for t in tensors]
    return tensors[0], tensors[1], tensors[2] if len(tensors) > 2 else tensors[1].new_empty(0)


def _cupy_stream(cupy, stream: torch.cuda.Stream):
    """torch's stream as CuPy's current stream, so that a call is ordered after the caller's work and
    its results are ready there (CuPy 14 takes any object of the CUDA stream protocol)."""
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream)


def packed_by_pointers(call, spec):
    """A packed call of a masked plan by device pointers (`PointerCall.packed`): the layout from
    batch_sizes on the host (two cumulative arrays, one copy to the device), then the executor's own
    launches; the outputs are allocated by torch on the caller's stream. Returns
    `(PackedSequence, state)` as torch does."""
    lstm = spec.cell == "lstm"
    layers, width = spec.num_layers * spec.directions, spec.output_size
    identity: dict = {}  # (batch, device) -> arange, the indices of a sorted batch

    def run(packed, data: torch.Tensor, h0, c0):
        sizes = packed.batch_sizes.numpy()
        steps, batch, rows = len(sizes), int(sizes[0]), data.shape[0]
        # Pinned first: a pageable host-to-device copy may synchronize with the stream (CUDA's API
        # synchronization behavior); torch's caching host allocator reuses the block after the copy.
        layout = torch.from_numpy(np.concatenate([sizes, np.cumsum(sizes) - sizes])).pin_memory()
        layout = layout.to(data.device, non_blocking=True)
        rank, order = packed.unsorted_indices, packed.sorted_indices
        if order is None:
            rank = order = identity.get((batch, data.device))
            if rank is None:
                rank = order = identity[batch, data.device] = torch.arange(batch, device=data.device)
        stream, layout_ptr, order_ptr = raw_stream(data.device), layout.data_ptr(), order.data_ptr()
        call.packed(stream, data.data_ptr(), rank.data_ptr(), order_ptr, layout_ptr, steps, rows,
                    state_pointers(h0, c0))
        out = data.new_empty((rows, spec.directions * width))  # allocated while the plan runs
        h_n = data.new_empty((layers, batch, width))
        c_n = data.new_empty((layers, batch, spec.hidden_size)) if lstm else None
        call.packed_finish(stream, layout_ptr, order_ptr, steps, rows,
                           (out.data_ptr(), h_n.data_ptr(), 0 if c_n is None else c_n.data_ptr()))
        result = torch.nn.utils.rnn.PackedSequence(out, packed.batch_sizes, packed.sorted_indices,
                                                   packed.unsorted_indices)
        return result, ((h_n, c_n) if lstm else h_n)
    run.call = call  # (whose graph, once instantiated, the compiled call path launches)
    return run
