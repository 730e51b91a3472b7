"""Each pass on small graphs: what it requires, what it guarantees (before/expected pairs)."""

import math
import os
import subprocess
import sys

import networkx as nx
import pytest

import rnnplan as rp
from rnnplan.ir import build
from rnnplan.ir.node import Region, Value
from rnnplan.lowering import build_plan  # the planner itself: hardware-free
from rnnplan.passes.batch_input_gemms import choose_input_chunk
from rnnplan.passes.manager import REGISTRY, apply_passes

SPEC = rp.RNNSpec(cell="lstm", input_size=7, hidden_size=13, num_layers=2, seq_len=5, batch=3, bidirectional=True)


def run(spec, *names, **opts):
    return apply_passes(build(spec), rp.PlanOptions(passes=names, **opts), check=True)


def kinds_at(g, layer, d, step):
    return sorted(n.kind for n in g.nodes.values() if n.cell_step == (layer, d, step) and n.is_kernel)


def test_registry_is_canonical_and_passes_are_pure():
    assert rp.PASSES == ("combine_gates", "pretranspose", "batch_input_gemms", "fuse_pointwise",
                         "wavefront_streams")
    naive = build(SPEC)
    before = str(naive)
    for name in rp.PASSES:
        REGISTRY[name].run(naive, rp.PlanOptions())
    assert str(naive) == before and naive.passes == ()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_passes_keep_node_order_topological(cell):
    """Passes insert new nodes where the ones they replace were, so `order` is the node order and
    planning never sorts; a node appended out of order still gets a sorted `order`."""
    spec = rp.RNNSpec(cell=cell, input_size=7, hidden_size=5, num_layers=3, seq_len=9, batch=2,
                      bidirectional=True)
    g = build(spec)
    for name in rp.PASSES:
        assert g.order == list(g.nodes), f"before {name}"
        g = REGISTRY[name].run(g, rp.PlanOptions(input_chunk=4))
    assert g.order == list(g.nodes)
    first = next(iter(g.nodes.values()))
    moved = g.rewrite("test", remove=[first.name], add=[first])  # the input, now last
    position = {name: i for i, name in enumerate(moved.order)}
    assert list(moved.nodes)[-1] == first.name and moved.order != list(moved.nodes)
    assert all(position[moved.producer[v]] < position[n.name] for n in moved.nodes.values() for v in n.inputs)


def test_combine_gates_lstm_8_to_2():
    g = run(SPEC, "combine_gates")
    assert kinds_at(build(SPEC), 1, 1, 2).count("gemm") == 8
    assert kinds_at(g, 1, 1, 2).count("gemm") == 2
    gemm = g.nodes["L1.rev.t2.gemm_hh"]
    assert (gemm.gemm.m, gemm.gemm.n, gemm.gemm.k) == (3, 52, 13)
    assert gemm.inputs == ("L1.rev.t3.h", "weight_hh_l1_reverse")  # reverse: step t reads h of t+1
    # The old per-gate results are column views of the combined one, under their old names, all
    # exposed by one view node.
    view = g.nodes["L1.rev.t2.gemm_hh.gates"]
    assert view.kind == "view" and view.inputs == ("L1.rev.t2.gemm_hh",)
    assert [(v.name, v.region) for v in view.outputs] == [
        (f"L1.rev.t2.gemm_hh.{gate}", Region("L1.rev.t2.gemm_hh", (0, 3), (13 * i, 13 * (i + 1))))
        for i, gate in enumerate("ifgo")]
    assert g.defining_node("L1.rev.t2.gemm_hh.f") is view and "L1.rev.t2.gemm_hh.f" not in g.nodes
    assert "L1.rev.w_hh.f" not in g.nodes  # orphaned per-gate weight views are gone


@pytest.mark.parametrize("cell, gates", [("gru", 3), ("rnn_tanh", 1)])
def test_combine_gates_other_cells(cell, gates):
    spec = SPEC.model_copy(update={"cell": cell})
    g = run(spec, "combine_gates")
    assert kinds_at(g, 0, 0, 0).count("gemm") == 2
    assert g.nodes["L0.fwd.t0.gemm_ih" if gates > 1 else "L0.fwd.t0.gemm_ih.h"].gemm.n == gates * 13


