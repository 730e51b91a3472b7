"""The naive unroller and graph invariants: counts per cell-step, names, and verify() on broken graphs."""


import pytest

import rnnplan as rp
from rnnplan.ir import Gemm, GraphError, Node, Region, Value, build, evaluate, verify
from rnnplan.lowering import (  # the planner itself: hardware-free
    build_graph,
    build_plan,
)
from tests.helpers import random_inputs, rel_err

SMALL = dict(input_size=7, hidden_size=13, seq_len=5, batch=3)
GEMMS_PER_CELL_STEP = {"lstm": 8, "gru": 6, "rnn_tanh": 2, "rnn_relu": 2}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("layers, bidir, bias", [(1, False, True), (2, True, True), (3, False, False)])
def test_naive_graph_counts_and_verifies(cell, layers, bidir, bias):
    spec = rp.RNNSpec(cell=cell, num_layers=layers, bidirectional=bidir, bias=bias, **SMALL)
    g = verify(build(spec))
    cell_steps = layers * spec.directions * spec.seq_len
    gemms = [n for n in g.nodes.values() if n.kind == "gemm"]
    assert len(gemms) == GEMMS_PER_CELL_STEP[cell] * cell_steps
    pointwise = [n for n in g.nodes.values() if n.kind == "pointwise"]
    assert all(n.cell_step is not None for n in gemms + pointwise)
    per_step = {}
    for n in pointwise:
        per_step.setdefault(n.cell_step, []).append(n.op)
    assert len(per_step) == cell_steps
    ops = next(iter(per_step.values()))
    if bias:
        assert ops.count("add") >= 2 * len(rp.ir.CELLS[cell].gates)  # separate bias adds per gate and operand
    assert {"input", "param", "view", "output"} <= {n.kind for n in g.nodes.values()}
    outputs = {n.name for n in g.nodes.values() if n.kind == "output"}
    assert outputs == ({"out", "h_n", "c_n"} if cell == "lstm" else {"out", "h_n"})


def test_names_are_deterministic_and_readable():
    spec = rp.RNNSpec(cell="lstm", num_layers=2, bidirectional=True, **SMALL)
    a, b = build(spec), build(spec)
    assert str(a) == str(b)
    assert "L1.rev.t4.gemm_hh.f" in a.nodes
    n = a.nodes["L1.rev.t4.gemm_hh.f"]
    assert (n.layer, n.direction, n.step, n.time, n.gate) == (1, 1, 0, 4, "f")
    line = next(l for l in str(a).splitlines() if l.startswith("L1.rev.t4.gemm_hh.f:"))
    assert "gemm[3x13x13,nk]" in line


def test_reverse_direction_runs_backwards_and_writes_second_half():
    spec = rp.RNNSpec(cell="rnn_tanh", bidirectional=True, num_layers=1, **SMALL)
    g = build(spec)
    h_first_rev = g.values["L0.rev.t4.h"]
    assert g.nodes["L0.rev.t4.h"].step == 0
    assert h_first_rev.region == Region("y0", (12, 15), (13, 26))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_graph_interpreter_matches_executor(cell):
    spec = rp.RNNSpec(cell=cell, num_layers=2, bidirectional=True, **SMALL)
    w = rp.Weights.random(spec, seed=1)
    x, state = random_inputs(spec, seed=2)
    g = build(spec)
    h0 = state[0] if cell == "lstm" else state
    feeds = {"x": x.reshape(-1, spec.input_size), "h0": h0.reshape(-1, spec.hidden_size)}
    if cell == "lstm":
        feeds["c0"] = state[1].reshape(-1, spec.hidden_size)
    feeds |= {k: w.layout(k, "none") for k in w.tensors}
    res = evaluate(g, feeds)
    out, _ = rp.Executor(build_plan(spec, passes=()), w, backend="numpy").run(x, state)
    assert rel_err(res["out"].reshape(out.shape), out) == 0.0
    # The optimized graph (gate columns exposed by one view node per GEMM, re-pointed at batched
    # GEMMs' rows; fused cells; pre-transposed weights) computes the same.
    optimized = build_graph(spec, rp.PlanOptions(lowering="graph", input_chunk=2))
    multi = any(n.kind == "view" and len(n.outputs) > 1 for n in optimized.nodes.values())
    assert multi == (cell in ("lstm", "gru"))
    fast = evaluate(optimized, feeds)
    assert all(rel_err(fast[k], res[k]) < 1e-5 for k in res)


# ---- verify() rejects broken graphs ------------------------------------------------------------------


