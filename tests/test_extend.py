"""Extending a graph-lowering plan by whole periods (`rnnplan.lowering.extend`): the plan of a longer
sequence equals the one `build_plan` makes from scratch, field for field, over cells, layers,
projections and chunks odd and even (an odd chunk takes two a period); the planner takes that
path for a cached shorter plan of the same network and options; what it does not extend is named."""

import json

import pytest

import rnnplan as rp
from rnnplan.lowering import planner
from rnnplan.lowering.extend import extended


def fresh(spec: rp.RNNSpec, options: rp.PlanOptions) -> rp.Plan:
    """`spec`'s plan from scratch: nothing shorter in the planner's cache to extend."""
    rp.plan_cache.clear()
    return rp.build_plan(spec, options=options)


def graph_nodes(options):
    return lambda spec: len(planner.passed_graph(spec, tuple(rp.PASSES), options))


CASES = [  # (RNNSpec keywords, chunk, T, longer T)
    (dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, batch=64), 10, 100, 110),  # the paper's
    (dict(cell="lstm", input_size=16, hidden_size=16, num_layers=3, batch=2), 5, 40, 60),  # odd chunk: m = 2
    (dict(cell="lstm", input_size=16, hidden_size=16, num_layers=3, batch=2), 11, 101, 145),  # 2 periods of 22
    (dict(cell="gru", input_size=8, hidden_size=12, num_layers=2, batch=3), 4, 30, 38),
    (dict(cell="rnn_tanh", input_size=8, hidden_size=12, num_layers=3, batch=3), 3, 30, 42),
    (dict(cell="rnn_relu", input_size=8, hidden_size=12, num_layers=2, batch=1, bias=False), 4, 25, 33),
    (dict(cell="lstm", input_size=8, hidden_size=12, num_layers=1, batch=3), 4, 30, 50),
    (dict(cell="lstm", input_size=8, hidden_size=12, num_layers=3, batch=3, proj_size=4), 4, 33, 41),
    (dict(cell="lstm", input_size=8, hidden_size=12, num_layers=2, batch=2, dtype="float16"), 6, 40, 52),
]


@pytest.mark.parametrize("kw, chunk, short, long", CASES)
def test_an_extended_plan_is_the_planners_plan_of_the_longer_sequence(kw, chunk, short, long):
    options = rp.PlanOptions(lowering="graph", input_chunk=chunk)
    want = fresh(rp.RNNSpec(**kw, seq_len=long), options)
    got = extended(fresh(rp.RNNSpec(**kw, seq_len=short), options), long, graph_nodes(options))
    assert json.loads(got.to_json()) == json.loads(want.to_json())
    assert rp.lowering.registry.is_registered(got)  # (verified as it was made)


def test_the_planner_extends_a_cached_shorter_plan_and_plans_the_rest(monkeypatch):
    kw, options = CASES[0][0], rp.PlanOptions(lowering="graph", input_chunk=10)
    wants = {t: fresh(rp.RNNSpec(**kw, seq_len=t), options).to_json() for t in (110, 200, 105)}
    rp.plan_cache.clear()
    rp.build_plan(rp.RNNSpec(**kw, seq_len=100), options=options)
    planned = planner._plan
    monkeypatch.setattr(planner, "_plan", lambda *a: pytest.fail("planned from scratch, not extended"))
    stages = []
    for t in (110, 200):
        plan = rp.build_plan(rp.RNNSpec(**kw, seq_len=t), options=options, progress=lambda *a: stages.append(a[0]))
        assert plan.to_json() == wants[t]
    assert stages == ["extend", "done"] * 2
    monkeypatch.setattr(planner, "_plan", planned)  # 105: not a whole number of periods (10) longer
    assert rp.build_plan(rp.RNNSpec(**kw, seq_len=105), options=options).to_json() == wants[105]
    default = rp.PlanOptions(lowering="graph")  # the chunk left to the planner (ceil(sqrt(T))): not extended
    assert planner._extended_from_cache(rp.RNNSpec(**kw, seq_len=120), default, lambda *a: None) is None


@pytest.mark.parametrize("change, why", [
    (dict(plan=dict(lowering="persistent")), "needs the graph lowering"),
    (dict(options=dict(passes=("combine_gates", "batch_input_gemms"))), "needs wavefront_streams among the passes"),
    (dict(options=dict(input_chunk=None)), "needs PlanOptions.input_chunk set"),
    (dict(spec=dict(bidirectional=True)), "does not extend bidirectional plans"),
    (dict(spec=dict(variable_lengths=True)), "does not extend masked plans"),
    (dict(long=105), "seq_len must be 100 plus a positive multiple of 10 steps"),
    (dict(long=90), "seq_len must be 100 plus a positive multiple of 10 steps"),
    (dict(short=12, long=22), "no steady state of two periods in the plan of 12 steps"),
])
def test_what_it_does_not_extend_is_named(change, why):
    kw = dict(cell="lstm", input_size=8, hidden_size=8, num_layers=3, batch=2) | change.get("spec", {})
    options = rp.PlanOptions(**(dict(lowering="graph", input_chunk=10) | change.get("options", {})))
    plan = fresh(rp.RNNSpec(**kw, seq_len=change.get("short", 100)), options)
    plan = plan.model_copy(update=change.get("plan", {}))
    with pytest.raises(ValueError, match=why):
        extended(plan, change.get("long", 110), graph_nodes(options))


def test_every_pass_subset_and_stream_count_extends_to_the_planners_plan_or_is_refused():
    """Over the pass subsets with wavefront_streams and 1, 5 or one stream a chain: an extended plan
    is the planner's, or extended refuses (a ValueError: no steady state at this length, as where
    unfused cells' many temporaries reuse buffers on a longer cycle than four chunks); never a
    different plan. With every pass, every case extends but with spare streams (5 for 3 chains: the
    chunk GEMMs take the spare ones in turn, a longer cycle)."""
    import itertools

    others = [p for p in rp.PASSES if p != "wavefront_streams"]
    extended_ones = []
    for r in range(len(others) + 1):
        for subset in itertools.combinations(others, r):
            passes = tuple(p for p in rp.PASSES if p in subset or p == "wavefront_streams")
            for streams, (cell, layers, chunk) in itertools.product((None, 1, 5), (("lstm", 3, 3), ("gru", 2, 2))):
                kw = dict(cell=cell, input_size=6, hidden_size=5, num_layers=layers, batch=2)
                options = rp.PlanOptions(lowering="graph", input_chunk=chunk, passes=passes, num_streams=streams)
                short = fresh(rp.RNNSpec(**kw, seq_len=40), options)
                longer = 40 + 4 * chunk
                try:
                    got = extended(short, longer, lambda s, o=options: len(planner.passed_graph(s, o.passes, o)))
                except ValueError as e:
                    assert "no steady state" in str(e) or "positive multiple" in str(e), e
                    continue
                assert got.to_json() == fresh(rp.RNNSpec(**kw, seq_len=longer), options).to_json(), (passes, streams)
                extended_ones.append((passes, streams, cell))
    full = {(s, c) for p, s, c in extended_ones if p == rp.PASSES}
    assert full >= {(s, c) for s in (None, 1) for c in ("lstm", "gru")}
    assert len(extended_ones) >= 12
