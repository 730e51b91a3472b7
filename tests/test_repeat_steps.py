"""build_plan runs the step-local passes on three steps and repeats the middle one
(passes/repeat_steps.py): the graph must be the one the passes give on the whole naive graph,
node for node and in the same order, for every pass subset."""

import itertools

import pytest

import rnnplan as rp
from rnnplan.ir import build
from rnnplan.lowering import build_graph  # the planner itself: hardware-free
from rnnplan.passes.manager import STEP_LOCAL, apply_passes
from rnnplan.passes.repeat_steps import repeat_middle_step

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
        assert_same_graph(build_graph(spec, options), apply_passes(build(spec), options, check=False))


@pytest.mark.parametrize("spec", SPECS[:3], ids=lambda s: s.short())
def test_repeating_three_steps_gives_the_whole_graph_before_and_after_local_passes(spec):
    options = rp.PlanOptions(lowering="graph")
    for k in range(len(STEP_LOCAL) + 1):
        for passes in itertools.combinations(STEP_LOCAL, k):
            short = apply_passes(build(spec.model_copy(update={"seq_len": 3}), time_slots=True),
                                 options.model_copy(update={"passes": passes}), check=False)
            whole = apply_passes(build(spec), options.model_copy(update={"passes": passes}), check=False)
            assert_same_graph(repeat_middle_step(short, spec), whole)


def test_repeat_needs_the_three_step_template_of_the_spec():
    spec = SPECS[0]
    with pytest.raises(ValueError, match="3-step graph"):
        repeat_middle_step(build(spec.model_copy(update={"seq_len": 4}), time_slots=True), spec)
    with pytest.raises(ValueError, match="3-step graph"):
        repeat_middle_step(build(SPECS[1].model_copy(update={"seq_len": 3}), time_slots=True), spec)
    with pytest.raises(ValueError, match="time slots"):  # names with printed times cannot be repeated
        repeat_middle_step(build(spec.model_copy(update={"seq_len": 3})), spec)


def test_time_slots_hold_every_time_a_name_mentions():
    """A template graph names times only as format slots (`{k}`), and formatting them as printed
    times gives the plain graph's names: no name is ever parsed for its time."""
    spec = SPECS[0].model_copy(update={"seq_len": 3})
    plain, template = build(spec), build(spec, time_slots=True)
    assert [n.time for n in plain.nodes.values()] == [n.time for n in template.nodes.values()]
    assert "L1.rev.t{2}.gemm_hh.f" in template.nodes and "L1.rev.t2.gemm_hh.f" in plain.nodes
    assert [name.format("0", "1", "2") for name in template.nodes] == list(plain.nodes)
    assert all("{" not in name for name in plain.nodes)
