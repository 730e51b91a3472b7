"""Bad input gets one clear error naming the field, option, tensor or path, before any work: specs and
options validate strictly (also when they arrive unvalidated), every Executor option is checked,
x and the state name the type given (ValueError for a wrong shape or dtype, TypeError for what is no
array), and the CLI checks its paths before it plans."""

import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

import rnnplan as rp
from rnnplan.lowering import build_plan  # the planner itself: hardware-free
from rnnplan.weights import WeightsError
from tests.helpers import subprocess_env

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
])
def test_bad_x(lstm, x, msg):
    with pytest.raises(ValueError, match=msg):
        lstm.run(x)


def test_bad_lstm_state(lstm):
    with pytest.raises(ValueError, match=r"h0 has shape \(1, 2, 5\), expected \(2, 2, 5\)"):
        lstm.run(X, (np.zeros((1, 2, 5), np.float32), S))
    with pytest.raises(ValueError, match="c0 has dtype float16, expected float32"):
        lstm.run(X, (S, S.astype(np.float16)))
    with pytest.raises(TypeError, match=r"an LSTM state is a tuple \(h0, c0\) of arrays of shape \(2, 2, 5\), got "
                                        r"ndarray"):
        lstm.run(X, S)


def test_bad_gru_state(gru):
    with pytest.raises(TypeError, match="a gru state is one array h0 of shape .* got a tuple"):
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


# ---- specs and options, strictly --------------------------------------------------------------------

KW = dict(cell="lstm", input_size=4, hidden_size=5, num_layers=2, seq_len=3, batch=2)


@pytest.mark.parametrize("field, value", [("batch", True), ("seq_len", "10"), ("hidden_size", 2.0),
                                          ("num_layers", 1.5), ("bidirectional", 1), ("bias", "yes")])
def test_sizes_and_switches_are_strict(field, value):
    with pytest.raises(ValidationError) as e:
        rp.RNNSpec(**{**KW, field: value})
    assert e.value.errors()[0]["loc"] == (field,)


def test_a_spec_that_skipped_validation_is_validated_again():
    bad = LSTM.model_copy(update={"seq_len": -5})  # model_copy(update=...) skips pydantic's checks
    for call in (lambda: build_plan(bad), lambda: rp.build_plan(bad), lambda: rp.build_graph(bad)):
        with pytest.raises(ValidationError) as e:
            call()
        assert e.value.errors()[0]["loc"] == ("seq_len",)
    with pytest.raises(ValidationError, match="num_streams"):
        build_plan(LSTM, options=rp.PlanOptions().model_copy(update={"num_streams": 0}))
    with pytest.raises(TypeError, match="spec must be an rnnplan.RNNSpec, got dict"):
        build_plan(dict(KW))
    with pytest.raises(TypeError, match="options must be an rnnplan.PlanOptions, got dict"):
        build_plan(LSTM, options={"passes": ()})


@pytest.mark.parametrize("field, value", [("num_streams", True), ("input_chunk", "2"), ("passes", ("fuse", 3))])
def test_options_are_strict(field, value):
    with pytest.raises(ValidationError) as e:
        rp.PlanOptions(**{field: value})
    assert e.value.errors()[0]["loc"][0] == field


def test_passes_all_and_none_and_a_stray_string():
    assert build_plan(LSTM, passes="all").passes == rp.PASSES
    assert build_plan(LSTM, passes="none").passes == ()
    assert rp.PlanOptions(passes="all").passes is None and rp.PlanOptions(passes="none").passes == ()
    with pytest.raises(ValidationError, match=r"passes must be pass names \(a list or tuple\), 'all' or 'none'; got "
                                              r"the string 'fuse_pointwise'"):
        build_plan(LSTM, passes="fuse_pointwise")
    with pytest.raises(ValueError, match=r"passes given twice with different values: \['combine_gates'\] as the "
                                         r"argument, \['fuse_pointwise'\] in options.passes"):
        build_plan(LSTM, passes=["combine_gates"], options=rp.PlanOptions(passes=("fuse_pointwise",)))


