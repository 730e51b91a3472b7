"""The CuPy GPU executor: runs a Plan on one NVIDIA GPU.

At construction: the plan's memory estimate is checked against free device memory; every buffer of
the plan's table is allocated once; weights are uploaded and transformed (pre-transposed) once;
pointwise and fused steps get kernels generated from their expressions (compiled once per distinct
kernel, cached per process); GEMMs go to cuBLAS through one handle per stream (`cublas.py`); a
`recurrent` step (persistent lowering) becomes one cooperative launch of the kernel of
`rnnplan.persistent`, after `PersistentKernel.fit` says the device holds all its blocks at once.
`profile=True` compiles that kernel with its clock marks on (`persistent_profile()` reads them).

Each call issues the plan on its streams: a fork event lets every stream start after the input is
copied in, each step waits on its plan events and records its own, and a join brings all streams
back before the outputs are copied out. `mode="graph"` (default) captures that issue sequence once
into a CUDA graph and replays it per call (`capture=False` leaves the capture to `capture()`, for a
build off the calling thread); `mode="streams"` issues it from Python every call. Copies
in and out are cudaMemcpy(2D)Async calls where the layouts allow (a CuPy kernel costs several times
their Python time, which at small sizes is a large part of a call).

bfloat16 plans store bf16 as its bits in int16 CuPy arrays (CuPy has no bf16 dtype): they take torch
bf16 tensors (viewed as int16, no copy) or ml_dtypes arrays, and return int16 arrays of bf16 bits
(`torch.from_dlpack(a).view(torch.bfloat16)`; `rnnplan.compile` does that).

Ownership: `run` returns fresh CuPy arrays (copies), so a later call never overwrites them. The
call is ordered after work already queued on the caller's current CuPy stream, and that stream
waits for the results, so no host synchronization is needed in between.
"""

from __future__ import annotations

import numpy as np

from rnnplan.backends.cublas import WORKSPACE_BYTES, Cublas
from rnnplan.backends.device import describe_device
from rnnplan.backends.driver_launch import check_clusters
from rnnplan.backends.kernels import THREADS, compiled_pointwise, launch_grid
from rnnplan.backends.outputs import pack_outputs
from rnnplan.backends.shared import SharedResources
from rnnplan.lowering.plan import DEVICE_WRITTEN, BufferView, Plan, Step
from rnnplan.persistent import PROFILE_SLOTS, kernel_name, kernel_of
from rnnplan.persistent import THREADS as PERSISTENT_THREADS
from rnnplan.persistent import kernel_source as persistent_source
from rnnplan.precision import Precision
from rnnplan.resources import NotEnoughMemory, check_fits, plan_breakdown
from rnnplan.weights import Weights

MODES = ("graph", "streams")
BF16_NAN = 0x7FC0  # a quiet NaN's bits in bfloat16
_DEVICE_TO_DEVICE = 3  # cudaMemcpyDeviceToDevice
_KERNELS: dict[tuple[int, str], object] = {}  # (device, kernel name) -> compiled cupy.RawKernel


def _device_id(arr) -> int:
    return arr.device.id


def _bf16_bits(a):
    """A bfloat16 torch tensor or NumPy (ml_dtypes) array as int16 of the same bits, sharing memory."""
    if str(getattr(a, "dtype", "")) == "torch.bfloat16":
        import torch

        return a.view(torch.int16)
    return a.view(np.int16) if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16" else a


class DeviceMemoryError(NotEnoughMemory):
    """The plan does not fit in the device memory that is free (or a call ran out of it)."""


