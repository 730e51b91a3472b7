"""Executors: run a Plan with given Weights. `Executor` picks and wraps a backend.

Input checking lives here, shared by every backend, so that a bad call fails the same way (a
ValueError naming expected and actual) on any backend and before any work starts.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from rnnplan.scheduler.plan import Plan
from rnnplan.weights import Weights

BACKENDS = ("auto", "numpy", "cupy")


def cupy_unavailable_reason() -> str | None:
    """None when CuPy imports and sees a usable GPU, else why not."""
    try:
        import cupy  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        return f"CuPy is not installed ({type(e).__name__}: {e}); install rnnplan[cuda12] or rnnplan[cuda13]"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as e:
        return f"CuPy cannot use a CUDA device: {e}"
    return None


def describe_device(device: int = 0):
    """A DeviceShape of a CUDA device, read through CuPy, for PlanOptions(device=...)."""
    from rnnplan.spec import DeviceShape

    reason = cupy_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot describe a GPU: {reason}")
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return DeviceShape(name=name, sms=props["multiProcessorCount"], smem_per_block=props["sharedMemPerBlockOptin"],
                       cooperative_launch=bool(props.get("cooperativeLaunch", 1)))


class Executor:
    """Runs `plan` with `weights` on `backend` ("numpy", "cupy", or "auto": cupy when usable).

    `mode` applies to the cupy backend: "graph" (default) replays one CUDA graph per call,
    "streams" launches every step from Python. Other keyword options go to the backend.
    """

    def __init__(self, plan: Plan, weights: Weights, backend: str = "auto", mode: str = "graph",
                 **options: Any):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        weights.check(plan.spec)
        self.plan, self.spec = plan, plan.spec
        if backend == "auto":
            reason = cupy_unavailable_reason()
            if reason is not None:
                warnings.warn(f"backend='auto' falls back to numpy: {reason}", stacklevel=2)
            backend = "numpy" if reason else "cupy"
        if backend == "numpy":
            from rnnplan.backends.numpy_backend import NumpyExecutor

            self.impl = NumpyExecutor(plan, weights, **options)
        else:
            reason = cupy_unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"backend='cupy' is not usable: {reason}")
            from rnnplan.backends.cupy_backend import CupyExecutor

            self.impl = CupyExecutor(plan, weights, mode=mode, **options)
        self.backend = backend

    def run(self, x, state=None, **kw):
        """Forward the whole sequence. Returns what torch returns: LSTM `(out, (h_n, c_n))`,
        GRU/RNN `(out, h_n)`. `state` may be omitted (zeros)."""
        h0, c0 = check_inputs(self.spec, x, state)
        return self.impl.run(x, h0, c0, **kw)

    __call__ = run

    def trace(self, x, state=None) -> dict:
        """Run once and return the measured timeline as Chrome trace JSON (one track per stream),
        the format of `rnnplan.viz.predicted_trace`: GPU event times on cupy (every step launched
        from Python, so gaps include launch cost), host times on numpy."""
        from rnnplan.viz.timeline import trace_events

        h0, c0 = check_inputs(self.spec, x, state)
        return trace_events(self.plan, self.impl.timeline(x, h0, c0), f"measured on {self.backend}")


def _check(name: str, a, shape: tuple[int, ...], dtype: str) -> None:
    got_shape = tuple(getattr(a, "shape", ()))
    if got_shape != shape:
        raise ValueError(f"{name} has shape {got_shape}, expected {shape}")
    got = str(getattr(a, "dtype", type(a).__name__)).replace("torch.", "")
    if got != dtype:
        raise ValueError(f"{name} has dtype {got}, expected {dtype}")


def check_inputs(spec, x, state):
    """Validate x and the initial state against the spec; return (h0, c0), None where omitted."""
    T, B, I = spec.seq_len, spec.batch, spec.input_size
    _check("x", x, (B, T, I) if spec.batch_first else (T, B, I), spec.dtype)
    st_shape = (spec.num_layers * spec.directions, B, spec.hidden_size)
    if state is None:
        return None, None
    if spec.cell == "lstm":
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError("LSTM state must be a tuple (h0, c0) of arrays of shape "
                             f"{st_shape}, got {type(state).__name__}")
        _check("h0", state[0], st_shape, spec.dtype)
        _check("c0", state[1], st_shape, spec.dtype)
        return state[0], state[1]
    if isinstance(state, (tuple, list)):
        raise ValueError(f"{spec.cell} state is one array h0 of shape {st_shape}, got a {type(state).__name__}")
    _check("h0", state, st_shape, spec.dtype)
    return state, None


def pack_outputs(spec, out: np.ndarray, h_n, c_n):
    """Shape (seq, batch, D*H) / batch-first outputs and the state the way torch returns them."""
    out = out.reshape(spec.seq_len, spec.batch, -1)
    if spec.batch_first:
        out = out.transpose(1, 0, 2)
    return (out, (h_n, c_n)) if spec.cell == "lstm" else (out, h_n)


__all__ = ["BACKENDS", "Executor", "check_inputs", "cupy_unavailable_reason", "describe_device", "pack_outputs"]
