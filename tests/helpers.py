"""Shared test helpers: matching torch modules, running them, and comparing results."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnplan as rp

TORCH_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}


def torch_module(spec: rp.RNNSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return spec.to_torch(dtype=torch.float32)


def random_inputs(spec: rp.RNNSpec, seed: int = 0, with_state: bool = True):
    rng = np.random.default_rng(seed)
    shape = (spec.batch, spec.seq_len, spec.input_size) if spec.batch_first else \
        (spec.seq_len, spec.batch, spec.input_size)
    x = rng.standard_normal(shape).astype(spec.dtype)
    if not with_state:
        return x, None
    st = (spec.num_layers * spec.directions, spec.batch, spec.output_size)
    h0 = rng.standard_normal(st).astype(spec.dtype)
    if spec.cell == "lstm":
        return x, (h0, rng.standard_normal((*st[:2], spec.hidden_size)).astype(spec.dtype))
    return x, h0


def run_torch(module, x, state):
    with torch.no_grad():
        tx = torch.from_numpy(np.asarray(x, np.float32))
        if state is None:
            out, st = module(tx)
        elif isinstance(state, tuple):
            out, st = module(tx, tuple(torch.from_numpy(np.asarray(s, np.float32)) for s in state))
        else:
            out, st = module(tx, torch.from_numpy(np.asarray(state, np.float32)))
    st = tuple(s.numpy() for s in st) if isinstance(st, tuple) else st.numpy()
    return out.numpy(), st


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_same_result(got, want, tol: float) -> None:
    """(out, state) pairs as torch returns them; every tensor within relative error `tol`."""
    (out, st), (wout, wst) = got, want
    assert rel_err(out, wout) <= tol, f"out: {rel_err(out, wout)}"
    sts = st if isinstance(st, tuple) else (st,)
    wsts = wst if isinstance(wst, tuple) else (wst,)
    assert len(sts) == len(wsts)
    for name, s, w in zip(("h_n", "c_n"), sts, wsts):
        assert rel_err(s, w) <= tol, f"{name}: {rel_err(s, w)}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for running rnnplan in a subprocess: this checkout first on PYTHONPATH, the
    caller's path after it (where pydantic may live, as on the GPU machine), plus `extra`."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def output_without(module: str, code: str) -> str:
    """What `code` prints in a fresh Python where `module` cannot be imported (as if not installed)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", f"import sys; sys.modules[{module!r}] = None\n{code}"],
                       capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def nvcc() -> str:
    """The CUDA compiler for the compile checks: skipped where it is missing, except on CI, where a
    missing nvcc fails by name (the checks must run there)."""
    path = shutil.which("nvcc")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("nvcc is not on PATH: the CUDA compile checks need the CUDA toolkit's nvcc on CI")
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to run the compile checks)")
    return path