# ---- Executor options --------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, error, message", [
    (dict(mode="bogus"), ValueError, r"mode must be one of \('graph', 'streams'\), got 'bogus'"),
    (dict(device=-1), ValueError, "device must be a GPU index"),
    (dict(device="0"), ValueError, "device must be a GPU index"),
    (dict(allow_edits="yes"), TypeError, "allow_edits must be True or False, got 'yes'"),
    (dict(debug=1), TypeError, "debug must be True or False, got 1"),
    (dict(profile=True), ValueError, "device and profile apply to the cupy backend"),
    (dict(device=0), ValueError, "device and profile apply to the cupy backend"),
], ids=lambda v: str(v)[:30])
def test_every_executor_option_is_checked(kw, error, message):
    with pytest.raises(error, match=message):
        rp.Executor(build_plan(LSTM, passes=()), rp.Weights.random(LSTM), backend="numpy", **kw)
    with pytest.raises(TypeError):  # an unknown option is no option
        rp.Executor(build_plan(LSTM, passes=()), rp.Weights.random(LSTM), backend="numpy", interleave=True)


def test_executor_arguments_name_their_type():
    with pytest.raises(TypeError, match="weights must be rnnplan.Weights .* got dict"):
        rp.Executor(build_plan(LSTM), dict(rp.Weights.random(LSTM).tensors), backend="numpy")
    with pytest.raises(TypeError, match="expected an rnnplan.Plan, got str"):
        rp.Executor(build_plan(LSTM).to_json(), rp.Weights.random(LSTM), backend="numpy")


# ---- x and state by type -----------------------------------------------------------------------------


def test_x_and_state_that_are_no_arrays(lstm):
    import torch

    with pytest.raises(TypeError, match=r"x must be an array \(NumPy, CuPy or a torch tensor\) of shape \(3, 2, 4\), "
                                        r"got a list"):
        lstm.run(X.tolist())
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.zeros(3, 2, 4), [3, 2])
    with pytest.raises(TypeError, match="x is a torch PackedSequence: this Executor runs padded arrays"):
        lstm.run(packed)
    with pytest.raises(TypeError, match=r"c0 is None: pass an array of shape \(2, 2, 5\), or leave the whole "
                                        r"state out"):
        lstm.run(X, (S, None))
    with pytest.raises(TypeError, match=r"x is None"):
        lstm.run(None)
    with pytest.raises(TypeError, match=r"an LSTM state is a tuple \(h0, c0\) .* got tuple of 3"):
        lstm.run(X, (S, S, S))
    assert lstm.run(torch.from_numpy(X))[0].shape == (3, 2, 5)  # a CPU tensor is an array


# ---- the command line checks its paths before planning ---------------------------------------------------


def cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "rnnplan.cli", *args], capture_output=True, text=True,
                          env=subprocess_env(**env), timeout=600)


@pytest.mark.parametrize("args, message", [
    (["plan", "--svg", "x.pdf"], "--svg x.pdf: writes .svg or .png files, not .pdf"),
    (["plan", "--png", "w.svg"], "--png w.svg: writes .png files, not .svg"),
    (["plan", "--json", "/nonexistent/p.json"], "--json /nonexistent/p.json: the folder /nonexistent does not exist"),
    (["plan", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["run", "--trace", "/nonexistent/t.json"], "--trace /nonexistent/t.json: the folder /nonexistent does not exist"),
])
def test_cli_paths_are_checked_before_planning(args, message):
    r = cli(*args, "--seq-len", "2")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_warns_before_a_long_graphviz_layout(tmp_path):
    fake = tmp_path / "dot"  # a Graphviz that answers at once, so that only the warning is timed
    fake.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\necho "<svg/>" > "$out"\n')
    fake.chmod(0o755)
    r = cli("plan", "--svg", str(tmp_path / "p.svg"), PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert r.returncode == 0, r.stderr
    assert "note: --svg draws 831 boxes, which Graphviz may take minutes" in r.stderr and "--view cell" in r.stderr
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    small = cli("plan", "--svg", str(tmp_path / "q.svg"), "--seq-len", "3", PATH=path)
    assert small.returncode == 0 and "note:" not in small.stderr
