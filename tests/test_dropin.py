"""`rnnplan.compile(module)`: called exactly like the torch module, against torch, for every cell,
direction, layout and length pattern, any (T, B) per call, packed sequences in and out, streaming,
bucketing, the nn.Module behaviour (buffers, state_dict, to), refusals at compile, and torch.compile
with no graph break. GPU parts (marked gpu) run the same on CUDA tensors."""

import copy

import numpy as np
import pytest
import torch

import rnnplan as rp
from rnnplan.backends import cupy_unavailable_reason
from tests.helpers import TORCH_CLASSES

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
GPU = cupy_unavailable_reason() is None and torch.cuda.is_available()


def module(cell, layers=2, bidirectional=False, batch_first=False, bias=True, seed=0):
    torch.manual_seed(seed)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    return TORCH_CLASSES[cell](3, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                               bias=bias, **kw).eval()


def close(a, b, tol=1e-5):
    if isinstance(a, torch.nn.utils.rnn.PackedSequence):  # (a NamedTuple: before tuples)
        same_order = (a.sorted_indices is None and b.sorted_indices is None) or torch.equal(a.sorted_indices,
                                                                                          b.sorted_indices)
        return close(a.data, b.data, tol) and torch.equal(a.batch_sizes, b.batch_sizes) and same_order
    if isinstance(a, tuple):
        return all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and \
        float((a.float() - b.float()).norm() / max(float(b.float().norm()), 1e-30)) <= tol


def torch_call(m, *args):
    with torch.no_grad():
        return m(*args)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, bidirectional, batch_first, bias", [(1, False, False, True), (2, True, True, True),
                                                                      (3, True, False, False)])
def test_called_like_the_module_for_any_shape(cell, layers, bidirectional, batch_first, bias):
    m = module(cell, layers, bidirectional, batch_first, bias)
    fast = rp.compile(m)
    for steps, batch in ((4, 2), (9, 1), (4, 2), (1, 3)):
        x = torch.randn((batch, steps, 3) if batch_first else (steps, batch, 3))
        assert close(fast(x), torch_call(m, x))
        d = 2 if bidirectional else 1
        h0 = torch.randn(layers * d, batch, 5)
        hx = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
        assert close(fast(x, hx), torch_call(m, x, hx))
    assert fast.cache_info().executors == 3 and fast.cache_info().hits > 0  # one plan a shape, reused


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequences_in_and_out(cell, bidirectional, enforce_sorted):
    m = module(cell, 2, bidirectional)
    fast = rp.compile(m)
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(6, 4, 3), lengths, enforce_sorted=enforce_sorted)
    got, want = fast(packed), torch_call(m, packed)
    assert isinstance(got[0], torch.nn.utils.rnn.PackedSequence) and close(got, want)
    h0 = torch.randn(2 * (2 if bidirectional else 1), 4, 5)
    hx = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
    assert close(fast(packed, hx), torch_call(m, packed, hx))


@pytest.mark.parametrize("chunks", [[1] * 7, [3, 4], [2, 1, 4]])
def test_streaming_chunks_continue_the_sequence(chunks):
    m = module("lstm", 2, batch_first=True)
    fast = rp.compile(m)
    x = torch.randn(2, sum(chunks), 3)
    whole, (h, c) = torch_call(m, x)
    state, outs, t = None, [], 0
    for n in chunks:
        out, state = fast(x[:, t:t + n], state)
        outs.append(out)
        t += n
    assert close(torch.cat(outs, dim=1), whole) and close(state, (h, c))


def test_buckets_pad_and_mask_so_lengths_share_plans():
    m = module("gru", 2, bidirectional=True)
    fast = rp.compile(m, bucket=8)
    for steps in (3, 5, 8, 7):
        x = torch.randn(steps, 2, 3)
        assert close(fast(x), torch_call(m, x))
    info = fast.cache_info()
    assert info.executors == 2 and info.hits == 2  # T 3, 5, 7 share the masked T-8 plan; T 8 runs unmasked
    assert "T=8 B=2 masked" in fast.explain() and "T=8 B=2 on cpu" in fast.explain()
    assert "the recurrence plan (one recurrent step) (CPU tensors run the NumPy backend)" in fast.explain()  # nothing timed on a CPU