def test_pretranspose_records_layout_and_transform():
    g = run(SPEC, "pretranspose")
    p = g.nodes["weight_ih_l1.T"]
    assert (p.kind, p.source, p.transform, p.outputs[0].shape) == ("param", "weight_ih_l1", "transpose", (26, 52))
    assert "weight_ih_l1" not in g.nodes and "bias_ih_l1" in g.nodes  # biases keep their layout
    assert all(n.gemm.weight_layout == "kn" for n in g.nodes.values() if n.kind == "gemm")
    assert g.values["L1.fwd.w_ih.g"].region.cols == (26, 39)
    plan = build_plan(SPEC, passes=("pretranspose",))
    assert {b.source for b in plan.buffers if b.transform == "transpose"} == {
        n for n in rp.Weights.random(SPEC).tensors if n.startswith("weight")}


@pytest.mark.parametrize("chunk, expected", [(None, None), (1, 5), (2, 3), (5, 1)])
def test_batch_input_gemms_chunks(chunk, expected):
    g = run(SPEC, "combine_gates", "batch_input_gemms", input_chunk=chunk)
    chunk = chunk or choose_input_chunk(SPEC)
    expected = expected or math.ceil(5 / chunk)
    for d in (0, 1):
        layer0 = [n for n in g.nodes.values() if n.kind == "gemm" and n.role == "gemm_ih" and n.layer == 0
                  and n.direction == d]
        assert len(layer0) == 1 and layer0[0].gemm.m == 15  # all steps at once
        layer1 = [n for n in g.nodes.values() if n.kind == "gemm" and n.role == "gemm_ih" and n.layer == 1
                  and n.direction == d]
        assert len(layer1) == expected
        assert sum(n.gemm.m for n in layer1) == 15


def test_batch_input_gemms_repoints_gate_views_and_keeps_other_results():
    before = run(SPEC, "combine_gates")
    assert before.nodes["L1.fwd.t3.gemm_ih.gates"].inputs == ("L1.fwd.t3.gemm_ih",)
    after = run(SPEC, "combine_gates", "batch_input_gemms", input_chunk=2)
    # Only views read the per-step result: they now expose the merged GEMM's rows of step 3, and
    # the per-step value is gone.
    gates = after.nodes["L1.fwd.t3.gemm_ih.gates"]
    assert gates.inputs == ("L1.fwd.t2-3.gemm_ih",)
    assert [(v.name, v.region) for v in gates.outputs] == [
        (f"L1.fwd.t3.gemm_ih.{gate}", Region("L1.fwd.t2-3.gemm_ih", (3, 6), (13 * i, 13 * (i + 1))))
        for i, gate in enumerate("ifgo")]
    assert "L1.fwd.t3.gemm_ih" not in after.values and "L1.fwd.t3.gemm_ih" not in after.nodes
    # Without combine_gates, pointwise nodes read each per-gate result: it survives as a row view.
    plain = run(SPEC, "batch_input_gemms", input_chunk=2)
    row = plain.nodes["L1.fwd.t3.gemm_ih.f"]
    assert row.kind == "view" and row.inputs == ("L1.fwd.t2-3.gemm_ih.f",)
    assert row.outputs == (Value("L1.fwd.t3.gemm_ih.f", (3, 13), Region("L1.fwd.t2-3.gemm_ih.f", (3, 6), (0, 13))),)


def test_chunk_waits_only_for_the_steps_it_reads():
    spec = SPEC.model_copy(update={"bidirectional": False, "seq_len": 7})
    g = run(spec, "combine_gates", "batch_input_gemms", "fuse_pointwise", input_chunk=3)
    deps = g.kernel_deps["L1.fwd.t3-5.gemm_ih"]
    assert deps == ("L0.fwd.t3.cell", "L0.fwd.t4.cell", "L0.fwd.t5.cell")
    # A one-step tail chunk stays a per-step GEMM, waiting for that step alone.
    assert g.nodes["L1.fwd.t6.gemm_ih"].kind == "gemm"
    assert g.kernel_deps["L1.fwd.t6.gemm_ih"] == ("L0.fwd.t6.cell",)
    assert choose_input_chunk(rp.PAPER_SPEC) == 10


def test_fuse_pointwise_one_kernel_per_cell_step():
    g = run(SPEC, "fuse_pointwise")
    for n in g.nodes.values():
        assert n.kind != "pointwise"
    cell = g.nodes["L0.rev.t3.cell"]
    assert cell.kind == "fused" and [v.name for v in cell.outputs] == ["L0.rev.t3.c", "L0.rev.t3.h"]
    assert cell.outputs[1].region.storage == "y0"
    assert [i.op for i in cell.expr].count("sigmoid") == 3 and len(cell.expr) == 21


