"""Bad input to Executor.run raises a ValueError naming expected and actual, before any work."""

import numpy as np
import pytest

import rnnplan as rp
from rnnplan.lowering import build_plan  # the planner itself: hardware-free
from rnnplan.weights import WeightsError

LSTM = rp.RNNSpec(cell="lstm", input_size=4, hidden_size=5, num_layers=2, seq_len=3, batch=2)
GRU = LSTM.model_copy(update={"cell": "gru"})


@pytest.fixture(scope="module")
def lstm():
    return rp.Executor(build_plan(LSTM, passes=()), rp.Weights.random(LSTM), backend="numpy")


@pytest.fixture(scope="module")
def gru():
    return rp.Executor(build_plan(GRU, passes=()), rp.Weights.random(GRU), backend="numpy")


X = np.zeros((3, 2, 4), np.float32)
S = np.zeros((2, 2, 5), np.float32)


@pytest.mark.parametrize("x, msg", [
    (np.zeros((3, 2, 5), np.float32), r"x has shape \(3, 2, 5\), expected \(3, 2, 4\)"),
    (np.zeros((2, 3, 4), np.float32), r"x has shape \(2, 3, 4\), expected \(3, 2, 4\)"),
    (np.zeros((6, 4), np.float32), r"x has shape \(6, 4\)"),
    (np.zeros((3, 2, 4), np.float64), "x has dtype float64, expected float32"),
    ([[0.0]], "x has shape"),
])
def test_bad_x(lstm, x, msg):
    with pytest.raises(ValueError, match=msg):
        lstm.run(x)


def test_bad_lstm_state(lstm):
    with pytest.raises(ValueError, match=r"h0 has shape \(1, 2, 5\), expected \(2, 2, 5\)"):
        lstm.run(X, (np.zeros((1, 2, 5), np.float32), S))
    with pytest.raises(ValueError, match="c0 has dtype float16, expected float32"):
        lstm.run(X, (S, S.astype(np.float16)))
    with pytest.raises(ValueError, match=r"LSTM state must be a tuple \(h0, c0\)"):
        lstm.run(X, S)


def test_bad_gru_state(gru):
    with pytest.raises(ValueError, match="state is one array h0"):
        gru.run(X, (S, S))
    with pytest.raises(ValueError, match=r"h0 has shape \(2, 2, 4\)"):
        gru.run(X, np.zeros((2, 2, 4), np.float32))


def test_weights_for_another_spec_rejected_at_construction():
    with pytest.raises(WeightsError, match="hyper-parameter cell"):
        rp.Executor(build_plan(LSTM, passes=()), rp.Weights.random(GRU), backend="numpy")


def test_unknown_backend_and_unusable_cupy():
    w = rp.Weights.random(LSTM)
    plan = build_plan(LSTM, passes=())
    with pytest.raises(ValueError, match="backend must be one of"):
        rp.Executor(plan, w, backend="tpu")
    if rp.backends.cupy_unavailable_reason() is not None:
        with pytest.raises(RuntimeError, match=r"rnnplan\[cuda12\]|CUDA device"):
            rp.Executor(plan, w, backend="cupy")
        with pytest.warns(UserWarning, match="falls back to numpy"):
            assert rp.Executor(plan, w, backend="auto").backend == "numpy"


def test_unknown_pass_lists_known_ones():
    with pytest.raises(ValueError, match="known passes"):
        build_plan(LSTM, passes=("fuse_everything",))