def test_the_executor_cache_has_a_byte_budget():
    m = module("lstm", 1)
    small = rp.compile(m, cache_bytes=1)  # holds one executor at a time
    for steps in (2, 3, 4):
        small(torch.randn(steps, 1, 3))
    assert small.cache_info().executors == 1 and small.cache_info().misses == 3
    small.clear()
    assert small.cache_info().executors == 0


def test_executors_of_new_shapes_share_the_weights_and_the_host_workspace():
    """A new shape's executor reuses the weights laid out for the first and, on the CPU, one workspace
    for its activations: results stay exact for every shape, in any order, from several threads, and
    new weights (load_state_dict) replace the shared ones."""
    import threading

    m = module("lstm", 2, bidirectional=True)
    fast = rp.compile(m)
    shapes = [(6, 2), (9, 3), (2, 1), (9, 3), (4, 2)]
    inputs = [torch.randn(steps, batch, 3) for steps, batch in shapes]
    for x in inputs:
        assert close(fast(x), torch_call(m, x))
    executors = [c.chosen.executor.impl for c in fast._executors.values()]
    assert len(executors) == 4
    params = [{b.id: ex.buffers[b.id] for b in ex.plan.buffers if b.role == "param"} for ex in executors]
    first = {b.source: params[0][b.id] for b in executors[0].plan.buffers if b.role == "param"}
    for ex, held in zip(executors, params):  # the same arrays, not copies
        assert all(held[b.id] is first[b.source] for b in ex.plan.buffers if b.role == "param")
    workspaces = {id(ex.buffers[b.id].base) for ex in executors for b in ex.plan.buffers if b.role != "param"}
    assert len(workspaces) <= 2  # one, replaced at most once as shapes grew (at twice the size asked for)
    assert fast.cache_info().bytes == fast._shared.nbytes  # CPU executors hold nothing apart

    errors = []

    def calls(x, want):
        for _ in range(5):
            if not close(fast(x), want):
                errors.append(tuple(x.shape))
    wants = [torch_call(m, x) for x in inputs]
    threads = [threading.Thread(target=calls, args=(x, want)) for x, want in zip(inputs, wants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    other = module("lstm", 2, bidirectional=True, seed=7)
    fast.load_state_dict(other.state_dict())
    assert fast._shared.params == {}
    assert all(close(fast(x), torch_call(other, x)) for x in inputs[:2])


def test_it_is_a_module_whose_buffers_are_the_parameters():
    m = module("lstm", 2, bidirectional=True)
    fast = rp.compile(m)
    assert set(dict(fast.named_buffers())) == set(m.state_dict()) and not list(fast.parameters())
    x = torch.randn(4, 2, 3)
    fast(x)
    other = rp.compile(module("lstm", 2, bidirectional=True, seed=5))
    other.load_state_dict(fast.state_dict())  # the round trip; cached executors of the old weights go
    assert close(other(x), torch_call(m, x))
    half = rp.compile(m).to(torch.float16)
    got = half(x.half())
    assert got[0].dtype == torch.float16 and close(got, torch_call(m.half(), x.half()), 5e-3)
    m.float()


def test_modules_it_cannot_run_are_refused_at_compile_naming_the_attribute():
    with pytest.raises(rp.CompileError, match="training=True with dropout=0.3: .* call module.eval"):
        rp.compile(torch.nn.LSTM(3, 5, 2, dropout=0.3))
    with pytest.raises(rp.CompileError, match="parameters of dtype torch.float64: rnnplan runs torch.float32, "
                                              "torch.float16, torch.bfloat16"):
        rp.compile(torch.nn.GRU(3, 5).eval().double())
    with pytest.raises(rp.CompileError, match="takes a torch.nn.LSTM, GRU or RNN, got Linear"):
        rp.compile(torch.nn.Linear(3, 5))
    with pytest.raises(rp.CompileError, match="bucket must be a number of steps >= 1"):
        rp.compile(module("gru"), bucket=0)
    with pytest.raises(rp.CompileError, match="autotune must be True or False, got 'no'"):
        rp.compile(module("gru"), autotune="no")


def test_inputs_and_states_of_the_wrong_shape_are_named():
    """A call by pointers reads exactly the elements the shapes promise: they are checked first."""
    fast = rp.compile(module("lstm", 2))
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"input must be 3-D \(T, B, 3\), got shape \(4, 2, 4\)"):
        fast(torch.randn(4, 2, 4))
    h = torch.zeros(2, 2, 5)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 5\) .*, got \(2, 3, 5\)"):
        fast(x, (torch.zeros(2, 3, 5), h))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 2, 5\) .*, got \(1, 2, 5\)"):
        fast(x, (h, torch.zeros(1, 2, 5)))
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 2, 5\)"):
        rp.compile(module("gru", 2))(x, torch.zeros(2, 2, 4))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(4, 2, 2), [4, 2])
    with pytest.raises(ValueError, match=r"a PackedSequence's data must be \(rows, 3\), got shape \(6, 2\)"):
        fast(packed)