def test_wavefront_levels_and_streams():
    g = run(SPEC, *rp.PASSES)
    levels = {k: lvl for lvl, gen in enumerate(nx.topological_generations(g.kernel_dag)) for k in gen}
    for n in g.nodes.values():
        assert n.level is not None
        if n.is_kernel:
            assert n.level == levels[n.name]
            if n.cell_step is not None:
                assert n.stream == n.layer * 2 + n.direction

    def cell_levels(graph, layer):
        return [n.level for n in graph.nodes.values() if n.kind == "fused" and n.layer == layer]

    # Bidirectional: layer 1's first cell-step reads layer 0 at its first time in both directions, so
    # it waits for the whole reverse pass of layer 0 (its cell-steps come after all of layer 0's; its
    # first recurrent GEMMs, reading h0, do not wait).
    assert SPEC.bidirectional and min(cell_levels(g, 1)) > max(cell_levels(g, 0))
    # One direction: layer 1 starts before layer 0 ends, a wavefront, not layer after layer.
    uni = SPEC.model_copy(update={"bidirectional": False, "seq_len": 8})
    g = run(uni, *rp.PASSES, input_chunk=2)
    assert min(cell_levels(g, 1)) < max(cell_levels(g, 0))


def test_streams_option_spare_and_wrapping():
    g = run(SPEC, *rp.PASSES, num_streams=6)
    off_chain = [n for n in g.nodes.values() if n.is_kernel and n.cell_step is None]
    assert {n.stream for n in off_chain} <= {4, 5} and len({n.stream for n in off_chain}) == 2
    g = run(SPEC, *rp.PASSES, num_streams=3)
    assert {n.stream for n in g.nodes.values() if n.is_kernel} == {0, 1, 2}
    assert g.nodes["L1.rev.t0.cell"].stream == 3 % 3


def test_paper_configuration_counts():
    plan = build_plan(rp.PAPER_SPEC)
    per_step = {}
    for s in plan.steps:
        if s.step is not None:
            per_step.setdefault((s.layer, s.direction, s.step), []).append(s.kind)
    assert len(per_step) == 4 * 100
    assert all(sorted(k) == ["fused", "gemm"] for k in per_step.values())
    assert plan.stats.pointwise == 0 and plan.stats.fused == 400
    assert plan.stats.gemms == 400 + 1 + 3 * 10  # recurrent + layer-0 input + 10 chunks per upper layer
    assert plan.stats.streams == 4


def test_options_errors_name_the_option_and_range():
    with pytest.raises(ValueError, match=r"input_chunk must be in 1..seq_len=5, got 6"):
        build_plan(SPEC, options=rp.PlanOptions(input_chunk=6))
    with pytest.raises(ValueError, match="input_chunk must be >= 1"):
        rp.PlanOptions(input_chunk=0)
    with pytest.raises(ValueError, match="num_streams"):
        rp.PlanOptions(num_streams=0)
    with pytest.raises(ValueError, match=r"unknown pass name\(s\) \['fuse'\]; known passes"):
        rp.PlanOptions(passes=("fuse",))
    with pytest.raises(ValueError, match="repeat"):
        rp.PlanOptions(passes=("pretranspose", "pretranspose"))
    assert rp.PlanOptions(passes=("wavefront_streams", "combine_gates")).passes == ("combine_gates", "wavefront_streams")


def test_plan_cache_returns_the_same_plan():
    a = build_plan(SPEC, options=rp.PlanOptions(input_chunk=2))
    assert build_plan(SPEC, options=rp.PlanOptions(input_chunk=2)) is a
    assert build_plan(SPEC, options=rp.PlanOptions(input_chunk=3)) is not a


def test_plans_do_not_depend_on_the_string_hash_seed():
    """DESIGN: names and dumps are deterministic. Buffer reuse once followed a set's order, so plans
    differed between processes; three hash seeds must give the same JSON."""
    code = ("import hashlib, rnnplan as rp\n"
            "s = rp.RNNSpec(cell='lstm', input_size=12, hidden_size=8, num_layers=2, seq_len=6, batch=2,"
            " bidirectional=True)\n"
            "ps = [rp.build_plan(s, options=rp.PlanOptions(lowering='graph', passes=p))"
            " for p in [(), ('combine_gates',), None]]\n"
            "print(hashlib.sha1(''.join(p.to_json() for p in ps).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(digests) == 1
