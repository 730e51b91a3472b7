"""verify_plan accepts every plan we build and rejects deliberately broken ones."""

import numpy as np
import pytest

import rnnplan as rp
from rnnplan.lowering import (
    PlanError,
    build_plan,  # the planner itself: hardware-free
    check_plan,
    verify_plan,
)
from rnnplan.lowering.plan import BufferView as V
from rnnplan.lowering.verify_plan import _joined

SPEC = rp.RNNSpec(cell="lstm", input_size=5, hidden_size=6, num_layers=2, seq_len=6, batch=2)


def plan(**opts):
    return build_plan(SPEC, options=rp.PlanOptions(input_chunk=2, **opts))


def with_steps(p, steps):
    return p.model_copy(update={"steps": tuple(steps)})


def edit(p, i, **changes):
    steps = list(p.steps)
    steps[i] = steps[i].model_copy(update=changes)
    return with_steps(p, steps)


def test_built_plans_verify():
    for passes in [(), ("wavefront_streams",), None]:
        verify_plan(build_plan(SPEC, passes=passes))


def test_missing_event_is_rejected():
    p = plan()
    i = next(i for i, s in enumerate(p.steps) if s.waits)
    with pytest.raises(PlanError, match="with no event or stream order between them"):
        verify_plan(edit(p, i, waits=()))


def test_wait_before_record_is_rejected():
    p = plan()
    i = next(i for i, s in enumerate(p.steps) if s.waits)
    steps = list(p.steps)
    moved = steps.pop(i)
    steps.insert(0, moved.model_copy(update={"deps": ()}))
    with pytest.raises(PlanError, match="before any step recorded it"):
        verify_plan(with_steps(p, steps))


def merge_buffers(p, src, dst):
    """What a buggy allocator would do: put every value of buffer src into buffer dst (the plan's
    outputs that live there move with them)."""
    def move(views):
        return tuple(v._replace(buffer=dst) if v.buffer == src else v for v in views)
    merged = with_steps(p, [s.model_copy(update={"inputs": move(s.inputs), "outputs": move(s.outputs)})
                            for s in p.steps])
    return merged.model_copy(update={"outputs": {k: move(vs) for k, vs in p.outputs.items()}})


def test_unsafe_reuse_is_rejected_and_accepted_reuse_is_safe():
    """Merging two temps used on different streams is a race unless their uses are ordered:
    verify_plan must reject the races, and what it accepts must give the same output sequence in any
    stream interleaving. (A merge can still change what a plan computes, by overwriting a final state
    kept in a temp: safe, but another function, which only the comparison with the planner's own
    plan shows: check_plan refuses every merged plan unless edits are allowed.)"""
    p = plan(num_streams=3)
    w = rp.Weights.random(SPEC, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 5)).astype(np.float32)
    want = rp.Executor(p, w, backend="numpy").run(x)
    temps = [b for b in p.buffers if b.role == "temp"]
    streams_of = {b.id: {s.stream for s in p.steps for v in s.inputs + s.outputs if v.buffer == b.id}
                  for b in temps}
    caught = accepted = 0
    for a in temps:
        for b in temps:
            if a.id < b.id and a.size == b.size and streams_of[a.id] != streams_of[b.id]:
                merged = merge_buffers(p, b.id, a.id)
                try:
                    verify_plan(merged)
                except PlanError as e:
                    caught += "unsafe reuse" in str(e)
                    continue
                accepted += 1
                with pytest.raises(PlanError, match="not the one rnnplan makes"):
                    check_plan(merged)
                ex = rp.Executor(merged, w, backend="numpy", allow_edits=True)  # a safe edit: the point
                for seed in range(5):
                    assert np.array_equal(ex.run(x, interleave_seed=seed)[0], want[0])
    assert caught > 0 and accepted > 0


def test_read_before_write_is_rejected():
    p = plan(passes=())
    i = next(i for i, s in enumerate(p.steps) if s.deps)
    with pytest.raises(PlanError, match="nothing wrote before it|not by its deps|not an earlier step"):
        verify_plan(edit(p, i, deps=()))


def test_shape_errors_are_rejected():
    p = plan()
    i = next(i for i, s in enumerate(p.steps) if s.kind == "gemm")
    g = p.steps[i].gemm
    with pytest.raises(PlanError, match="A is"):
        verify_plan(edit(p, i, gemm=g.model_copy(update={"k": g.k + 1})))
    out = p.steps[i].outputs[0]
    with pytest.raises(PlanError, match="outside its buffer"):
        verify_plan(edit(p, i, outputs=(out._replace(offset=10**9),)))


def test_writing_an_input_is_rejected():
    p = plan()
    i = next(i for i, s in enumerate(p.steps) if s.kind == "fused")
    out = p.steps[i].outputs[0]
    into_x = out._replace(buffer=p.inputs["x"].buffer, offset=0, ld=out.cols)
    with pytest.raises(PlanError, match="holds an input, state or param"):
        verify_plan(edit(p, i, outputs=(into_x,) + p.steps[i].outputs[1:]))


def test_stream_out_of_range_and_double_record():
    p = plan()
    with pytest.raises(PlanError, match="not in 0.."):
        verify_plan(edit(p, 0, stream=p.num_streams))
    rec = [i for i, s in enumerate(p.steps) if s.record is not None]
    with pytest.raises(PlanError, match="already recorded"):
        verify_plan(edit(p, rec[1], record=p.steps[rec[0]].record))


def test_reads_of_adjacent_columns_are_replayed_as_one_rectangle():
    gates = [V(3, 16 + 4 * g, 2, 4, 16) for g in (2, 0, 3, 1)]  # a cell's four gate columns, any order
    assert _joined(gates) == [V(3, 16, 2, 16, 16)]
    kept = [
        [V(3, 0, 2, 4, 16), V(3, 8, 2, 4, 16)],  # a gap between them
        [V(3, 0, 2, 4, 16), V(3, 4, 1, 4, 16)],  # different rows
        [V(5, 12, 2, 4, 16), V(5, 16, 2, 4, 16)],  # the second starts on the next row
        [V(3, 0, 2, 4, 16), V(3, 0, 2, 4, 16)],  # the same view twice
        [V(3, 0, 2, 4, 16), V(4, 4, 2, 4, 16)],  # another buffer
        [V(3, 0, 2, 4, 16), V(3, 4, 2, 4, 20)],  # another row stride
    ]
    for views in kept:
        assert _joined(views) == sorted(views)
    # The built plans' fused steps read each GEMM's gate columns; a missing dependency on the GEMM
    # is still caught through the joined rectangle.
    p = plan(passes=("combine_gates", "fuse_pointwise"))
    i = next(i for i, s in enumerate(p.steps) if s.kind == "fused" and s.deps)
    assert len(_joined([v for v in p.steps[i].inputs if p.buffers[v.buffer].role == "temp"])) < \
        sum(p.buffers[v.buffer].role == "temp" for v in p.steps[i].inputs)
    with pytest.raises(PlanError, match="not by its deps|nothing wrote before it"):
        verify_plan(edit(p, i, deps=()))