def test_inputs_of_another_dtype_or_device_are_named_not_copied():
    fast = rp.compile(module("gru"))
    with pytest.raises(ValueError, match="input has dtype torch.float64, the compiled module runs torch.float32"):
        fast(torch.randn(3, 2, 3, dtype=torch.float64))
    assert rp.compile(module("gru"), cast=True)(torch.randn(3, 2, 3, dtype=torch.float64))[0].dtype == torch.float32
    with pytest.raises(ValueError, match=r"input must be 3-D \(T, B, 3\)"):
        fast(torch.randn(3, 3))
    with pytest.raises(TypeError, match="hx must be a torch.Tensor, got ndarray"):
        fast(torch.randn(3, 2, 3), np.zeros((2, 2, 5), np.float32))
    with pytest.raises(TypeError, match=r"an LSTM's hx is a tuple \(h_0, c_0\)"):
        rp.compile(module("lstm"))(torch.randn(3, 2, 3), torch.zeros(2, 2, 5))


def test_it_runs_under_torch_compile_without_a_graph_break():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 3)
            self.rnn = rp.compile(module("lstm", 2, bidirectional=True))
            self.head = torch.nn.Linear(10, 2)

        def forward(self, x):
            out, (h, c) = self.rnn(self.proj(x))
            return self.head(out), h

    model = Model().eval()
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        assert close(torch.compile(model)(x), model(x))


def test_a_spec_from_a_module():
    spec = rp.RNNSpec.from_torch(module("rnn_relu", 3, bidirectional=True, batch_first=True), seq_len=12, batch=4)
    assert (spec.cell, spec.num_layers, spec.hidden_size, spec.input_size, spec.bidirectional, spec.batch_first,
            spec.seq_len, spec.batch, spec.dtype) == ("rnn_relu", 3, 5, 3, True, True, 12, 4, "float32")
    with pytest.raises(ValueError, match="takes a torch.nn.LSTM, GRU or RNN, got Linear"):
        rp.RNNSpec.from_torch(torch.nn.Linear(2, 2), 3, 1)


@pytest.mark.parametrize("cell", CELLS)
def test_a_module_from_a_spec_and_the_twin_autotuning_times(cell):
    """RNNSpec.to_torch is from_torch's inverse; CompiledRNN.torch_module (what the cuDNN candidate
    runs) computes what the compiled module's own torch module does."""
    m = module(cell, 2, bidirectional=True, batch_first=True)
    spec = rp.RNNSpec.from_torch(m, seq_len=4, batch=2)
    twin = spec.to_torch(dtype=torch.float16)
    assert type(twin) is type(m) and rp.RNNSpec.from_torch(twin, seq_len=4, batch=2) == \
        spec.model_copy(update={"dtype": "float16"}) and not twin.training
    fast = rp.compile(m)
    x = torch.randn(2, 4, 3)
    assert close(torch_call(fast.torch_module(spec, torch.device("cpu")), x), torch_call(m, x), 0.0)


