"""`rnnplan.compile(module, build="background")`: a new shape's executor builds on the worker thread
while its calls run torch's own module (the stand-in), exactly torch's results; the first call after
the build installs it; a build's error reaches the next call at its shape; `clear()` forgets builds
under way; `wait()`, `cache_info().building` and `explain()` say where builds stand. Builds are held
back by an event where a test needs one under way. GPU parts (marked gpu) run the same on CUDA, with
the build's CUDA-graph captures beside the caller's calls."""

import sys
import threading
import time

import pytest
import torch

import rnnplan as rp
from rnnplan.background import SWITCH_INTERVAL_S
from rnnplan.dropin import CompileError
from tests.test_dropin import CELLS, GPU, close, module, torch_call


@pytest.fixture
def gates():
    """Events that builds wait for; all set at the test's end (the worker is the process's one)."""
    made = []
    yield made
    for gate in made:
        gate.set()


def held_back(fast, monkeypatch, gates):
    """An event that the compiled module's builds wait for before they plan anything."""
    gate = threading.Event()
    gates.append(gate)
    build_of = fast._build_of

    def gated(*args, **kwargs):
        build = build_of(*args, **kwargs)
        return lambda: gate.wait(30) and build()
    monkeypatch.setattr(fast, "_build_of", gated)
    return gate