class CupyExecutor:
    def __init__(self, plan: Plan, weights: Weights, mode: str = "graph", device: int | None = None,
                 profile: bool = False, debug: bool = False, shared: SharedResources | None = None,
                 capture: bool = True):
        import cupy as cp

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.cp, self.plan, self.profile, self.debug, self.mode = cp, plan, profile, debug, mode
        self.unusable: str | None = None  # why this executor cannot run any more, after a CUDA error
        self._profiled: list = []  # (kernel, exchange buffer) of each profiled persistent kernel
        self.dtype = np.dtype(plan.spec.dtype)
        # What CuPy arrays hold: bf16 as its raw bits (CuPy has no bfloat16 dtype), the rest as is.
        self.storage = np.dtype(np.int16) if self.dtype.name == "bfloat16" else self.dtype
        self.nan = self.storage.type(BF16_NAN) if self.storage != self.dtype else np.nan  # debug's fill
        self.device = cp.cuda.Device(device) if device is not None else cp.cuda.Device()
        with self.device:
            self._check_memory()
            # Params are uploaded once per network and device when `shared` holds them (SharedResources).
            self.buffers = [self._param(b, weights, shared) if b.role == "param" else cp.empty(b.size, dtype=self.storage)
                            for b in plan.buffers]
            self.written = [self.buffers[b.id] for b in plan.buffers if b.role in DEVICE_WRITTEN]  # NaN in debug
            self.streams = [cp.cuda.Stream(non_blocking=True) for _ in range(plan.num_streams)]
            self.events = [cp.cuda.Event(block=False, disable_timing=True) for _ in range(plan.num_events)]
            self.fork = cp.cuda.Event(disable_timing=True)
            self.joins = [cp.cuda.Event(disable_timing=True) for _ in self.streams]
            self.caller_ready, self.results_ready = cp.cuda.Event(disable_timing=True), cp.cuda.Event(disable_timing=True)
            self.workspaces = [cp.empty(WORKSPACE_BYTES, dtype=np.uint8) for _ in self.streams]
            self.blas = Cublas(self.streams, self.workspaces, Precision.of(plan.spec.dtype, plan.options.math))
            self._keep_alive: list = []  # device arrays that captured launches point to
            self._zeroed_states: set[str] = set()  # state buffers known to hold zeros (nothing else writes them)
            self.program = [self._prepare(s) for s in plan.steps]
            self.graph = None
            self._issue()  # one run outside capture, so that loading modules and cuBLAS set-up happen now
            self.streams[0].synchronize()
            if capture:
                self.capture()

    def capture(self) -> None:
        """In "graph" mode, capture the plan's issue sequence once (until then, or in "streams" mode,
        calls launch every step)."""
        if self.mode != "graph" or self.graph is not None:
            return
        first = self.streams[0]
        relaxed = getattr(self.cp.cuda.runtime, "streamCaptureModeRelaxed", None)
        with self.device:
            first.begin_capture(relaxed) if relaxed is not None else first.begin_capture()
            try:
                self._issue()
            finally:
                graph = first.end_capture()
            self.graph = graph

    # ---- set-up ---------------------------------------------------------------------------------

    def _check_memory(self) -> None:
        free, _total = self.cp.cuda.runtime.memGetInfo()
        spec = self.plan.spec
        parts = plan_breakdown(self.plan)
        parts["cuBLAS workspaces"] = self.plan.num_streams * WORKSPACE_BYTES
        # what each call returns: fresh copies of the output sequence and the final states
        parts["returned outputs"] = (spec.seq_len + 2 * spec.num_layers) * spec.batch * spec.hidden_size * \
            spec.directions * self.dtype.itemsize
        check_fits("the plan", sum(parts.values()), free, f"GPU {self.device.id}'s free", spec, parts,
                   DeviceMemoryError)

    def _param(self, b, weights: Weights, shared: SharedResources | None):
        """The flat device array of param buffer `b`: from `shared`, or uploaded now."""
        def upload():
            return self.cp.asarray(weights.layout(b.source, b.transform).astype(self.dtype).view(self.storage)).ravel()
        if shared is None:
            return upload()
        return shared.param(("cupy", self.device.id, self.dtype.name, b.source, b.transform), upload)

    def view(self, v: BufferView):
        """A CuPy view (rows x cols, row stride ld) of a plan buffer."""
        base = self.buffers[v.buffer][v.offset:v.end]
        return self.cp.lib.stride_tricks.as_strided(base, shape=(v.rows, v.cols),
                                                    strides=(v.ld * self.dtype.itemsize, self.dtype.itemsize))

    def _ptr(self, v: BufferView) -> int:
        return self.buffers[v.buffer].data.ptr + v.offset * self.dtype.itemsize

    def _prepare(self, step: Step):
        """(waits, stream, launch, record) for one step, with every argument computed now."""
        stream = self.streams[step.stream]
        if step.kind == "recurrent":
            launch = self._prepare_recurrent(step, stream)
        elif step.kind == "gemm":
            g, (a, w), c = step.gemm, step.inputs, step.outputs[0]
            args = (step.stream, g.m, g.n, g.k, self._ptr(w), w.ld, g.weight_layout, self._ptr(a), a.ld,
                    self._ptr(c), c.ld)
            gemm = self.blas.gemm

            def launch():
                gemm(*args)
        else:
            kernel, vec = compiled_pointwise(self.cp, self.device.id, step, self.plan.spec.dtype, _KERNELS)
            out = step.outputs[0]
            args = []
            for v in step.inputs + step.outputs:
                args += [self.buffers[v.buffer][v.offset:v.end], np.int32(v.ld)]
            args = tuple(args + [np.int32(out.rows), np.int32(out.cols)])
            grid = (launch_grid(out.rows, out.cols, vec),)

            def launch():
                kernel(grid, (THREADS,), args, stream=stream)
        return step.waits, stream, launch, step.record

    def _prepare_recurrent(self, step: Step, stream):
        """The persistent kernel of a `recurrent` step: every block must be resident at once (they
        wait on each other), so the launch is cooperative and the device is checked first."""
        cp, k = self.cp, kernel_of(step.recurrence)
        props = cp.cuda.runtime.getDeviceProperties(self.device.id)
        fit = k.fit(describe_device(self.device.id), smem_per_sm=props["sharedMemPerMultiprocessor"])
        if not fit.ok:
            raise RuntimeError(f"the persistent kernel does not fit GPU {self.device.id}: {fit.why}")
        smem, blocks = k.shared_memory_bytes, k.blocks
        name = kernel_name(k, self.profile)
        if (self.device.id, name) not in _KERNELS:
            _KERNELS[(self.device.id, name)] = cp.RawKernel(persistent_source(k, self.profile), name,
                                                            options=("-std=c++17",), enable_cooperative_groups=True)
        kernel = _KERNELS[(self.device.id, name)]
        kernel.max_dynamic_shared_size_bytes = smem
        if k.cluster:  # (clusters of more than 8 blocks need the driver's leave; all must be resident)
            check_clusters(kernel, blocks, PERSISTENT_THREADS, smem, k.blocks_per_chain, len(k.chains))
        ptrs = cp.asarray([self._ptr(v) for v in step.inputs + step.outputs], dtype=np.uint64)
        # Where blocks hand h to each other (layout: PersistentKernel.exchange_bytes); its head is
        # zeroed before each run. Profiling adds the blocks' clock sums after it.
        size, zeroed = k.exchange_bytes
        if self.profile:
            size = k.profile_offset + blocks * PROFILE_SLOTS * 8
        exchange = cp.zeros(-(-size // 8), dtype=np.uint64)
        self._keep_alive += [ptrs, exchange]
        if self.profile:
            self._profiled.append((k, exchange))
        memset = cp.cuda.runtime.memsetAsync
        steps = np.int32(k.seq_len)  # an argument: kernels are shared across lengths

        def launch():
            memset(exchange.data.ptr, 0, zeroed, stream.ptr)
            kernel((blocks,), (PERSISTENT_THREADS,), (ptrs, exchange, steps), shared_mem=smem, stream=stream)
        return launch

    def persistent_profile(self) -> list[np.ndarray]:
        """With `profile=True`: per persistent kernel, the clock cycles each block spent in each phase
        over the last run, a (blocks, PROFILE_SLOTS) array (phases: the PROF marks of the kernel's
        source; slot 7 is the set-up before the first step)."""
        with self.device:
            self.device.synchronize()
            return [exchange.view(np.uint8)[k.profile_offset:k.profile_offset + k.blocks * PROFILE_SLOTS * 8]
                    .view(np.uint64).get().reshape(k.blocks, PROFILE_SLOTS) for k, exchange in self._profiled]

    def _issue(self, marks=None) -> None:
        """Enqueue the whole plan: fork from stream 0, every step with its waits and record, join.
        `marks`, if given, holds a (start, end) pair of timing events to record around each step."""
        first = self.streams[0]
        self.fork.record(first)
        for s in self.streams[1:]:
            s.wait_event(self.fork)
        events = self.events
        for i, (waits, stream, launch, record) in enumerate(self.program):
            for e in waits:
                stream.wait_event(events[e])
            if marks is not None:
                marks[i][0].record(stream)
            launch()
            if marks is not None:
                marks[i][1].record(stream)
            if record is not None:
                events[record].record(stream)
        for s, ev in zip(self.streams[1:], self.joins):
            ev.record(s)
            first.wait_event(ev)

    # ---- calls ----------------------------------------------------------------------------------

    def _on_device(self, a, name: str):
        cp = self.cp
        if self.storage != self.dtype:  # bf16: torch tensors and NumPy arrays by their bits
            a = _bf16_bits(a)
        if isinstance(a, cp.ndarray):
            arr = a
        elif hasattr(a, "__cuda_array_interface__"):
            arr = cp.asarray(a)  # zero-copy: a torch CUDA tensor, a Numba array ...
        elif hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__") and a.__dlpack_device__()[0] == 2:
            arr = cp.from_dlpack(a)  # kDLCUDA
        else:
            return cp.asarray(np.asarray(a))  # host memory: one copy to the device
        if _device_id(arr) != self.device.id:
            raise ValueError(f"{name} is on GPU {_device_id(arr)}; this executor runs on GPU {self.device.id}")
        return arr

    def poison(self) -> None:
        """Fill every buffer that steps write with NaN (tests: an element nobody writes shows up)."""
        with self.device:
            for buffer in self.written:
                buffer.fill(self.nan)
            self.device.synchronize()

    def _load(self, x, h0, c0, mask=None) -> None:
        """Copy the input and initial state into the plan's buffers, on stream 0, after the caller's work.
        Arrays already in the plan's dtype and layout go by one cudaMemcpy2DAsync each and a state the
        caller leaves out is zeroed only when an earlier call wrote one: at small sizes a call's
        Python-side copies cost as much as its kernels (BENCHMARKS.md, persistent lowering)."""
        cp, plan, spec = self.cp, self.plan, self.plan.spec
        x = self._on_device(x, "x")
        given = {"h0": h0 if h0 is None else self._on_device(h0, "h0"),
                 "c0": c0 if c0 is None else self._on_device(c0, "c0")}
        # Held until the next call: stream 0 reads them asynchronously, and the caller's stream (where a
        # copy from host memory was allocated) waits for this call's results before it can reuse them.
        self._inputs_held = (x, given)
        first = self.streams[0]
        self.caller_ready.record(cp.cuda.get_current_stream())
        first.wait_event(self.caller_ready)
        if mask is not None:  # (T*B, 1) on the host, for variable lengths: into its contiguous buffer
            view = plan.inputs["mask"]
            self.buffers[view.buffer][view.offset:view.offset + view.rows].set(mask.ravel().view(self.storage),
                                                                              stream=first)
        dst = plan.inputs["x"]
        if spec.batch_first or not self._copy_in(dst, x):
            with first:
                self.view(dst).reshape(spec.seq_len, spec.batch, spec.input_size)[...] = \
                    x.transpose(1, 0, 2) if spec.batch_first else x
        for name in ("h0", "c0"):
            if name not in plan.inputs:
                continue
            view = plan.inputs[name]
            if given[name] is None:
                if name not in self._zeroed_states:
                    with first:
                        self.view(view).fill(0)
                    self._zeroed_states.add(name)
                continue
            self._zeroed_states.discard(name)
            if not self._copy_in(view, given[name]):
                with first:
                    state = self.view(view)
                    state[...] = given[name].reshape(state.shape)

    def _copy_rect(self, dst: int, dst_ld: int, src: int, src_ld: int, rows: int, cols: int,
                   stream: int | None = None) -> None:
        """rows x cols elements between device pointers with row strides dst_ld / src_ld, on `stream`
        (a stream pointer; stream 0 by default)."""
        item, runtime = self.dtype.itemsize, self.cp.cuda.runtime
        stream = self.streams[0].ptr if stream is None else stream
        if dst_ld == src_ld == cols or rows == 1:  # one contiguous run
            runtime.memcpyAsync(dst, src, rows * cols * item, _DEVICE_TO_DEVICE, stream)
        else:
            runtime.memcpy2DAsync(dst, dst_ld * item, src, src_ld * item, cols * item, rows, _DEVICE_TO_DEVICE, stream)

    def _copy_in(self, view: BufferView, arr) -> bool:
        """Copy `arr` into a plan buffer directly if it is C-contiguous in the plan's dtype (else False)."""
        if arr.dtype != self.storage or not arr.flags.c_contiguous or arr.size != view.rows * view.cols:
            return False
        self._copy_rect(self._ptr(view), view.ld, arr.data.ptr, view.cols, view.rows, view.cols)
        return True

    def copies_out(self, views: list[BufferView]) -> list[tuple[int, int, int, int, int, int]]:
        """The views stacked into one (len(views), rows, cols) C-contiguous destination, as few copies
        as their layout allows (one for views that follow each other in one contiguous buffer: a stacked
        state, a whole sequence): (destination byte offset, dst_ld, source pointer, src_ld, rows, cols)."""
        v0 = views[0]
        size = v0.rows * v0.cols
        if all(v.buffer == v0.buffer and v.ld == v.cols == v0.cols and v.offset == v0.offset + i * size
               for i, v in enumerate(views)):
            return [(0, size * len(views), self._ptr(v0), size * len(views), 1, size * len(views))]
        return [(i * size * self.dtype.itemsize, v.cols, self._ptr(v), v.ld, v.rows, v.cols) for i, v in enumerate(views)]

    def _copy_out(self, views: list[BufferView]):
        """A fresh (len(views), rows, cols) array holding the views (`copies_out`)."""
        v0 = views[0]
        with self.streams[0]:
            out = self.cp.empty((len(views), v0.rows, v0.cols), dtype=self.storage)
        for offset, dst_ld, src, src_ld, rows, cols in self.copies_out(views):
            self._copy_rect(out.data.ptr + offset, dst_ld, src, src_ld, rows, cols)
        return out

    def timeline(self, x, h0=None, c0=None, mask=None) -> list[tuple[float, float]]:
        """Run once, launching from Python with a timing event before and after every step;
        (start_us, end_us) of each step relative to the start of the run, measured on the GPU."""
        cp = self.cp
        with self.device:
            self._load(x, h0, c0, mask)
            marks = [(cp.cuda.Event(), cp.cuda.Event()) for _ in self.program]
            origin = cp.cuda.Event()
            origin.record(self.streams[0])
            self._issue(marks)
            self.streams[0].synchronize()
            return [(cp.cuda.get_elapsed_time(origin, a) * 1e3, cp.cuda.get_elapsed_time(origin, b) * 1e3)
                    for a, b in marks]

    def run(self, x, h0=None, c0=None, mask=None):
        """One forward call. A call that fails returns nothing; one that ran out of device memory
        leaves the executor usable (DeviceMemoryError says so); after a CUDA error the GPU context may
        be broken, and the executor refuses further calls, saying why."""
        cp = self.cp
        if self.unusable:
            raise RuntimeError(self.unusable)
        try:
            return self._run(x, h0, c0, mask)
        except cp.cuda.memory.OutOfMemoryError as e:
            raise DeviceMemoryError(f"out of device memory during a call ({e}); the call returned nothing and the "
                                    "executor stays usable: free device memory and call again") from None
        except cp.cuda.runtime.CUDARuntimeError as e:
            self.unusable = (f"this executor is unusable: a CUDA error in an earlier call ({e}) may have broken the "
                             "GPU context; make a new executor (in a new process, if the error was sticky)")
            raise

    def _run(self, x, h0, c0, mask):
        cp, plan = self.cp, self.plan
        with self.device:
            self._load(x, h0, c0, mask)
            first = self.streams[0]
            if self.debug:  # what this call does not write shows as NaN, never as an earlier call's value
                with first:
                    for buffer in self.written:
                        buffer.fill(self.nan)
            if self.graph is not None:
                self.graph.launch(stream=first)
            else:
                self._issue()
            out = self._copy_out(plan.outputs["out"])[0]
            states = {name: self._copy_out(plan.outputs[name]) for name in ("h_n", "c_n") if name in plan.outputs}
            self.results_ready.record(first)
            cp.cuda.get_current_stream().wait_event(self.results_ready)
        return pack_outputs(plan.spec, out, states["h_n"], states.get("c_n"))

    def close(self) -> None:
        self.graph = None
        self.blas.close()
