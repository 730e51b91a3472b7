"""Every subset of passes computes what the naive plan computes, also when the steps run in random
interleavings that respect only stream order and events (so a missing event gives a wrong answer)."""

import itertools

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnplan as rp
from rnnplan.lowering import build_plan  # the planner itself: hardware-free
from tests.helpers import assert_same_result, random_inputs, run_torch, torch_module

SUBSETS = [s for k in range(len(rp.PASSES) + 1) for s in itertools.combinations(rp.PASSES, k)]
SPECS = {
    "lstm-3x-bidir": rp.RNNSpec(cell="lstm", input_size=7, hidden_size=13, num_layers=3, seq_len=7, batch=3,
                                bidirectional=True),
    "gru-2x": rp.RNNSpec(cell="gru", input_size=5, hidden_size=11, num_layers=2, seq_len=8, batch=2),
    "rnn_relu-3x-nobias": rp.RNNSpec(cell="rnn_relu", input_size=4, hidden_size=6, num_layers=3, seq_len=6,
                                     batch=2, bias=False, batch_first=True),
    "rnn_tanh-1x-bidir": rp.RNNSpec(cell="rnn_tanh", input_size=3, hidden_size=5, num_layers=1, seq_len=4,
                                    batch=1, bidirectional=True),
}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", params=list(SPECS))
def case(request):
    spec = SPECS[request.param]
    w = rp.Weights.random(spec, seed=5)
    x, state = random_inputs(spec, seed=6)
    want = rp.Executor(build_plan(spec, passes=()), w, backend="numpy").run(x, state)
    return spec, w, x, state, want


@pytest.mark.parametrize("passes", SUBSETS, ids=lambda s: "+".join(p[:4] for p in s) or "naive")
def test_subset_equals_naive(case, passes):
    spec, w, x, state, want = case
    plan = build_plan(spec, options=rp.PlanOptions(passes=passes, input_chunk=3))  # 3 divides no T here but 6
    ex = rp.Executor(plan, w, backend="numpy")
    assert_same_result(ex.run(x, state), want, 1e-5)
    for seed in SEEDS:
        assert_same_result(ex.run(x, state, interleave_seed=seed), want, 1e-5)


def test_more_streams_than_chains_and_fewer(case):
    spec, w, x, state, want = case
    for streams in (1, 2, 9):
        plan = build_plan(spec, options=rp.PlanOptions(num_streams=streams, input_chunk=2))
        ex = rp.Executor(plan, w, backend="numpy")
        for seed in SEEDS:
            assert_same_result(ex.run(x, state, interleave_seed=seed), want, 1e-5)


def test_all_passes_match_torch(case):
    spec = case[0]
    module = torch_module(spec, seed=9)
    x, state = random_inputs(spec, seed=10)
    ex = rp.Executor(build_plan(spec), rp.Weights.from_torch(module, spec), backend="numpy")
    assert_same_result(ex.run(x, state, interleave_seed=4), run_torch(module, x, state), 1e-5)


def test_waits_are_the_transitive_reduction(case):
    """Kept waits = cross-stream edges of the transitive reduction of (kernel DAG + stream order)."""
    spec = case[0]
    plan = build_plan(spec, options=rp.PlanOptions(input_chunk=2, num_streams=5))
    g = nx.DiGraph()
    g.add_nodes_from(range(len(plan.steps)))
    last = {}
    for i, s in enumerate(plan.steps):
        g.add_edges_from((d, i) for d in s.deps)
        if s.stream in last:
            g.add_edge(last[s.stream], i)
        last[s.stream] = i
    reduced = nx.transitive_reduction(g)
    recorder = {s.record: i for i, s in enumerate(plan.steps) if s.record is not None}
    kept = {(recorder[e], i) for i, s in enumerate(plan.steps) for e in s.waits}
    want = {(u, v) for u, v in reduced.edges if plan.steps[u].stream != plan.steps[v].stream}
    assert kept == want


specs = st.builds(
    rp.RNNSpec, cell=st.sampled_from(["lstm", "gru", "rnn_tanh", "rnn_relu"]), input_size=st.integers(1, 6),
    hidden_size=st.integers(1, 6), num_layers=st.integers(1, 3), seq_len=st.integers(1, 7),
    batch=st.integers(1, 3), bidirectional=st.booleans(), bias=st.booleans())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, subset=st.sets(st.sampled_from(rp.PASSES)), data=st.data())
def test_random_specs_and_subsets(spec, subset, data):
    chunk = data.draw(st.one_of(st.none(), st.integers(1, spec.seq_len)))
    streams = data.draw(st.one_of(st.none(), st.integers(1, 5)))
    w = rp.Weights.random(spec, seed=1)
    x, state = random_inputs(spec, seed=2)
    want = rp.Executor(build_plan(spec, passes=()), w, "numpy").run(x, state)
    plan = build_plan(spec, options=rp.PlanOptions(passes=tuple(subset), input_chunk=chunk, num_streams=streams))
    got = rp.Executor(plan, w, "numpy").run(x, state, interleave_seed=data.draw(st.integers(0, 99)))
    assert_same_result(got, want, 1e-5)
    assert np.isfinite(got[0]).all()
