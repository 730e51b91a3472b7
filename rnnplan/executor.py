"""`Executor`: runs a Plan with given Weights on a backend it picks ("numpy", "cupy", or "auto").

Input checking lives here, shared by every backend, so that a bad call fails the same way (a
ValueError naming expected and actual) on any backend and before any work starts.
"""

from __future__ import annotations

import warnings

import numpy as np

from rnnplan.backends import BACKENDS, cupy_unavailable_reason
from rnnplan.backends.shared import SharedResources
from rnnplan.ir.cells import CELLS
from rnnplan.lowering.integrity import check_plan
from rnnplan.lowering.plan import Plan
from rnnplan.weights import Weights

MODES = ("graph", "streams")


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


class Executor:
    """Runs `plan` with `weights` on `backend` ("numpy", "cupy", or "auto": cupy when usable).

    The plan must compute its spec's function: one `build_plan` or `load_plan` returned passes as
    it is; any other (a copy, an edit) is planned again and compared (`rnnplan.check_plan`), and an
    edited plan runs only with `allow_edits=True`. `mode` applies to the cupy backend: "graph"
    (default) replays one CUDA graph per call, "streams" launches every step from Python; `device`
    (cupy) picks the GPU, `profile` (cupy) compiles the persistent kernel with its clock marks.
    `debug=True` fills every buffer steps write with NaN before each call, so that an element a call
    does not write can never carry an earlier call's value unnoticed. `shared`
    (`rnnplan.backends.shared.SharedResources`) lets executors of one network share their uploaded
    weights (and on numpy one workspace), so that an executor for a new shape costs little more than
    its plan; the caller keeps it for one set of weights only. `defer_capture=True` (cupy, "graph")
    leaves the CUDA-graph capture to `capture()`: a build off the calling thread (`rnnplan.background`)
    must not capture, since a capture fails any device-wide synchronization another thread makes
    meanwhile (torch.cuda.synchronize()) and is failed by it; until then calls launch step by step.
    """

    def __init__(self, plan: Plan, weights: Weights, backend: str = "auto", mode: str = "graph", *,
                 allow_edits: bool = False, debug: bool = False, device: int | None = None,
                 profile: bool = False, shared: SharedResources | None = None, defer_capture: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if device is not None and (type(device) is not int or device < 0):
            raise ValueError(f"device must be a GPU index (an int >= 0) or None, got {device!r}")
        allow_edits, debug = _flag("allow_edits", allow_edits), _flag("debug", debug)
        profile = _flag("profile", profile)
        if not isinstance(weights, Weights):
            raise TypeError(f"weights must be rnnplan.Weights (Weights.from_torch, .random or .load), got "
                            f"{type(weights).__name__}")
        check_plan(plan, allow_edits)
        weights.check(plan.spec)
        self.plan, self.spec, self.debug = plan, plan.spec, debug
        if backend == "auto":
            reason = cupy_unavailable_reason()
            if reason is not None:
                warnings.warn(f"backend='auto' falls back to numpy: {reason}", stacklevel=2)
            backend = "numpy" if reason else "cupy"
        if backend == "numpy":
            if device is not None or profile:
                raise ValueError("device and profile apply to the cupy backend; this executor runs on numpy")
            from rnnplan.backends.numpy_backend import (
                NumpyExecutor,  # lazily: the backend a call needs
            )

            self.impl = NumpyExecutor(plan, weights, debug=debug, shared=shared)
        else:
            reason = cupy_unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"backend='cupy' is not usable: {reason}")
            from rnnplan.backends.cupy_backend import CupyExecutor

            self.impl = CupyExecutor(plan, weights, mode=mode, device=device, profile=profile, debug=debug,
                                     shared=shared, capture=not _flag("defer_capture", defer_capture))
        self.backend = backend

    def capture(self) -> None:
        """The CUDA-graph capture that `defer_capture=True` left out (nothing on numpy, in "streams"
        mode, or once captured)."""
        if self.backend == "cupy":
            self.impl.capture()

    def run(self, x, state=None, lengths=None, *, interleave_seed: int | None = None):
        """Forward the whole sequence. Returns what torch returns: LSTM `(out, (h_n, c_n))`,
        GRU/RNN `(out, h_n)`. `state` may be omitted (zeros). With a spec of variable lengths,
        `lengths` gives each sequence's length (B ints in 1..seq_len, on the host): outputs past it
        are zero, the final state is the one at its last step. `interleave_seed` (numpy backend) runs
        the steps in a random order that respects only streams and events."""
        h0, c0 = check_inputs(self.spec, x, state)
        mask = length_mask(self.spec, lengths)
        if interleave_seed is not None:
            if self.backend != "numpy":
                raise ValueError("interleave_seed applies to the numpy backend")
            return self.impl.run(x, h0, c0, mask, interleave_seed=interleave_seed)
        return self.impl.run(x, h0, c0, mask)

    __call__ = run

    def trace(self, x, state=None, lengths=None) -> dict:
        """Run once and return the measured timeline as Chrome trace JSON (one track per stream),
        the format of `rnnplan.viz.predicted_trace`: GPU event times on cupy (every step launched
        from Python, so gaps include launch cost), host times on numpy."""
        from rnnplan.viz.timeline import trace_events

        h0, c0 = check_inputs(self.spec, x, state)
        mask = length_mask(self.spec, lengths)
        return trace_events(self.plan, self.impl.timeline(x, h0, c0, mask), f"measured on {self.backend}")


