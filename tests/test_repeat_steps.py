"""build_plan runs the step-local passes on three steps and repeats the middle one
(scheduler/repeat_steps.py): the graph must be the one the passes give on the whole naive graph,
node for node and in the same order, for every pass subset."""

import itertools

import pytest

import rnnplan as rp
from rnnplan.ir import build
from rnnplan.scheduler.manager import apply_passes
from rnnplan.scheduler.repeat_steps import STEP_LOCAL, repeat_middle_step

SUBSETS = [s for k in range(len(rp.PASSES) + 1) for s in itertools.combinations(rp.PASSES, k)]
SPECS = [
    rp.RNNSpec(cell="lstm", input_size=7, hidden_size=5, num_layers=3, seq_len=11, batch=3, bidirectional=True),
    rp.RNNSpec(cell="gru", input_size=5, hidden_size=6, num_layers=2, seq_len=4, batch=2),
    rp.RNNSpec(cell="rnn_relu", input_size=4, hidden_size=6, num_layers=2, seq_len=10, batch=1, bias=False,
               bidirectional=True),
    rp.RNNSpec(cell="rnn_tanh", input_size=3, hidden_size=5, num_layers=1, seq_len=5, batch=2),
    rp.RNNSpec(cell="lstm", input_size=3, hidden_size=4, num_layers=1, seq_len=3, batch=1, bidirectional=True),
]


def assert_same_graph(got, want):
    assert got.passes == want.passes
    assert got.storages == want.storages
    assert list(got.nodes) == list(want.nodes)  # the same node order
    diff = [k for k in want.nodes if got.nodes[k] != want.nodes[k]]
    assert not diff, f"{len(diff)} nodes differ, first {diff[0]}:\n{got.nodes[diff[0]]}\n{want.nodes[diff[0]]}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.short())
@pytest.mark.parametrize("chunk", [None, 3])
def test_planned_graph_equals_passes_on_the_whole_graph(spec, chunk):
    for passes in SUBSETS:
        options = rp.PlanOptions(passes=passes, input_chunk=chunk, num_streams=3 if chunk else None,
                                 lowering="graph")
        assert_same_graph(rp.build_graph(spec, options), apply_passes(build(spec), options, check=False))


@pytest.mark.parametrize("spec", SPECS[:3], ids=lambda s: s.short())
def test_repeating_three_steps_gives_the_whole_graph_before_and_after_local_passes(spec):
    options = rp.PlanOptions(lowering="graph")
    for k in range(len(STEP_LOCAL) + 1):
        for passes in itertools.combinations(STEP_LOCAL, k):
            short = apply_passes(build(spec.model_copy(update={"seq_len": 3})), options.model_copy(
                update={"passes": passes}), check=False)
            whole = apply_passes(build(spec), options.model_copy(update={"passes": passes}), check=False)
            assert_same_graph(repeat_middle_step(short, spec), whole)


def test_repeat_needs_the_three_step_graph_of_the_spec():
    spec = SPECS[0]
    with pytest.raises(ValueError, match="3-step graph"):
        repeat_middle_step(build(spec.model_copy(update={"seq_len": 4})), spec)
    with pytest.raises(ValueError, match="3-step graph"):
        repeat_middle_step(build(SPECS[1].model_copy(update={"seq_len": 3})), spec)
