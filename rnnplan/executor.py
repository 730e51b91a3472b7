"""`Executor`: runs a Plan with given Weights on a backend it picks ("numpy", "cupy", or "auto").

Input checking lives here, shared by every backend, so that a bad call fails the same way (a
ValueError naming expected and actual) on any backend and before any work starts.
"""

from __future__ import annotations

import warnings
from typing import Any

from rnnplan.backends import BACKENDS, cupy_unavailable_reason
from rnnplan.ir.cells import CELLS
from rnnplan.lowering.plan import Plan
from rnnplan.weights import Weights


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
            from rnnplan.backends.numpy_backend import (
                NumpyExecutor,  # lazily: the backend a call needs
            )

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
    if "c" in CELLS[spec.cell].states:
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