def _check(name: str, a, shape: tuple[int, ...], dtype: str) -> None:
    """`a` is an array (NumPy, CuPy, a torch tensor: anything with a shape and a dtype) of this shape
    and dtype; otherwise a ValueError or TypeError that names it and what it is."""
    if a is None:
        raise TypeError(f"{name} is None: pass an array of shape {shape}, or leave the whole state out (zeros)")
    if hasattr(a, "batch_sizes") and hasattr(a, "data"):
        raise TypeError(f"{name} is a torch PackedSequence: this Executor runs padded arrays of shape {shape} "
                        "(packed sequences are not supported yet: pad with torch.nn.utils.rnn.pad_packed_sequence)")
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{name} must be an array (NumPy, CuPy or a torch tensor) of shape {shape}, "
                        f"got a {type(a).__name__}")
    got_shape = tuple(a.shape)
    if got_shape != shape:
        raise ValueError(f"{name} has shape {got_shape}, expected {shape}")
    got = str(a.dtype).replace("torch.", "")
    if got != dtype:
        raise ValueError(f"{name} has dtype {got}, expected {dtype}")


def check_inputs(spec, x, state):
    """Validate x and the initial state against the spec; return (h0, c0), None where omitted."""
    T, B, I = spec.seq_len, spec.batch, spec.input_size
    _check("x", x, (B, T, I) if spec.batch_first else (T, B, I), spec.dtype)
    st_shape = (spec.num_layers * spec.directions, B, spec.output_size)
    if state is None:
        return None, None
    if "c" in CELLS[spec.cell].states:
        c_shape = (*st_shape[:2], spec.hidden_size)  # (with a projection, h is narrower than c)
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            count = f" of {len(state)}" if isinstance(state, (tuple, list)) else ""
            shapes = f"shape {st_shape}" if c_shape == st_shape else f"shapes {st_shape} and {c_shape}"
            raise TypeError(f"an LSTM state is a tuple (h0, c0) of arrays of {shapes}, got "
                            f"{type(state).__name__}{count}")
        _check("h0", state[0], st_shape, spec.dtype)
        _check("c0", state[1], c_shape, spec.dtype)
        return state[0], state[1]
    if isinstance(state, (tuple, list)):
        raise TypeError(f"a {spec.cell} state is one array h0 of shape {st_shape}, got a {type(state).__name__}")
    _check("h0", state, st_shape, spec.dtype)
    return state, None


def length_mask(spec, lengths) -> np.ndarray | None:
    """The (T*B, 1) mask of a call's sequence lengths (1 where step t of sequence b lies inside it),
    in the spec's dtype, for a spec with variable lengths; None for one without."""
    T, B = spec.seq_len, spec.batch
    if not spec.variable_lengths:
        if lengths is not None:
            raise ValueError("lengths given, but the plan's spec has variable_lengths=False (plan with "
                             "RNNSpec(..., variable_lengths=True) to run sequences of their own lengths)")
        return None
    if lengths is None:
        raise TypeError(f"the plan's spec has variable lengths: pass lengths=, {B} ints in 1..{T}")
    if getattr(lengths, "is_cuda", False) or hasattr(lengths, "__cuda_array_interface__"):
        raise TypeError("lengths must be on the host (a list, NumPy array or CPU tensor), as torch keeps them")
    got = np.asarray(lengths)
    if got.shape != (B,) or got.dtype.kind not in "iu":
        raise ValueError(f"lengths must be {B} ints (one per sequence), got shape {got.shape} of dtype {got.dtype}")
    if got.min() < 1 or got.max() > T:
        raise ValueError(f"lengths must lie in 1..{T} (seq_len), got {got.min()}..{got.max()}")
    return (np.arange(T)[:, None] < got[None, :]).astype(spec.dtype).reshape(T * B, 1)
