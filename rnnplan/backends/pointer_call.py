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
output rows. Outside a stream capture a padded call's launches go through the CUDA driver's C API
(`driver_launch`) where it is there, else through CuPy: three (copy in, plan, copy out), or one
where the plan's graph is small enough to take both copies as nodes of a copy of it (`whole`,
`GraphWithKernels`).
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


class KernelCall:
    """A kernel whose arguments are 64-bit words (pointers and integers; a narrower parameter reads
    the low bytes of its word), all fixed but those at the positions `changing`:
    `call(stream, grid, *values)`. By the CUDA driver (`driver_launch`: a microsecond or two of
    Python) where it is there and `device` is current, else by CuPy (5-10)."""

    def __init__(self, cp, device: int, kernel, block: int, words: list[int], changing: tuple[int, ...]):
        self.cp, self.device, self.kernel, self.block = cp, device, kernel, block
        self.words, self.changing = list(words), changing
        with cp.cuda.Device(device):
            function = driver_launch.function_handle(kernel) if driver_launch.why_not() is None else None
        self.driver = None if function is None else driver_launch.FixedLaunch(function, block, words, changing)

    def __call__(self, stream: int, grid: tuple[int, int], *values: int) -> None:
        cp = self.cp
        if self.driver is not None and cp.cuda.runtime.getDevice() == self.device:  # the driver acts in the current context
            self.driver(stream, grid, *values)
            return
        words = self.words.copy()
        for i, v in zip(self.changing, values):
            words[i] = v
        with cp.cuda.Device(self.device):
            self.kernel(grid, (self.block,), tuple(np.uint64(w) for w in words), stream=external_stream(cp, stream))


class CopyJobs:
    """One launch of `cuda/copies.cu` over a job table made once (7 words a job: the fixed side's
    address, its row stride, the caller's offset and row stride, rows, bytes a row, which of the
    caller's four pointers and the direction): `jobs(stream, p0, p1, p2, p3)`, a caller's pointer of
    0 meaning zeros in, nothing out. `relayed(relay_out, relay_in)`: its launch as a graph node
    that writes the caller's output pointers to `relay_out`, or reads its own from `relay_in`."""

    def __init__(self, cp, device: int, jobs: list[tuple[int, ...]]):
        with cp.cuda.Device(device):
            self.table, self.grid = cp.asarray(jobs, dtype=np.uint64), _grid(jobs)
            kernel = _copy_kernel(cp, device)
        self.call = KernelCall(cp, device, kernel, THREADS, [self.table.data.ptr, 0, 0] + [0] * 7, (3, 4, 5, 6))
        self.driver = self.call.driver

    def __call__(self, stream: int, p0: int, p1: int, p2: int, p3: int) -> None:
        self.call(stream, self.grid, p0, p1, p2, p3)

    def relayed(self, relay_out: int, relay_in: int) -> driver_launch.FixedLaunch | None:
        """The driver's launch of these copies with the relay's pointers set (changing a call: p0-p3
        and r0-r2 where it writes the relay, nothing where it reads it); None without the driver path."""
        if self.driver is None:
            return None
        changing = (3, 4, 5, 6, 7, 8, 9) if relay_out else ()
        return driver_launch.FixedLaunch(self.driver.function, THREADS,
                                         [self.table.data.ptr, relay_out, relay_in] + [0] * 7, changing)