def _tiny():
    return build(rp.RNNSpec(cell="rnn_tanh", num_layers=1, **SMALL))


def _swap(g, node):
    return g.rewrite("test", replace=[node])


def test_rewrite_places_inserted_nodes_and_rejects_bad_requests():
    g = _tiny()
    first = g.nodes["L0.fwd.t1.gemm_hh.h"]
    moved = first._replace(name="copy", outputs=(Value("copy", first.outputs[0].shape),))
    h = g.rewrite("test", insert=[("L0.fwd.t1.gemm_hh.h", [moved])], remove=["L0.fwd.t1.gemm_hh.h"])
    names = list(h.nodes)
    assert names.index("copy") == list(g.nodes).index("L0.fwd.t1.gemm_hh.h") and "L0.fwd.t1.gemm_hh.h" not in names
    with pytest.raises(ValueError, match="insert before unknown node"):
        g.rewrite("test", insert=[("nowhere", [moved])])
    with pytest.raises(ValueError, match="already exists"):
        g.rewrite("test", insert=[("x", [first])])  # a name still in the graph
    with pytest.raises(ValueError, match="cannot replace unknown"):
        g.rewrite("test", replace=[moved])


def test_verify_rejects_cycle():
    g = _tiny()
    n = g.nodes["L0.fwd.t0.gemm_hh.h"]
    broken = _swap(g, n._replace(inputs=("L0.fwd.t1.h", n.inputs[1])))
    with pytest.raises(GraphError, match="cycle"):
        verify(broken)


def test_verify_rejects_shape_mismatch():
    g = _tiny()
    n = g.nodes["L0.fwd.t2.gemm_ih.h"]
    broken = _swap(g, n._replace(gemm=Gemm(3, 13, 8)))
    with pytest.raises(GraphError, match="operand A .* has shape"):
        verify(broken)


def test_verify_rejects_undefined_input():
    g = _tiny()
    n = g.nodes["L0.fwd.t2.pre"]
    with pytest.raises(GraphError, match="undefined"):
        verify(_swap(g, n._replace(inputs=(n.inputs[0], "nope"))))


def test_verify_rejects_missing_output_and_dead_value():
    g = _tiny()
    with pytest.raises(GraphError, match="outputs are"):
        verify(g.rewrite("test", remove=["h_n"]))
    extra = Node("dangling", "pointwise", ("L0.fwd.t1.h",), (Value("dangling", (3, 13)),), op="tanh")
    with pytest.raises(GraphError, match="dangling is never read"):
        verify(g.rewrite("test", add=[extra]))


def test_verify_rejects_overlapping_writes_and_uncovered_view():
    g = _tiny()
    n = g.nodes["L0.fwd.t1.h"]
    moved = Value(n.outputs[0].name, (3, 13), Region("y0", (0, 3), (0, 13)))  # lands on t0's rows
    with pytest.raises(GraphError, match="both write y0"):
        verify(_swap(g, n._replace(outputs=(moved,))))
    seq = g.nodes["out.seq"]
    with pytest.raises(GraphError, match="inputs cover"):
        verify(_swap(g, seq._replace(inputs=seq.inputs[:-1])))


def test_verify_rejects_unknown_op_and_unreachable_node():
    g = _tiny()
    n = g.nodes["L0.fwd.t0.pre"]
    with pytest.raises(GraphError, match="unknown pointwise op"):
        verify(_swap(g, n._replace(op="softmax")))
    orphan = Node("orphan", "pointwise", (), (Value("orphan", (3, 13)),), op="tanh")
    with pytest.raises(GraphError, match="unreachable"):
        verify(g.rewrite("test", add=[orphan]))


def test_verify_checks_every_rectangle_of_a_view():
    spec = rp.RNNSpec(cell="lstm", num_layers=1, **SMALL)
    g = build_graph(spec, rp.PlanOptions(lowering="graph", passes=("combine_gates",)))
    gates = g.nodes["L0.fwd.t1.gemm_hh.gates"]
    assert len(gates.outputs) == 4 and verify(g) is g
    i, f, *rest = gates.outputs
    shifted = f._replace(region=f.region._replace(cols=(40, 53)))  # past the GEMM's 52 columns
    with pytest.raises(GraphError, match="outside storage"):
        verify(_swap(g, gates._replace(outputs=(i, shifted, *rest))))
    with pytest.raises(GraphError, match="does not live in storage"):
        verify(_swap(g, gates._replace(inputs=("L0.fwd.t1.gemm_ih",))))
