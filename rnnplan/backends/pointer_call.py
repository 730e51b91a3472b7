"""A call of a CuPy executor by device pointers on the caller's stream: copy the input and state in,
replay the CUDA graph, copy the results out, and nothing else. For a caller that owns its tensors and
has checked them (`rnnplan.compile`: shape, dtype, device and contiguity, each once per call), so
that a call costs a few CUDA API calls of Python time instead of an `Executor.run` with its checks,
events and allocations. Everything is on the one stream, so the caller's stream order is the
call's: no events are needed.

Holds for a graph-mode executor without `debug` of time-major input whose input buffers are
contiguous (`why_not` says which of these fails). `PointerCall.packed` takes a torch PackedSequence's
rows, indices and layout instead of a padded input, for a masked plan whose output sequence is one
view: one launch of `cuda/packed.cu` fills the padded input and the mask, another writes the packed
output rows. Outside a stream capture a padded call's three launches go through the CUDA driver's
C API (`driver_launch`) where it is there, else through CuPy.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np

from rnnplan.backends import driver_launch


def why_not(executor) -> str | None:
    """Why `executor` cannot be called by pointers (None: it can)."""
    impl = executor.impl
    if executor.backend != "cupy" or getattr(impl, "graph", None) is None:
        return "needs the cupy backend in graph mode"
    plan = impl.plan
    if impl.debug or plan.spec.batch_first:
        return "debug and batch-first inputs take Executor.run"
    if any(v.ld != v.cols for v in plan.inputs.values()):
        return "an input buffer is strided"
    return None


class CopyJobs:
    """One launch of `cuda/copies.cu` over a job table made once (7 words a job: the fixed side's
    address, its row stride, the caller's offset and row stride, rows, bytes a row, which of the
    caller's four pointers and the direction): `jobs(stream, p0, p1, p2, p3)`, a caller's pointer of
    0 meaning zeros in, nothing out. By the CUDA driver (`driver_launch`: a microsecond or two of
    Python) where it is there and `device` is current, else by CuPy (5-10)."""

    def __init__(self, cp, device: int, jobs: list[tuple[int, ...]]):
        self.cp, self.device = cp, device
        with cp.cuda.Device(device):
            self.kernel = _copy_kernel(cp, device)
            self.table, self.grid = cp.asarray(jobs, dtype=np.uint64), _grid(jobs)
            function = driver_launch.function_handle(self.kernel) if driver_launch.why_not() is None else None
        self.driver = None if function is None else \
            driver_launch.FixedLaunch(function, self.grid, THREADS, (self.table.data.ptr,), 4)
        self._streams: dict[int, object] = {}  # caller's stream pointer -> CuPy's handle on it

    def __call__(self, stream: int, p0: int, p1: int, p2: int, p3: int) -> None:
        cp = self.cp
        if self.driver is not None and cp.cuda.runtime.getDevice() == self.device:  # the driver acts in the current context
            self.driver(stream, p0, p1, p2, p3)
            return
        handle = self._streams.get(stream) or self._streams.setdefault(stream, cp.cuda.ExternalStream(stream))
        with cp.cuda.Device(self.device):
            self.kernel(self.grid, (THREADS,), (self.table, *(np.uint64(p) for p in (p0, p1, p2, p3))), stream=handle)


class PointerCall:
    """`call(stream, x, states, outs, mask=None)`: pointers (ints) of the time-major input (T, B, I),
    of the initial states in the plan's order (h0, c0; None: zeros), of the outputs, C-contiguous in
    the plan's dtype: out (T, B, D*H), then h_n (and c_n), (L*D, B, H), and with variable lengths of
    the (T, B) mask (1 inside a sequence) in the plan's dtype, on the device. The copies in and the copies out
    are one launch each of `cuda/copies.cu` (`CopyJobs`), whose job tables (the plan's side of every copy)
    are made here: a CUDA API call costs microseconds of Python, a call would otherwise make 5-8."""

    def __init__(self, executor):
        reason = why_not(executor)
        if reason is not None:
            raise ValueError(f"PointerCall: {reason}")
        impl = self.impl = executor.impl
        cp, plan, item = impl.cp, impl.plan, impl.dtype.itemsize
        jobs_in = [(impl._ptr(plan.inputs[name]), 0, 0, 0, 1, plan.inputs[name].rows * plan.inputs[name].cols * item, i)
                   for i, name in enumerate(("x", "h0", "c0", "mask")) if name in plan.inputs]
        jobs_out = [(src, src_ld * item, offset, dst_ld * item, rows, cols * item, i + 4)
                    for i, name in enumerate(("out", "h_n", "c_n")) if name in plan.outputs
                    for offset, dst_ld, src, src_ld, rows, cols in impl.copies_out(plan.outputs[name])]
        # A packed call's copies: the states' alone (packed.cu moves the sequences and the mask).
        states_in = [j for j in jobs_in if j[-1] in (1, 2)]
        states_out = [j for j in jobs_out if j[-1] in (5, 6)]
        device = impl.device.id
        self.copy_in, self.copy_out = CopyJobs(cp, device, jobs_in), CopyJobs(cp, device, jobs_out)
        self.states_in, self.states_out = (CopyJobs(cp, device, jobs) if jobs else None for jobs in (states_in, states_out))
        with impl.device:
            self.packing = _packed_kernels(cp, impl.device.id) if packable(executor) is None else None
        self._streams: dict[int, object] = {}  # caller's stream pointer -> CuPy's handle on it
        self._graph_exec: int | None = None  # the graph's cudaGraphExec_t, once CuPy has instantiated it

    def _stream(self, stream: int):
        handle = self._streams.get(stream)
        if handle is None:
            handle = self._streams[stream] = self.impl.cp.cuda.ExternalStream(stream)
        return handle

    def _launch_graph(self, stream: int) -> None:
        """The plan's graph on `stream`: by the driver once CuPy has instantiated it (at its first launch)
        and where the executor's device is current, else by CuPy."""
        impl, graph = self.impl, self._graph_exec
        if graph is not None and impl.cp.cuda.runtime.getDevice() == impl.device.id:
            driver_launch.launch_graph(graph, stream)
            return
        with impl.device:
            impl.graph.launch(stream=self._stream(stream))
        if driver_launch.why_not() is None:
            self._graph_exec = driver_launch.graph_handle(impl.graph)

    def packed(self, stream: int, data: int, rank: int, order: int, layout: int, steps: int, rows: int, states,
               outs) -> None:
        """A packed batch (`packable` holds): pointers of its `data` (rows x I), `rank` and `order`
        (int64, B: torch's unsorted_indices and sorted_indices), `layout` (int64: the batch sizes,
        then the row offsets, `steps` each), all on the device in the plan's dtype where they hold
        values; `states` as for a call; `outs`: the packed output rows (rows x D*H), h_n, c_n.
        Not inside the caller's stream capture (the layout comes from the host each call)."""
        impl, (unpack, repack) = self.impl, self.packing
        plan, item = impl.plan, impl.dtype.itemsize
        x, mask, y = plan.inputs["x"], plan.inputs["mask"], plan.outputs["out"][0]
        spec = plan.spec
        handle = self._stream(stream)
        impl._zeroed_states.clear()
        h0, c0 = states
        with impl.device:
            n_in = x.rows * x.cols * item // 2  # 2-byte words, the most a thread may move
            unpack((_blocks(n_in),), (THREADS,), (np.uint64(data), np.uint64(impl._ptr(x)), np.uint64(impl._ptr(mask)),
                                                   np.uint64(layout), np.uint64(rank), np.int32(steps),
                                                   np.int32(spec.seq_len), np.int32(spec.batch),
                                                   np.uint64(x.cols * item), np.uint32(ONE_BITS[impl.dtype.name]),
                                                   np.int32(item)), stream=handle)
        if self.states_in is not None:
            self.states_in(stream, 0, h0 or 0, c0 or 0, 0)
        self._launch_graph(stream)
        with impl.device:
            repack((_blocks(rows * y.cols * item // 2),), (THREADS,),
                   (np.uint64(impl._ptr(y)), np.uint64(outs[0]), np.uint64(layout), np.uint64(order), np.int32(steps),
                    np.int32(spec.batch), np.int64(rows), np.uint64(y.cols * item), np.uint64(y.ld * item)),
                   stream=handle)
        if self.states_out is not None:
            self.states_out(stream, 0, *outs[1:], 0)

    def __call__(self, stream: int, x: int, states, outs, capturing: bool = False, mask: int | None = None) -> None:
        """With `capturing` (the caller's stream is capturing a CUDA graph of its own), the plan is
        issued step by step on the executor's streams, forked from and joined back to the caller's,
        so that the caller's graph holds it (a graph is not launched inside another's capture)."""
        impl = self.impl
        h0, c0 = states
        impl._zeroed_states.clear()  # the state buffers now hold what this call gives (Executor.run's note)
        self.copy_in(stream, x, h0 or 0, c0 or 0, mask or 0)
        if capturing:
            handle = self._stream(stream)
            with impl.device:
                impl.caller_ready.record(handle)
                impl.streams[0].wait_event(impl.caller_ready)
                impl._issue()
                impl.results_ready.record(impl.streams[0])
                handle.wait_event(impl.results_ready)
        else:
            self._launch_graph(stream)
        self.copy_out(stream, *outs, 0)


def packable(executor) -> str | None:
    """Why `executor` cannot take packed calls (`PointerCall.packed`); None: it can."""
    plan = executor.impl.plan
    if not plan.spec.variable_lengths:
        return "the plan has no variable lengths (no mask)"
    out = plan.outputs["out"]
    if len(out) != 1 or any(v.ld != v.cols for v in (plan.inputs["x"], plan.inputs["mask"])):
        return "the output sequence is not one view, or the input is strided"
    return None


THREADS = 256
ONE_BITS = {"float32": 0x3F800000, "float16": 0x3C00, "bfloat16": 0x3F80}  # 1.0 in each storage type
_KERNELS: dict[int, object] = {}  # device -> the compiled copy kernel
_PACKED: dict[int, tuple] = {}  # device -> (unpack, repack)


def _packed_kernels(cp, device: int) -> tuple:
    if device not in _PACKED:
        module = cp.RawModule(code=(files("rnnplan.backends") / "cuda" / "packed.cu").read_text())
        _PACKED[device] = (module.get_function("rnnplan_unpack"), module.get_function("rnnplan_repack"))
    return _PACKED[device]


def _blocks(words: int) -> int:
    return max(1, min(4096, -(-words // THREADS)))


def _copy_kernel(cp, device: int):
    if device not in _KERNELS:
        source = (files("rnnplan.backends") / "cuda" / "copies.cu").read_text()
        _KERNELS[device] = cp.RawKernel(source, "rnnplan_copy_jobs")
    return _KERNELS[device]


def _grid(jobs) -> tuple[int, int]:
    """Blocks (x: enough for the largest job in 16-byte words, at most 1024; y: one row per job)."""
    words = max(rows * row_bytes for *_, rows, row_bytes, _which in jobs) // 16
    return (min(1024, max(1, -(-words // THREADS))), len(jobs))
