"""A loaded plan never computes wrongly: every damaged or hand-edited plan file gets a PlanError that
names the step, buffer or field before any work, and an edited plan runs only when the caller says
so (allow_edits=True). The plan is the CLI's `rnnplan plan --layers 2 --hidden-size 16 --input-size 8
--seq-len 4 --batch 3 --json p.json`, edited as a user would edit the JSON."""

import json

import numpy as np
import pytest

import rnnplan as rp
from rnnplan.lowering import PlanError, build_plan, check_plan, verify_plan
from tests.helpers import random_inputs, rel_err, run_torch, torch_module

SPEC = rp.RNNSpec(cell="lstm", input_size=8, hidden_size=16, num_layers=2, seq_len=4, batch=3)
PLAN = build_plan(SPEC)  # the planner itself: the same plan on any machine
WEIGHTS = rp.Weights.random(SPEC, seed=1)


def edited(change) -> str:
    raw = json.loads(PLAN.to_json())
    change(raw)
    return json.dumps(raw)


def buffer(raw, source):
    return next(b for b in raw["buffers"] if b["source"] == source)


def first_fused(raw):
    return next(s for s in raw["steps"] if s["kind"] == "fused")


def test_the_planned_plan_loads_and_runs():
    plan = rp.load_plan(PLAN.to_json())
    assert plan == PLAN and check_plan(plan) is plan
    x, state = random_inputs(SPEC, 2)
    got = rp.Executor(plan, WEIGHTS, backend="numpy").run(x, state)
    want = rp.Executor(PLAN, WEIGHTS, backend="numpy").run(x, state)
    assert rel_err(got[0], want[0]) == 0.0


# ---- damaged: outputs never written ------------------------------------------------------------------


def test_deleting_the_last_step_leaves_outputs_unwritten():
    text = edited(lambda raw: raw["steps"].pop())
    with pytest.raises(PlanError, match=r"output out\[0\] \(buffer \d+, y1\): 48 of its 192 elements are written by no "
                                        r"step"):
        rp.load_plan(text, allow_edits=True)  # not even an allowed edit: it is unsafe
    with pytest.raises(PlanError, match=r"output h_n\[1\].*written by no step"):
        rp.load_plan(text)


def test_deleting_every_layer_1_step():
    def drop_layer_1(raw):
        keep = [i for i, s in enumerate(raw["steps"]) if s["layer"] != 1]
        new_index = {old: new for new, old in enumerate(keep)}
        steps = [raw["steps"][i] for i in keep]
        for s in steps:
            s["deps"] = [new_index[d] for d in s["deps"] if d in new_index]
        raw["steps"] = steps
    with pytest.raises(PlanError, match=r"output out\[0\].*192 of its 192 elements are written by no step"):
        rp.load_plan(edited(drop_layer_1), allow_edits=True)


# ---- edited: safe, but another function ---------------------------------------------------------------


def swap_sources(raw):
    a, b = buffer(raw, "weight_ih_l1"), buffer(raw, "weight_hh_l1")
    a["source"], b["source"] = b["source"], a["source"]


def sigmoid_to_tanh(raw):
    step = first_fused(raw)
    ins = next(i for i in step["expr"] if i[1] == "sigmoid")
    ins[1] = "tanh"


def add_to_mul(raw):
    first_fused(raw)["expr"][0][1] = "mul"


def swap_expr_outputs(raw):
    step = first_fused(raw)
    step["expr_outputs"] = step["expr_outputs"][::-1]


def weights_of_another_layer(raw):
    """Layer 1's recurrent GEMM reads layer 0's W_hh (the same shape)."""
    l0 = buffer(raw, "weight_hh_l0")["id"]
    step = next(s for s in raw["steps"] if s["name"] == "L1.fwd.t0.gemm_hh")
    step["inputs"][1][0] = l0