class PointerCall:
    """`call(stream, x, states, outs, mask=None)`: pointers (ints) of the time-major input (T, B, I),
    of the initial states in the plan's order (h0, c0; 0: zeros), of the outputs, C-contiguous in
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
        self.packing = self._packing_calls(executor) if packable(executor) is None else None
        self._graph_exec: int | None = None  # the graph's cudaGraphExec_t, once CuPy has instantiated it
        self.one_launch = self._one_launch()
        self._current_device, self._device = cp.cuda.runtime.getDevice, impl.device.id  # (a call's check, bound once)

    def _packing_calls(self, executor) -> tuple[KernelCall, KernelCall]:
        """packed.cu's two kernels as `KernelCall`s: their words for this plan, and which change a call
        (unpack: data, layout, rank, steps; repack: the packed rows, layout, order, steps, rows)."""
        impl = self.impl
        plan, item, cp, device = impl.plan, impl.dtype.itemsize, impl.cp, impl.device.id
        x, mask, y = plan.inputs["x"], plan.inputs["mask"], plan.outputs["out"][0]
        with impl.device:
            unpack, repack = _packed_kernels(cp, device)
        self._unpack_grid = (_blocks(x.rows * x.cols * item // 2), 1)  # 2-byte words, the most a thread may move
        self._out_row_bytes = y.cols * item
        unpack_words = [0, impl._ptr(x), impl._ptr(mask), 0, 0, 0, plan.spec.seq_len, plan.spec.batch, x.cols * item,
                        ONE_BITS[impl.dtype.name], item]
        repack_words = [impl._ptr(y), 0, 0, 0, 0, plan.spec.batch, 0, y.cols * item, y.ld * item]
        return (KernelCall(cp, device, unpack, THREADS, unpack_words, (0, 3, 4, 5)),
                KernelCall(cp, device, repack, THREADS, repack_words, (1, 2, 3, 4, 6)))

    def _one_launch(self) -> driver_launch.GraphWithKernels | None:
        """The plan's graph between the copy-in and copy-out kernels, one graph launch (the driver's)
        a call (`one_launch`), for graphs of at most EMBED_MAX_NODES nodes; None where CuPy keeps no
        cudaGraph_t, the driver path is not there or the graph is larger."""
        graph = getattr(self.impl.graph, "graph", 0)
        with self.impl.device:
            return between_copies(graph, self.copy_in, self.copy_out) if graph else None

    def _launch_graph(self, stream: int) -> None:
        """The plan's graph on `stream`: by the driver once CuPy has instantiated it (at its first launch)
        and where the executor's device is current, else by CuPy."""
        impl, graph = self.impl, self._graph_exec
        if graph is not None and impl.cp.cuda.runtime.getDevice() == impl.device.id:
            driver_launch.launch_graph(graph, stream)
            return
        with impl.device:
            impl.graph.launch(stream=external_stream(impl.cp, stream))
        if driver_launch.why_not() is None:
            self._graph_exec = driver_launch.graph_handle(impl.graph)

    def packed(self, stream: int, data: int, rank: int, order: int, layout: int, steps: int, rows: int,
               states) -> None:
        """A packed batch (`packable` holds): pointers of its `data` (rows x I), `rank` and `order`
        (int64, B: torch's unsorted_indices and sorted_indices), `layout` (int64: the batch sizes,
        then the row offsets, `steps` each), all on the device in the plan's dtype where they hold
        values; `states` as for a call; `packed_finish` then writes the results (the caller allocates
        them while the plan runs). Not inside the caller's stream capture (the layout comes
        from the host each call)."""
        unpack = self.packing[0]
        self.impl._zeroed_states.clear()
        h0, c0 = states
        unpack(stream, self._unpack_grid, data, layout, rank, steps)
        if self.states_in is not None:
            self.states_in(stream, 0, h0, c0, 0)
        self._launch_graph(stream)

    def packed_finish(self, stream: int, layout: int, order: int, steps: int, rows: int, outs) -> None:
        """A packed call's results into `outs` (pointers: the packed output rows, rows x D*H, h_n, c_n),
        after `packed`."""
        repack = self.packing[1]
        repack(stream, (_blocks(rows * self._out_row_bytes // 2), 1), outs[0], layout, order, steps, rows)
        if self.states_out is not None:
            self.states_out(stream, 0, *outs[1:], 0)

    def __call__(self, stream: int, x: int, states, outs, capturing: bool = False, mask: int | None = None) -> None:
        self.start(stream, x, states, capturing, mask)
        self.finish(stream, outs)

    def start(self, stream: int, x: int, states, capturing: bool = False, mask: int | None = None) -> None:
        """The copies in and the plan, on `stream`; `finish` copies the results out. Between the two
        the caller may allocate the outputs: that host work then overlaps the plan on the GPU instead
        of delaying its start. With `capturing` (the caller's stream is capturing a CUDA graph of its
        own), the plan is issued step by step on the executor's streams, forked from and joined back
        to the caller's, so that the caller's graph holds it (a graph is not launched inside another's
        capture)."""
        impl = self.impl
        h0, c0 = states
        impl._zeroed_states.clear()  # the state buffers now hold what this call gives (Executor.run's note)
        self.copy_in(stream, x, h0, c0, mask or 0)
        if capturing:
            handle = external_stream(impl.cp, stream)
            with impl.device:
                impl.caller_ready.record(handle)
                impl.streams[0].wait_event(impl.caller_ready)
                impl._issue()
                impl.results_ready.record(impl.streams[0])
                handle.wait_event(impl.results_ready)
        else:
            self._launch_graph(stream)

    def finish(self, stream: int, outs) -> None:
        """The results into the caller's `outs` (pointers: out, h_n, c_n; 0 for one not taken)."""
        self.copy_out(stream, *outs, 0)

    def whole(self, stream: int, x: int, states, outs, mask: int | None = None) -> bool:
        """The whole call (`start` then `finish`) as one graph launch, where `one_launch` is there and
        the executor's device is current (else False, nothing launched): the outputs' pointers are
        needed before the launch, so the caller allocates them first (`torch_calls.OutputsAhead`
        does that one call ahead)."""
        one = self.one_launch
        if one is None or self._current_device() != self._device:
            return False
        self.impl._zeroed_states.clear()
        one.launch(stream, (x, *states, mask or 0, *outs))
        return True


class _RawStream:
    """A raw stream pointer under the CUDA stream protocol (`__cuda_stream__`: version 0, the handle)."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.ptr


_STREAMS: dict[int, object] = {}  # a caller's stream pointer -> CuPy's handle on it


def external_stream(cp, ptr: int):
    """CuPy's handle on the caller's stream `ptr` (for the launches through CuPy): `Stream.from_external`
    where this CuPy has it (CuPy 14 deprecates ExternalStream), else ExternalStream."""
    handle = _STREAMS.get(ptr)
    if handle is None:
        try:
            handle = cp.cuda.Stream.from_external(_RawStream(ptr))
        except (AttributeError, TypeError, ValueError):
            handle = cp.cuda.ExternalStream(ptr)
        _STREAMS[ptr] = handle
    return handle


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
EMBED_MAX_NODES = 16  # graphs that take their copies as nodes of their own (`between_copies`)
ONE_BITS = {"float32": 0x3F800000, "float16": 0x3C00, "bfloat16": 0x3F80}  # 1.0 in each storage type
_KERNELS: dict[int, object] = {}  # device -> the compiled copy kernel
_PACKED: dict[int, tuple] = {}  # device -> (unpack, repack)


def between_copies(graph: int, copy_in: CopyJobs, copy_out: CopyJobs) -> driver_launch.GraphWithKernels | None:
    """A copy of the CUDA graph `graph` (a cudaGraph_t of the current device) with `copy_in` ahead
    of it and `copy_out` after it, as one launch (`GraphWithKernels`: `launch(stream, (p0, p1, p2,
    p3, out, h_n, c_n))`, the copy-out's pointers handed over by the relay, copies.cu); None where the
    driver path is not there or the graph has more than EMBED_MAX_NODES nodes (one of hundreds of
    kernels would pay milliseconds of set-up to save microseconds a call)."""
    if driver_launch.why_not() is not None or copy_in.driver is None or copy_out.driver is None:
        return None
    if driver_launch.graph_nodes(graph) > EMBED_MAX_NODES:
        return None
    cp = copy_in.call.cp
    with cp.cuda.Device(copy_in.call.device):
        relay = cp.zeros(4, dtype=np.uint64)
    one = driver_launch.GraphWithKernels(graph, (copy_in.relayed(relay.data.ptr, 0), copy_in.grid),
                                         (copy_out.relayed(0, relay.data.ptr), copy_out.grid))
    one.keep = relay  # the graph's nodes point to it
    return one


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
