"""A call of a CuPy executor by device pointers on the caller's stream: copy the input and state in,
replay the CUDA graph, copy the results out, and nothing else. For a caller that owns its tensors and
has checked them (`rnnplan.compile`: shape, dtype, device and contiguity, each once per call), so
that a call costs a few CUDA API calls of Python time instead of an `Executor.run` with its checks,
events and allocations. Everything is on the one stream, so the caller's stream order is the
call's: no events are needed.

Holds for a graph-mode executor of fixed lengths without `debug` whose input and state buffers are
contiguous (`why_not` says which of these fails).
"""

from __future__ import annotations

_DEVICE_TO_DEVICE = 3  # cudaMemcpyDeviceToDevice


def why_not(executor) -> str | None:
    """Why `executor` cannot be called by pointers (None: it can)."""
    impl = executor.impl
    plan = impl.plan if hasattr(impl, "plan") else None
    if executor.backend != "cupy" or getattr(impl, "graph", None) is None:
        return "needs the cupy backend in graph mode"
    if impl.debug or plan.spec.variable_lengths or plan.spec.batch_first:
        return "debug, variable lengths and batch-first inputs take Executor.run"
    if any(v.ld != v.cols for v in plan.inputs.values()):
        return "an input buffer is strided"
    return None


class PointerCall:
    """`call(stream, x, states, outs)`: pointers (ints) of the time-major input (T, B, I), of the
    initial states in the plan's order (h0, c0; None: zeros) and of the outputs, C-contiguous in the
    plan's dtype: out (T, B, D*H), then h_n (and c_n), (L*D, B, H)."""

    def __init__(self, executor):
        reason = why_not(executor)
        if reason is not None:
            raise ValueError(f"PointerCall: {reason}")
        impl = self.impl = executor.impl
        plan, item = impl.plan, impl.dtype.itemsize
        self.runtime = impl.cp.cuda.runtime
        self.x = (impl._ptr(plan.inputs["x"]), plan.inputs["x"].rows * plan.inputs["x"].cols * item)
        self.states = [(name, impl._ptr(plan.inputs[name]), plan.inputs[name].rows * plan.inputs[name].cols * item)
                       for name in ("h0", "c0") if name in plan.inputs]
        self.outs = [impl.copies_out(plan.outputs[name]) for name in ("out", "h_n", "c_n") if name in plan.outputs]
        self._streams: dict[int, object] = {}  # caller's stream pointer -> CuPy's handle on it

    def __call__(self, stream: int, x: int, states, outs, capturing: bool = False) -> None:
        """With `capturing` (the caller's stream is capturing a CUDA graph of its own), the plan is
        issued step by step on the executor's streams, forked from and joined back to the caller's,
        so that the caller's graph holds it (a graph is not launched inside another's capture)."""
        impl, runtime = self.impl, self.runtime
        with impl.device:
            runtime.memcpyAsync(self.x[0], x, self.x[1], _DEVICE_TO_DEVICE, stream)
            for (name, dst, nbytes), src in zip(self.states, states):
                if src is not None:
                    runtime.memcpyAsync(dst, src, nbytes, _DEVICE_TO_DEVICE, stream)
                    impl._zeroed_states.discard(name)
                elif name not in impl._zeroed_states:  # nothing but a given state writes it: zero it once
                    runtime.memsetAsync(dst, 0, nbytes, stream)
                    impl._zeroed_states.add(name)
            handle = self._streams.get(stream)
            if handle is None:
                handle = self._streams[stream] = impl.cp.cuda.ExternalStream(stream)
            if capturing:
                impl.caller_ready.record(handle)
                impl.streams[0].wait_event(impl.caller_ready)
                impl._issue()
                impl.results_ready.record(impl.streams[0])
                handle.wait_event(impl.results_ready)
            else:
                impl.graph.launch(stream=handle)
            for copies, dst in zip(self.outs, outs):
                for offset, dst_ld, src, src_ld, rows, cols in copies:
                    impl._copy_rect(dst + offset, dst_ld, src, src_ld, rows, cols, stream)