@pytest.mark.parametrize("change, names", [
    (swap_sources, r"buffer 7 \(weight_ih_l1\.T\): source is 'weight_hh_l1', rnnplan plans 'weight_ih_l1'"),
    (sigmoid_to_tanh, r"step 3 \(L0\.fwd\.t0\.cell\): expr\[\d+\] is Instr\(out='t\d+', op='tanh'.*rnnplan plans "
                      r"Instr\(out='t\d+', op='sigmoid'"),
    (add_to_mul, r"step 3 \(L0\.fwd\.t0\.cell\): expr\[0\] is Instr\(out='t0', op='mul'"),
    (swap_expr_outputs, r"step 3 \(L0\.fwd\.t0\.cell\): expr_outputs\[0\] is 't20', rnnplan plans 't18'"),
    (weights_of_another_layer, r"step 2 \(L1\.fwd\.t0\.gemm_hh\): inputs\[1\] is BufferView\(buffer=4,.*rnnplan plans "
                               r"BufferView\(buffer=8,"),
], ids=["swapped sources", "sigmoid to tanh", "add to mul", "swapped expr_outputs", "another layer's weights"])
def test_semantic_edits_are_named_and_run_only_when_allowed(change, names):
    text = edited(change)
    verify_plan(rp.Plan.model_validate_json(text))  # each is safe to run: only the comparison catches it
    with pytest.raises(PlanError, match="not the one rnnplan makes for its spec and options") as e:
        rp.load_plan(text)
    assert "allow_edits=True" in str(e.value)
    assert any(__import__("re").search(names, line) for line in str(e.value).splitlines()), str(e.value)
    plan = rp.load_plan(text, allow_edits=True)  # the caller says so: it runs, and computes something else
    x, state = random_inputs(SPEC, 3)
    got = rp.Executor(plan, WEIGHTS, backend="numpy").run(x, state)
    want = rp.Executor(PLAN, WEIGHTS, backend="numpy").run(x, state)
    assert rel_err(got[0], want[0]) > 1e-3 or rel_err(got[1][1], want[1][1]) > 1e-3


def test_an_edited_copy_in_memory_needs_allow_edits_too():
    steps = list(PLAN.steps)
    fused = next(i for i, s in enumerate(steps) if s.kind == "fused")
    expr = list(steps[fused].expr)
    expr[0] = expr[0]._replace(op="mul")
    edited_plan = PLAN.model_copy(update={"steps": tuple(steps[:fused] + [steps[fused].model_copy(
        update={"expr": tuple(expr)})] + steps[fused + 1:])})
    with pytest.raises(PlanError, match=r"step \d+ \(L0.fwd.t0.cell\): expr\[0\]"):
        rp.Executor(edited_plan, WEIGHTS, backend="numpy")
    rp.Executor(edited_plan, WEIGHTS, backend="numpy", allow_edits=True)
    same = PLAN.model_copy()  # a copy that changes nothing is the planner's plan: it runs
    assert rp.Executor(same, WEIGHTS, backend="numpy").plan is same


# ---- damaged bindings: each a PlanError naming the buffer, never a KeyError or NumPy error -------------


@pytest.mark.parametrize("change, names", [
    (lambda raw: buffer(raw, "weight_ih_l1").update(source="weight_ih_l9"),
     r"buffer 7 \(weight_ih_l1\.T\): source 'weight_ih_l9' is no tensor of lstm 2x16"),
    (lambda raw: raw["spec"].update(bias=False),
     r"buffer 5 \(bias_ih_l0\): source 'bias_ih_l0' is no tensor of lstm 2x16 .* \(the spec has bias=False\)"),
    (lambda raw: buffer(raw, "weight_hh_l0").update(transform="none"),
     r"buffer 4 \(weight_hh_l0\.T\): shape \(16, 64\) is not weight_hh_l0's \(64, 16\) with transform 'none'"),
    (lambda raw: raw["inputs"]["x"].__setitem__(0, 3),
     r"input x is bound to buffer 3 \(weight_ih_l0\.T\) of role param, not input"),
    (lambda raw: raw["buffers"][0].update(source="weight_ih_l0"),
     r"buffer 0 \(x\): a input buffer with source 'weight_ih_l0'"),
], ids=["missing source", "bias edited off", "transform edited", "input bound to a param", "input with a source"])
def test_damaged_bindings_are_named(change, names):
    text = edited(change)
    with pytest.raises(PlanError, match=names):
        rp.load_plan(text, allow_edits=True)


def test_a_recurrent_step_must_describe_the_spec():
    plan = build_plan(SPEC, options=rp.PlanOptions(lowering="persistent"))
    raw = json.loads(plan.to_json())
    next(s for s in raw["steps"] if s["kind"] == "recurrent")["recurrence"]["hidden"] = 32
    with pytest.raises(PlanError, match=r"recurrence: recurrence.hidden is 32, the spec's is 16"):
        rp.load_plan(json.dumps(raw), allow_edits=True)


def test_a_plan_whose_options_cannot_be_planned():
    def bad_chunk(raw):
        raw["options"]["input_chunk"] = 9  # more steps than the sequence has
    with pytest.raises(PlanError, match=r"cannot be planned \(input_chunk must be in 1..seq_len=4, got 9\)"):
        rp.load_plan(edited(bad_chunk))


def test_the_plan_computes_what_torch_computes():
    module = torch_module(SPEC, 4)
    x, state = random_inputs(SPEC, 4)
    got = rp.Executor(rp.load_plan(PLAN.to_json()), rp.Weights.from_torch(module, SPEC), backend="numpy").run(x, state)
    want = run_torch(module, x, state)
    assert rel_err(got[0], want[0]) < 1e-5 and np.isfinite(got[0]).all()
