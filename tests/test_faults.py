"""Fault behaviour: a call that fails returns nothing and leaves the executor usable (or says it is
not); no call returns outputs of an earlier call: with debug=True every buffer steps write is NaN
before each call, so an element a call fails to write shows. CPU parts run everywhere; the GPU parts
(marked gpu) provoke a real out-of-memory and an exception inside a run on the device."""

import gc

import numpy as np
import pytest

import rnnplan as rp
from rnnplan.backends import cupy_unavailable_reason
from rnnplan.lowering import build_plan
from tests.helpers import random_inputs, rel_err

SPEC = rp.RNNSpec(cell="lstm", input_size=6, hidden_size=8, num_layers=2, seq_len=5, batch=3)
WEIGHTS = rp.Weights.random(SPEC, seed=2)


def skipping_last_step(executor, monkeypatch):
    """As if the last step's kernel had silently written nothing (a bug, or an interrupted run)."""
    last = len(executor.plan.steps) - 1
    if executor.backend == "numpy":
        real = executor.impl._execute
        monkeypatch.setattr(executor.impl, "_execute", lambda i: None if i == last else real(i))
    else:
        waits, stream, _launch, record = executor.impl.program[last]
        executor.impl.program[last] = (waits, stream, lambda: None, record)


def check_debug_poisons_what_a_call_leaves_unwritten(backend, mode, monkeypatch):
    x1, s1 = random_inputs(SPEC, 1)
    x2, s2 = random_inputs(SPEC, 2)
    plain = rp.Executor(build_plan(SPEC), WEIGHTS, backend=backend, mode=mode)
    debug = rp.Executor(build_plan(SPEC), WEIGHTS, backend=backend, mode=mode, debug=True)
    host = (lambda a: a.get()) if backend == "cupy" else np.asarray
    first = [host(ex.run(x1, s1)[0]) for ex in (plain, debug)]
    assert rel_err(first[1], first[0]) == 0.0  # debug changes nothing a call writes
    for ex in (plain, debug):
        skipping_last_step(ex, monkeypatch)
    stale, poisoned = (host(ex.run(x2, s2)[0]) for ex in (plain, debug))
    last_rows = slice(SPEC.seq_len - 1, SPEC.seq_len)
    # Without debug the unwritten rows hold the first call's output; with debug they are NaN.
    assert np.array_equal(stale[last_rows], first[0][last_rows])
    assert np.isnan(poisoned[last_rows]).all() and not np.isnan(poisoned[:-1]).any()


def test_numpy_debug_poisons_what_a_call_leaves_unwritten(monkeypatch):
    check_debug_poisons_what_a_call_leaves_unwritten("numpy", "graph", monkeypatch)


def test_numpy_executor_stays_usable_after_an_exception_inside_a_run(monkeypatch):
    ex = rp.Executor(build_plan(SPEC), WEIGHTS, backend="numpy")
    x, state = random_inputs(SPEC, 3)
    want = ex.run(x, state)[0].copy()
    real = ex.impl._execute

    def fail_once(i):
        if i == 3:
            monkeypatch.setattr(ex.impl, "_execute", real)
            raise KeyboardInterrupt  # as if interrupted mid-run
        real(i)
    monkeypatch.setattr(ex.impl, "_execute", fail_once)
    with pytest.raises(KeyboardInterrupt):
        ex.run(x, state)
    assert rel_err(ex.run(x, state)[0], want) == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(cupy_unavailable_reason() is not None, reason=str(cupy_unavailable_reason()))
def test_gpu_debug_poisons_what_a_call_leaves_unwritten(monkeypatch):
    check_debug_poisons_what_a_call_leaves_unwritten("cupy", "streams", monkeypatch)  # streams: launches patchable


@pytest.mark.gpu
@pytest.mark.skipif(cupy_unavailable_reason() is not None, reason=str(cupy_unavailable_reason()))
@pytest.mark.parametrize("mode", ["graph", "streams"])
def test_gpu_out_of_memory_during_a_call_leaves_the_executor_usable(mode):
    import cupy as cp

    from rnnplan.backends.cupy_backend import DeviceMemoryError

    spec = rp.RNNSpec(cell="lstm", input_size=256, hidden_size=512, num_layers=2, seq_len=100, batch=64)
    ex = rp.Executor(rp.build_plan(spec, options=rp.PlanOptions(lowering="graph")), rp.Weights.random(spec),
                     backend="cupy", mode=mode)
    x, state = random_inputs(spec, 4)
    xs = cp.asarray(x)
    want = ex.run(xs, state)[0].get()
    gc.collect()  # (garbage of earlier tests freed now, not back into the pool in the middle of this one)
    cp.get_default_memory_pool().free_all_blocks()
    hogs, size = [], 1 << 30  # take the device's memory in ever smaller blocks, down to 1 MiB left
    while size >= 1 << 20:
        try:
            hogs.append(cp.cuda.runtime.malloc(size))
        except cp.cuda.runtime.CUDARuntimeError:
            size //= 2
    try:  # the call's 13 MiB of outputs cannot be had
        with pytest.raises(DeviceMemoryError, match="out of device memory during a call .* the executor stays usable"):
            ex.run(xs, state)
    finally:
        for h in hogs:
            cp.cuda.runtime.free(h)
    for _ in range(2):  # usable again, and right
        assert rel_err(ex.run(xs, state)[0].get(), want) == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(cupy_unavailable_reason() is not None, reason=str(cupy_unavailable_reason()))
def test_gpu_exception_inside_a_run_leaves_the_executor_usable():
    ex = rp.Executor(rp.build_plan(SPEC, options=rp.PlanOptions(lowering="graph")), WEIGHTS, backend="cupy",
                     mode="streams")
    x, state = random_inputs(SPEC, 5)
    want = ex.run(x, state)[0].get()
    waits, stream, launch, record = ex.impl.program[4]

    def interrupted():
        ex.impl.program[4] = (waits, stream, launch, record)
        raise KeyboardInterrupt  # steps 0-3 are issued, the rest are not
    ex.impl.program[4] = (waits, stream, interrupted, record)
    with pytest.raises(KeyboardInterrupt):
        ex.run(x, state)
    for _ in range(2):
        assert rel_err(ex.run(x, state)[0].get(), want) == 0.0
    assert ex.impl.unusable is None


@pytest.mark.gpu
@pytest.mark.skipif(cupy_unavailable_reason() is not None, reason=str(cupy_unavailable_reason()))
def test_gpu_cuda_error_makes_the_executor_say_it_is_unusable(monkeypatch):
    import cupy as cp

    ex = rp.Executor(rp.build_plan(SPEC, options=rp.PlanOptions(lowering="graph")), WEIGHTS, backend="cupy")
    x, state = random_inputs(SPEC, 6)

    def failing(*a, **k):  # what a CUDA error reported by a copy looks like (700: an illegal address)
        raise cp.cuda.runtime.CUDARuntimeError(700)
    monkeypatch.setattr(ex.impl, "_copy_out", failing)
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError):
        ex.run(x, state)
    with pytest.raises(RuntimeError, match="this executor is unusable: a CUDA error in an earlier call"):
        ex.run(x, state)