def test_a_compiled_module_deep_copies_and_pickles_with_its_caches_empty():
    """copy.deepcopy, pickle and torch.save carry the options and buffers; the copy's executor cache
    starts empty, it has its own handle for the custom op, and loading a state dict still clears it."""
    import io
    import pickle

    from rnnplan.dropin import _LIVE

    fast = rp.compile(module("lstm", 2), bucket=4)
    x = torch.randn(5, 2, 3)
    want = torch_call(fast, x)
    saved = io.BytesIO()
    torch.save(fast, saved)
    saved.seek(0)
    for copied in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast)), torch.load(saved, weights_only=False)):
        assert copied.cache_info().executors == 0 and copied.bucket == 4 and copied.handle != fast.handle
        assert _LIVE[copied.handle] is copied
        assert all(torch.equal(copied.state_dict()[k], v) for k, v in fast.state_dict().items())
        assert close(torch_call(copied, x), want, 0.0)
        copied.load_state_dict(fast.state_dict())
        assert copied.cache_info().executors == 0
    assert fast.cache_info().executors == 1  # the original keeps its own


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_tensors_stay_on_the_gpu(cell, dtype):
    torch.backends.cudnn.allow_tf32 = False  # strict fp32 on both sides: compare like with like
    m = module(cell, 2, bidirectional=True).cuda().to(dtype)
    fast = rp.compile(m, autotune=False)  # rnnplan's own kernels, never torch's (autotune: below)
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    for steps, batch in ((5, 3), (2, 8), (5, 3)):
        x = torch.randn(steps, batch, 3, device="cuda", dtype=dtype)
        got = fast(x)
        assert got[0].device.type == "cuda" and close(got, torch_call(m, x), tol)
    # the second shape's executor binds the device weights the first uploaded
    first, second = (c.chosen.executor.impl for c in fast._executors.values())
    shared = {(b.source, b.transform): first.buffers[b.id] for b in first.plan.buffers if b.role == "param"}
    both = [b for b in second.plan.buffers if b.role == "param" and (b.source, b.transform) in shared]
    assert both and all(second.buffers[b.id] is shared[b.source, b.transform] for b in both)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(6, 4, 3, device="cuda", dtype=dtype), [4, 6, 1, 4],
                                                     enforce_sorted=False)
    assert close(fast(packed), torch_call(m, packed), tol)
    uni = module(cell, 2).cuda().to(dtype)  # streaming needs one direction: the reverse one reads the future
    stream = rp.compile(uni, autotune=False)
    state, outs = None, []
    x = torch.randn(7, 2, 3, device="cuda", dtype=dtype)
    for t in range(7):  # the state stays a CUDA tensor
        out, state = stream(x[t:t + 1], state)
        outs.append(out)
    assert (state[0] if isinstance(state, tuple) else state).device.type == "cuda"
    assert close((torch.cat(outs), state), torch_call(uni, x), tol)
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_autotune_keeps_the_fastest_candidate_and_says_so(dtype):
    from rnnplan.dropin import PARAMETER_DTYPES

    torch.backends.cudnn.allow_tf32 = False
    m = module("lstm", 2).cuda().to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    fast = rp.compile(m)
    x = torch.randn(6, 4, 3, device="cuda", dtype=dtype)
    assert close(fast(x), torch_call(m, x), tol)
    (choice,) = fast._executors.values()
    assert set(choice.timings) == {"persistent", "graph", "cudnn"} and choice.how.startswith("autotuned")
    assert choice.timings[choice.chosen.name] == min(choice.timings.values())
    text = fast.explain()
    assert "autotuned, fastest of 3" in text and all(f"{k} " in text for k in choice.timings)
    for _ in range(2):  # the kept candidate, whichever it is, again and with a state
        h = torch.randn(2, 4, 5, device="cuda", dtype=dtype)
        assert close(fast(x, (h, h)), torch_call(m, x, (h, h)), tol)
    assert fast.cache_info().hits == 2 and fast.cache_info().misses == 1
    for steps, how in ((9, "as at T=6"), (12, "as at T=6"), (13, "autotuned")):  # within 2x: the choice, untimed
        longer = torch.randn(steps, 4, 3, device="cuda", dtype=dtype)
        assert close(fast(longer), torch_call(m, longer), tol)
        assert f"T={steps} B=4 on cuda:0 ({PARAMETER_DTYPES[dtype]}, fp32): " in fast.explain()
        latest = list(fast._executors.values())[-1]
        assert latest.how.startswith(how) and (latest.chosen.name == choice.chosen.name or how == "autotuned")
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [6, 2, 5, 1], enforce_sorted=False)
    assert close(fast(packed), torch_call(m, packed), tol)  # lengths change per call: rnnplan's lowerings only
    assert "cudnn" not in list(fast._executors.values())[-1].timings
    off = rp.compile(m, autotune=False)
    off(x)
    assert "autotune off" in off.explain() and "cudnn" not in off.explain()
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("autotune", [False, True])
@pytest.mark.parametrize("lowering", ["persistent", "graph"])
def test_gpu_a_compiled_module_is_captured_in_a_cuda_graph(autotune, lowering):
    """torch.cuda.graph around a call (after a warm-up call at that shape, as torch asks): replays
    compute the new inputs' results, whatever candidate runs (issue 17, item 5)."""
    torch.backends.cudnn.allow_tf32 = False
    m = module("lstm", 2).cuda()
    fast = rp.compile(m, autotune=autotune, lowering=lowering)
    x, h = torch.randn(5, 4, 3, device="cuda"), torch.randn(2, 4, 5, device="cuda")
    fast(x, (h, h))  # the shape's set-up, outside the capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fast(x, (h, h))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, (h_n, c_n) = fast(x, (h, h))
    for seed in range(2):
        torch.manual_seed(seed)
        x.copy_(torch.randn_like(x))
        h.copy_(torch.randn_like(h))
        graph.replay()
        assert close((out, (h_n, c_n)), torch_call(m, x, (h, h)))
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lowering", ["persistent", "graph"])
@pytest.mark.parametrize("driver", [True, False])
def test_gpu_calls_by_pointers_give_and_omit_states(dtype, lowering, driver, monkeypatch):
    """The copy kernel's two paths (odd sizes: 2-byte words; 16-byte ones for aligned runs), strided
    h_n, a state given then omitted (zeros, not the last one), and Executor.run on the same executor
    in between (its own note of zeroed states); the launches by the CUDA driver, and by CuPy where
    the driver path is not there."""
    from rnnplan.backends import driver_launch

    if not driver:
        monkeypatch.setattr(driver_launch, "why_not", lambda: "turned off for the test")
    torch.backends.cudnn.allow_tf32 = False
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    for hidden in (5, 64):
        torch.manual_seed(hidden)
        m = torch.nn.LSTM(3 if hidden == 5 else 64, hidden, num_layers=2, bidirectional=True).cuda().eval().to(dtype)
        fast = rp.compile(m, autotune=False, lowering=lowering)
        x = torch.randn(4, 3, m.input_size, device="cuda", dtype=dtype)
        h = torch.randn(4, 3, hidden, device="cuda", dtype=dtype)
        for state in ((h, h), None, (h, h), None):
            assert close(fast(x, state), torch_call(m, x, *(() if state is None else (state,))), tol)
            ex = fast.executor(4, 3, False, x.device)
            out, _ = ex.run(x)  # the slow path, no state: zeros
            assert close(torch.from_dlpack(out), torch_call(m, x)[0], tol)
        bucketed = rp.compile(m, autotune=False, lowering=lowering, bucket=8)  # T 4 runs the masked T-8 plan
        assert close(bucketed(x, (h, h)), torch_call(m, x, (h, h)), tol) and "T=8 B=3 masked" in bucketed.explain()
        # a packed batch: its mask made on the GPU (torch keeps the sorting there), padded to the bucket
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, [2, 4, 1], enforce_sorted=False)
        assert packed.sorted_indices.is_cuda
        for compiled in (fast, bucketed):
            assert close(compiled(packed, (h, h)), torch_call(m, packed, (h, h)), tol)
        # the padded calls above went by the CUDA driver's launches (after the first, which CuPy's took;
        # the persistent plan's few nodes in one graph with both copies, GraphWithKernels, from the first)
        fast(x, (h, h))
        run = fast._executors[fast._key(4, 3, False, x.device)].chosen.run
        call = run.call
        plan_launch = call.one_launch if lowering == "persistent" and driver else call._graph_exec
        assert (lowering == "persistent" and driver) == (call.one_launch is not None)  # hundreds of nodes: not copied
        assert (run.ahead is None) == (call.one_launch is None)
        taken = [plan_launch, call.copy_in.driver, call.copy_out.driver]
        packing = bucketed._executors[bucketed._key(8, 3, True, x.device)].chosen.run.call.packing
        taken += [k.driver for k in packing]
        assert all(t is not None for t in taken) if driver else all(t is None for t in taken), taken
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("candidate", ["persistent", "cudnn"])
def test_gpu_one_launch_calls_return_outputs_of_their_own_on_any_stream(cell, candidate):
    """A call by one graph launch (copy-in, plan, copy-out: `PointerCall.whole`, the cuDNN
    candidate's `one_launch`) returns the outputs made after the previous call's launch: every
    call's own (earlier results stay as they were), states given and left out in turn, and a call
    on another stream gets outputs made on that stream (not the set made on the first)."""
    from rnnplan.autotune import CudnnGraph

    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(2)
    kind = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    m = kind(16, 32, num_layers=2).cuda().eval()
    x = torch.randn(6, 4, 16, device="cuda")
    h = torch.randn(2, 4, 32, device="cuda")
    if candidate == "cudnn":
        run = CudnnGraph(copy.deepcopy(m), x, cell == "lstm", 2, 32)
        assert run.one_launch is not None
    else:
        fast = rp.compile(m, autotune=False, lowering="persistent")
        fast(x)
        run = fast._executors[fast._key(6, 4, False, x.device)].chosen.run
        assert run.call.one_launch is not None and run.ahead is not None
    side = torch.cuda.Stream()
    results, wants = [], []
    with torch.no_grad():
        for i in range(6):
            xi, state = (i + 1) * x / 3, (h, -h) if i % 2 else None
            args = (xi, *(state if cell == "lstm" else (h, None))) if state else (xi, None, None)
            if i == 4:  # on another stream, ordered after this one's work and back
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    got = run(*args, None)
                torch.cuda.current_stream().wait_stream(side)
            else:
                got = run(*args, None)
            results.append((got, [t.clone() for t in got]))
            wants.append(m(xi, None if state is None else (state if cell == "lstm" else h)))
    pointers = {t.data_ptr() for got, _ in results for t in got[:2]}
    assert len(pointers) == 2 * len(results)  # no output set handed out twice
    for (got, kept), want in zip(results, wants):
        assert all(torch.equal(a, b) for a, b in zip(got, kept))
        out, h_n, c_n = got
        assert close((out, (h_n, c_n) if cell == "lstm" else h_n), want, 1e-5)
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("stateless", [True, False])
def test_gpu_the_cudnn_candidate_copies_by_one_launch_each_way(cell, stateless):
    """torch's own call in a CUDA graph (autotune's cuDNN candidate), its copies in and out by
    copies.cu: states given and left out (zeros, not the last call's; or the twin's graph captured
    without a state), odd sizes (2-byte words), and outputs of their own (a later call does not
    overwrite them)."""
    from rnnplan.autotune import CudnnGraph

    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(1)
    kind = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    m = kind(3, 5, num_layers=2).cuda().eval()
    x = torch.randn(7, 3, 3, device="cuda")
    graph = CudnnGraph(copy.deepcopy(m), x, cell == "lstm", 2, 5, stateless=stateless)
    assert graph.copies is not None and (graph.twin is not None) == stateless
    assert not stateless or (graph.twin.copies is not None and graph.twin.graph is not graph.graph)
    h = torch.randn(2, 3, 5, device="cuda")
    state = (h, -h) if cell == "lstm" else h
    with torch.no_grad():
        first = graph(x, *((h, -h) if cell == "lstm" else (h, None)), None)
        kept = [t.clone() for t in first]
        second = graph(2 * x, None, None, None)
        want_first, want_second = m(x, state), m(2 * x)
    for got, want in ((first, want_first), (second, want_second)):
        out, h_n, c_n = got
        assert close((out, (h_n, c_n) if cell == "lstm" else h_n), want, 1e-5)
    assert all(torch.equal(a, b) for a, b in zip(first, kept))
    torch.backends.cudnn.allow_tf32 = True


