"""The NumPy executor of the naive plan computes exactly what torch.nn.LSTM / GRU / RNN compute."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnplan as rp
from rnnplan.lowering import build_plan  # the planner itself: hardware-free
from tests.helpers import assert_same_result, random_inputs, run_torch, torch_module

TOL = 1e-5
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def check_against_torch(spec, seed=0, with_state=True, passes=(), options=None):
    module = torch_module(spec, seed)
    plan = build_plan(spec, passes=passes) if options is None else build_plan(spec, options=options)
    ex = rp.Executor(plan, rp.Weights.from_torch(module, spec), backend="numpy")
    x, state = random_inputs(spec, seed, with_state)
    assert_same_result(ex.run(x, state), run_torch(module, x, state), TOL)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch(cell, layers, bidirectional):
    spec = rp.RNNSpec(cell=cell, input_size=7, hidden_size=13, num_layers=layers, seq_len=5, batch=3,
                      bidirectional=bidirectional)
    check_against_torch(spec, seed=layers)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias, batch_first, with_state", [
    (False, False, True), (True, True, True), (True, False, False), (False, True, False)])
def test_matches_torch_options(cell, bias, batch_first, with_state):
    spec = rp.RNNSpec(cell=cell, input_size=6, hidden_size=9, num_layers=2, seq_len=4, batch=2,
                      bidirectional=True, bias=bias, batch_first=batch_first)
    check_against_torch(spec, seed=3, with_state=with_state)


def test_single_step_single_batch():
    check_against_torch(rp.RNNSpec(cell="lstm", input_size=1, hidden_size=1, num_layers=1, seq_len=1, batch=1))


specs = st.builds(
    rp.RNNSpec, cell=st.sampled_from(CELLS), input_size=st.integers(1, 9), hidden_size=st.integers(1, 9),
    num_layers=st.integers(1, 3), seq_len=st.integers(1, 6), batch=st.integers(1, 4),
    bidirectional=st.booleans(), bias=st.booleans(), batch_first=st.booleans())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, seed=st.integers(0, 2**16), with_state=st.booleans())
def test_random_specs_match_torch(spec, seed, with_state):
    check_against_torch(spec, seed, with_state)


def test_nan_propagates_like_torch():
    spec = rp.RNNSpec(cell="gru", input_size=4, hidden_size=5, num_layers=2, seq_len=3, batch=2)
    module = torch_module(spec)
    x, state = random_inputs(spec)
    x[1, 0, 2] = np.nan
    out, h_n = rp.Executor(build_plan(spec, passes=()), rp.Weights.from_torch(module), "numpy").run(x, state)
    want_out, want_h = run_torch(module, x, state)
    assert np.array_equal(np.isnan(out), np.isnan(want_out)) and np.isnan(out).any()
    assert np.array_equal(np.isnan(h_n), np.isnan(want_h))


def test_float16_spec_stores_half_and_stays_close():
    spec = rp.RNNSpec(cell="lstm", input_size=8, hidden_size=8, num_layers=2, seq_len=4, batch=2,
                      dtype="float16")
    module = torch_module(spec)
    x, state = random_inputs(spec)
    out, (h, c) = rp.Executor(build_plan(spec, passes=()), rp.Weights.from_torch(module), "numpy").run(x, state)
    assert out.dtype == np.float16 and h.dtype == np.float16
    want, _ = run_torch(module, x.astype(np.float32), tuple(s.astype(np.float32) for s in state))
    assert np.abs(out.astype(np.float32) - want).max() < 5e-3


def test_repeated_runs_are_independent():
    spec = rp.RNNSpec(cell="lstm", input_size=4, hidden_size=5, num_layers=2, seq_len=3, batch=2)
    ex = rp.Executor(build_plan(spec, passes=()), rp.Weights.random(spec), "numpy")
    x1, s1 = random_inputs(spec, 1)
    x2, _ = random_inputs(spec, 2)
    first, _ = ex.run(x1, s1)
    ex.run(x2)
    again, _ = ex.run(x1, s1)
    assert np.array_equal(first, again)