def test_calls_run_torch_while_their_shape_builds_then_rnnplan(monkeypatch, gates):
    m = module("lstm", 2)
    fast = rp.compile(m, build="background")
    gate = held_back(fast, monkeypatch, gates)
    x = torch.randn(6, 2, 3)
    before = sys.getswitchinterval()
    for _ in range(3):  # the stand-in: torch's own results, bit for bit
        out, (h_n, c_n) = fast(x)
        want_out, (want_h, want_c) = torch_call(m, x)
        assert torch.equal(out, want_out) and torch.equal(h_n, want_h) and torch.equal(c_n, want_c)
    info = fast.cache_info()
    assert (info.executors, info.building, info.misses, info.hits) == (0, 1, 1, 0)  # one build, started once
    assert "building in the background" in fast.explain() and "T=6 B=2" in fast.explain()
    assert not fast.wait(timeout=0.05)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)  # the caller gets the GIL back soon
    gate.set()
    assert fast.wait(timeout=30)
    deadline = time.monotonic() + 5  # (the done-callback runs just after the result is set)
    while sys.getswitchinterval() != pytest.approx(before) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sys.getswitchinterval() == pytest.approx(before)
    assert "installed by its next call" in fast.explain()
    assert close(fast(x), torch_call(m, x))  # installed by this call: rnnplan's executor from here on
    info = fast.cache_info()
    assert (info.executors, info.building) == (1, 0)
    assert fast._executors[next(iter(fast._executors))].chosen.name == "recurrence"
    assert close(fast(2 * x), torch_call(m, 2 * x)) and fast.cache_info().hits == 1


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_stand_in_runs_packed_batches_and_states_as_torch(cell, bidirectional, monkeypatch, gates):
    m = module(cell, 2, bidirectional=bidirectional)
    fast = rp.compile(m, build="background", bucket=4)
    held_back(fast, monkeypatch, gates)
    seqs = [torch.randn(n, 3) for n in (5, 2, 7)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    d = 2 if bidirectional else 1
    h0 = torch.randn(2 * d, 3, 5)
    hx = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
    assert close(fast(packed, hx), torch_call(m, packed, hx), 1e-6)  # lengths through the bucket's mask
    x = torch.randn(7, 3, 3)
    assert close(fast(x, hx), torch_call(m, x, hx), 1e-6)  # 7 steps padded to 8 and masked: the same shape
    assert fast.cache_info().building == 1 and fast.cache_info().executors == 0


def test_a_build_error_reaches_the_next_call_at_its_shape(monkeypatch):
    m = module("gru", 1)
    fast = rp.compile(m, build="background")

    def fails(spec):
        raise ValueError(f"no plan for T={spec.seq_len}")
    monkeypatch.setattr(fast, "_host_candidate", fails)
    x = torch.randn(4, 1, 3)
    assert close(fast(x), torch_call(m, x), 0.0)  # the stand-in, while the build fails on the worker
    assert fast.wait(timeout=30)
    with pytest.raises(ValueError, match="no plan for T=4"):
        fast(x)
    monkeypatch.undo()
    assert close(fast(x), torch_call(m, x), 0.0)  # raised once: the shape builds again, on the stand-in meanwhile
    assert fast.wait(timeout=30) and close(fast(x), torch_call(m, x)) and fast.cache_info().executors == 1


def test_clear_forgets_builds_under_way(monkeypatch, gates):
    m = module("rnn_tanh", 1)
    fast = rp.compile(m, build="background")
    gate = held_back(fast, monkeypatch, gates)
    x = torch.randn(3, 2, 3)
    fast(x)
    fast.clear()
    assert fast.cache_info().building == 0
    gate.set()
    fast(x)  # a build of its own again; the first one's result is dropped when it lands
    assert fast.wait(timeout=30)
    fast(x)
    assert fast.cache_info().executors == 1 and fast.cache_info().misses == 2


def test_a_shape_built_in_the_calling_thread_forgets_its_build_under_way(monkeypatch, gates):
    """A call that must build in the calling thread (as one inside a stream capture does) while the
    shape's build runs on the worker: the shape is built once more there, and the worker's is dropped."""
    m = module("gru", 1)
    fast = rp.compile(m, build="background")
    gate = held_back(fast, monkeypatch, gates)
    x = torch.randn(3, 1, 3)
    fast(x)
    assert fast.cache_info().building == 1
    monkeypatch.setattr("rnnplan.dropin._capturing", lambda device: True)
    gate.set()  # (both builds may now run; the worker's result is dropped)
    assert close(fast(x), torch_call(m, x)) and fast.cache_info().executors == 1
    assert fast.cache_info().building == 0 and fast.cache_info().misses == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_random_shapes_clears_and_waits_always_give_torch_results(seed):
    """A server's life in background mode: calls of random lengths, batches and states, some packed,
    with waits and clears at random between them; every call agrees with torch (the stand-in's bit
    for bit, rnnplan's to fp32 rounding) and no build is left running at the end."""
    rng = torch.Generator().manual_seed(seed)
    m = module("lstm", 2, bidirectional=True)
    fast = rp.compile(m, build="background", bucket=3 if seed else None)
    for i in range(40):
        steps, batch = (int(v) for v in torch.randint(1, 6, (2,), generator=rng))
        x = torch.randn(steps, batch, 3, generator=rng)
        h0 = torch.randn(4, batch, 5, generator=rng)
        hx = (h0, torch.randn(4, batch, 5, generator=rng))
        if i % 5 == 4:
            lengths = sorted((int(v) for v in torch.randint(1, steps + 1, (batch,), generator=rng)), reverse=True)
            x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        assert close(fast(x, hx), torch_call(m, x, hx), 1e-5), i
        action = int(torch.randint(0, 10, (1,), generator=rng))
        if action == 0:
            fast.clear()
        elif action < 3:
            assert fast.wait(timeout=30)
    assert fast.wait(timeout=30)
    assert all(done for _, _, done in fast._builds.under_way())  # none stuck: each waits for its next call
    assert fast.cache_info().executors + fast.cache_info().building >= 1


def test_blocking_is_the_default_and_build_is_checked():
    m = module("lstm", 1)
    fast = rp.compile(m)
    fast(torch.randn(2, 1, 3))
    assert fast.cache_info().executors == 1 and fast.cache_info().building == 0
    with pytest.raises(CompileError, match="build must be one of"):
        rp.compile(m, build="later")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("autotune", [False, True])
def test_gpu_calls_run_torch_while_their_shape_builds_then_rnnplan(autotune):
    """The graph lowering's build (its plan, buffers and CUDA-graph capture) on the worker, beside the
    caller's calls on the stand-in, each followed by a device-wide synchronization (which a capture
    on the worker would fail); then installed (timed first, with autotune) and right."""
    torch.manual_seed(0)
    m = torch.nn.LSTM(64, 128, num_layers=3).cuda().eval()
    fast = rp.compile(m, build="background", lowering="auto" if autotune else "graph", autotune=autotune)
    x = torch.randn(60, 16, 64, device="cuda")
    calls = 0
    while True:
        calls += 1
        got = fast(x)
        torch.cuda.synchronize()
        if fast.cache_info().building == 0:
            break
        assert close(got, torch_call(m, x), 1e-6)  # the stand-in is torch
        assert calls < 100000
    assert fast.cache_info().executors == 1
    name = next(iter(fast._executors.values())).chosen.name
    assert name in ("persistent", "graph", "cudnn") and (autotune or name == "graph")
    assert ("autotuned" in fast.explain()) == autotune
    for _ in range(2):
        assert close(fast(x), torch_call(m, x), 2e-3)
    torch.cuda.synchronize()
