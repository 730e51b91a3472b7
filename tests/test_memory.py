"""Memory is checked before it is taken: weights and plans too large for this machine get one
NotEnoughMemory naming the bytes needed and available and the spec fields that drive them, before
anything is allocated; the plan cache is public, bounded and can be cleared."""

import pytest

import rnnplan as rp
from rnnplan.lowering import PLAN_CACHE, build_plan
from rnnplan.resources import NotEnoughMemory, available_host_bytes


def test_available_memory_is_known_here():
    assert available_host_bytes() is not None and available_host_bytes() > 2**20


def test_weights_too_large_for_the_host():
    spec = rp.RNNSpec(cell="lstm", input_size=100_000, hidden_size=100_000, num_layers=1, seq_len=10, batch=1)
    with pytest.raises(NotEnoughMemory, match=r"Weights.random for lstm 1x100000 .* needs 298.0 GiB of host memory "
                                              r"\(weights 298.0 GiB\), and .* is available; the weights grow with "
                                              r"num_layers=1 x directions=1 x gates x hidden_size=100000"):
        rp.Weights.random(spec)
    assert issubclass(NotEnoughMemory, MemoryError)


def test_a_plan_too_large_for_the_host_fails_before_allocating():
    spec = rp.RNNSpec(cell="lstm", input_size=8, hidden_size=8, num_layers=1, seq_len=4, batch=2**30)
    plan = build_plan(spec)
    assert plan.stats.peak_bytes > 2**38  # about 300 GiB, planned in no time: the plan is only a table
    with pytest.raises(NotEnoughMemory, match=r"the plan needs .* GiB of host memory \(sequences .* GiB, temporaries "
                                              r".*\), and .* is available; the temporaries grow with batch=1073741824 "
                                              r"x hidden_size=8 \(x seq_len=4 for layer 0's input projection"):
        rp.Executor(plan, rp.Weights.random(spec), backend="numpy")


def test_the_plan_cache_is_public_bounded_and_clearable():
    assert rp.plan_cache is PLAN_CACHE
    spec = rp.RNNSpec(cell="gru", input_size=3, hidden_size=2, num_layers=1, seq_len=2, batch=1)
    old = rp.plan_cache.max_plans
    try:
        rp.plan_cache.clear()
        a = build_plan(spec)
        assert build_plan(spec) is a and rp.plan_cache.info()[:2] == (1, old)
        info = rp.plan_cache.info()
        assert (info.hits, info.misses, info.steps) == (1, 1, len(a.steps))
        rp.plan_cache.max_plans = 2
        b, c = (build_plan(spec.model_copy(update={"seq_len": t})) for t in (3, 4))
        assert rp.plan_cache.info().plans == 2 and build_plan(spec) is not a  # the least recently used went
        rp.plan_cache.max_plans = 0  # keep none
        assert rp.plan_cache.info().plans == 0 and build_plan(spec) is not build_plan(spec)
        with pytest.raises(ValueError, match="max_plans must be an int >= 0, got -1"):
            rp.plan_cache.max_plans = -1
        with pytest.raises(ValueError, match="max_plans must be an int >= 0, got True"):
            rp.plan_cache.max_plans = True
        rp.plan_cache.max_plans = old
        build_plan(spec)
        rp.plan_cache.clear()
        assert rp.plan_cache.info()[:1] == (0,) and rp.plan_cache.info().hits == 0
    finally:
        rp.plan_cache.max_plans = old