def test_a_new_length_near_an_autotuned_one_builds_its_choice_alone():
    """`_nearest_tuned` and `_built_alone`, what a build at a new length does first (the GPU tests run
    it for real): the nearest autotuned length of the same batch, masking, device and dtype within
    RETUNE_RATIO, never a reused choice, nor other batches; that candidate alone built."""
    from rnnplan.autotune import Candidate, Choice
    from rnnplan.candidates import RETUNE_RATIO, _built_alone

    fast = rp.compile(module("lstm", 1))
    gpu = torch.device("cuda", 0)
    tuned = lambda name: Choice(Candidate(name, None, 0, ""), "autotuned, fastest of 3", {name: 1.0})  # noqa: E731
    fast._executors[(100, 4, False, gpu, "float32", "tf32")] = tuned("cudnn")
    fast._executors[(30, 4, False, gpu, "float32", "tf32")] = tuned("persistent")
    fast._executors[(64, 8, False, gpu, "float32", "tf32")] = tuned("graph")
    fast._executors[(50, 4, False, gpu, "float32", "tf32")] = Choice(Candidate("graph", None, 0, ""), "as at T=30, where it was autotuned")
    built = []
    factories = {name: (lambda name=name: built.append(name) or Candidate(name, None, 0, "")) for name in
                 ("persistent", "graph", "cudnn")}
    key = lambda steps, batch=4, varlen=False: (steps, batch, varlen, gpu, "float32", "tf32")  # noqa: E731
    near = fast._nearest_tuned
    assert near(key(120)) == ("cudnn", 100)
    [(name, chosen)], _, how = _built_alone(factories, near(key(120)))
    assert how == "as at T=100, where it was autotuned" and chosen.name == name == "cudnn" and built == ["cudnn"]
    assert near(key(45)) == ("persistent", 30)  # 30 is nearer than 100; 50 was not timed
    assert near(key(100 * RETUNE_RATIO + 1)) is None  # too far from every timed length
    assert near(key(14)) is None and near(key(100, batch=8)) == ("graph", 64)
    assert near(key(100, varlen=True)) is None
    failing = dict(factories, cudnn=lambda: (_ for _ in ()).throw(RuntimeError("capture failed")))
    assert _built_alone(failing, near(key(120))) is None  # then every candidate is built and timed


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_a_module_made_from_a_state_dict_is_the_module(cell):
    """`RNNSpec.to_torch(state_dict=...)` (what the cuDNN candidate runs): made on the meta device and
    filled, no weights drawn; the same outputs as the module whose state it holds, in its dtype."""
    m = module(cell, 2, bidirectional=True)
    spec = rp.RNNSpec.from_torch(m, seq_len=5, batch=3)
    again = spec.to_torch(state_dict=m.state_dict())
    assert type(again) is type(m) and not again.training
    x = torch.randn(5, 3, m.input_size)
    assert close(torch_call(again, x), torch_call(m, x), 0.0)
    wide = spec.to_torch(dtype=torch.float64, state_dict=m.state_dict())
    assert wide.weight_hh_l0.dtype == torch.float64 and torch.equal(wide.weight_hh_l0.float(), m.weight_hh_l0)


