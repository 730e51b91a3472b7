"""A call of a CuPy executor by device pointers on the caller's stream: copy the input and state in,
replay the CUDA graph, copy the results out, and nothing else. For a caller that owns its tensors and
has checked them (`rnnplan.compile`: shape, dtype, device and contiguity, each once per call), so
that a call costs a few CUDA API calls of Python time instead of an `Executor.run` with its checks,
events and allocations. Everything is on the one stream, so the caller's stream order is the
call's: no events are needed.

Holds for a graph-mode executor without `debug` of time-major input whose input buffers are
contiguous (`why_not` says which of these fails).
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np


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


class PointerCall:
    """`call(stream, x, states, outs, mask=None)`: pointers (ints) of the time-major input (T, B, I),
    of the initial states in the plan's order (h0, c0; None: zeros), of the outputs, C-contiguous in
    the plan's dtype: out (T, B, D*H), then h_n (and c_n), (L*D, B, H), and with variable lengths of
    the (T, B) mask (1 inside a sequence) in the plan's dtype, on the device. The copies in and the copies out
    are one launch each of `cuda/copies.cu`, whose job tables (the plan's side of every copy) are made
    here: a CUDA API call costs several microseconds of Python, a call would otherwise make 5-8."""

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
        with impl.device:
            self.kernel = _copy_kernel(cp, impl.device.id)
            self.tables = [(cp.asarray(jobs, dtype=np.uint64), _grid(jobs)) for jobs in (jobs_in, jobs_out)]
        self._streams: dict[int, object] = {}  # caller's stream pointer -> CuPy's handle on it

    def __call__(self, stream: int, x: int, states, outs, capturing: bool = False, mask: int | None = None) -> None:
        """With `capturing` (the caller's stream is capturing a CUDA graph of its own), the plan is
        issued step by step on the executor's streams, forked from and joined back to the caller's,
        so that the caller's graph holds it (a graph is not launched inside another's capture)."""
        impl, kernel, (jobs_in, grid_in), (jobs_out, grid_out) = self.impl, self.kernel, *self.tables
        handle = self._streams.get(stream)
        if handle is None:
            handle = self._streams[stream] = impl.cp.cuda.ExternalStream(stream)
        with impl.device:
            h0, c0 = states
            impl._zeroed_states.clear()  # the state buffers now hold what this call gives (Executor.run's note)
            kernel(grid_in, (THREADS,), (jobs_in, np.uint64(x), np.uint64(h0 or 0), np.uint64(c0 or 0),
                                         np.uint64(mask or 0)), stream=handle)
            if capturing:
                impl.caller_ready.record(handle)
                impl.streams[0].wait_event(impl.caller_ready)
                impl._issue()
                impl.results_ready.record(impl.streams[0])
                handle.wait_event(impl.results_ready)
            else:
                impl.graph.launch(stream=handle)
            kernel(grid_out, (THREADS,), (jobs_out, *(np.uint64(p) for p in outs), np.uint64(0)), stream=handle)


THREADS = 256
_KERNELS: dict[int, object] = {}  # device -> the compiled copy kernel


def _copy_kernel(cp, device: int):
    if device not in _KERNELS:
        source = (files("rnnplan.backends") / "cuda" / "copies.cu").read_text()
        _KERNELS[device] = cp.RawKernel(source, "rnnplan_copy_jobs")
    return _KERNELS[device]


def _grid(jobs) -> tuple[int, int]:
    """Blocks (x: enough for the largest job in 16-byte words, at most 1024; y: one row per job)."""
    words = max(rows * row_bytes for *_, rows, row_bytes, _which in jobs) // 16
    return (min(1024, max(1, -(-words // THREADS))), len(jobs))