def test_the_driver_path_says_why_it_is_not_there():
    from rnnplan.backends import driver_launch

    reason = driver_launch.why_not()
    if reason is None:  # a machine with a GPU driver: the GPU tests take this path
        assert driver_launch._load() is not None
    else:
        assert "libcuda" in reason
        with pytest.raises(RuntimeError, match="libcuda"):
            driver_launch.FixedLaunch(1, 32, [0, 0], (1,))


def test_the_core_imports_without_torch():
    from tests.helpers import output_without

    code = ("import rnnplan as rp\n"
            "spec = rp.RNNSpec(cell='gru', input_size=3, hidden_size=4, num_layers=1, seq_len=2, batch=1)\n"
            "plan = rp.build_plan(spec)\n"
            "try:\n    rp.compile\nexcept ModuleNotFoundError as e:\n    print(e)\n")
    assert "rnnplan.compile needs PyTorch: pip install 'rnnplan[torch]'" in output_without("torch", code)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cell, input_size, bucket", [("lstm", 3, None), ("gru", 64, None), ("lstm", 64, 8)])
def test_gpu_packed_repeat_calls_go_by_two_launches(dtype, cell, input_size, bucket, monkeypatch):
    """A packed call at a cached shape: packed.cu's gathers, mask and padding (2-byte words at input
    size 3, 16-byte ones at 64; a bucket's padding past the longest), against torch for new lengths,
    sorted and not, with a state and without; the host-side packing is not used."""
    import rnnplan.dropin

    torch.backends.cudnn.allow_tf32 = False
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    torch.manual_seed(7)
    m = TORCH_CLASSES[cell](input_size, 32, num_layers=2, bidirectional=True).cuda().eval().to(dtype)
    fast = rp.compile(m, autotune=False, bucket=bucket)
    x = torch.randn(6, 4, input_size, device="cuda", dtype=dtype)
    fast(torch.nn.utils.rnn.pack_padded_sequence(x, [6, 3, 5, 1], enforce_sorted=False))  # caches the shape
    hits = fast.cache_info().hits
    monkeypatch.setattr(rnnplan.dropin, "packed_layout", None)  # the first-call path may not run again
    h = torch.randn(4, 4, 32, device="cuda", dtype=dtype)
    state = (h, torch.randn_like(h)) if cell == "lstm" else h
    for lengths, sort, hx in (([6, 2, 2, 4], False, None), ([6, 5, 3, 1], True, state), ([2, 6, 6, 1], False, state)):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=sort)
        got = fast(packed, hx)
        want = torch_call(m, packed, *(() if hx is None else (hx,)))
        assert close(got, want, tol)
    assert fast.cache_info().hits == hits + 3 and fast.cache_info().executors == 1
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
def test_gpu_packed_repeat_calls_in_bf16_with_a_projection():
    """packed.cu's mask in bf16 (its bits of 1.0) and a projected output's width, against float64 torch."""
    torch.manual_seed(8)
    m = torch.nn.LSTM(64, 48, num_layers=2, proj_size=16, bidirectional=True).cuda().eval().to(torch.bfloat16)
    fast = rp.compile(m, autotune=False)
    x = torch.randn(5, 3, 64, device="cuda").to(torch.bfloat16)
    fast(torch.nn.utils.rnn.pack_padded_sequence(x, [5, 1, 3], enforce_sorted=False))
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [2, 5, 4], enforce_sorted=False)
    got = fast(packed)
    with torch.no_grad():
        want = m.double()(packed.to(torch.float64))
    m.to(torch.bfloat16)
    for g, w in ((got[0].data, want[0].data), (got[1][0], want[1][0]), (got[1][1], want[1][1])):
        assert g.dtype == torch.bfloat16 and g.shape == w.shape
        assert float((g.double() - w).norm() / w.norm()) <= 1e-2
    assert fast.cache_info().hits == 1
