"""Variable lengths within a batch, with torch's exact semantics: outputs zero past each length, h_n and
c_n at each sequence's last step, the reverse direction starting at each sequence's own end. The
masked cell (`Cell.masked`) against torch's packed sequences, for every cell, direction, layout and
length pattern, every pass subset; and the checks of `lengths`."""

import itertools

import numpy as np
import pytest
import torch

import rnnplan as rp
from rnnplan.ir import build, verify
from rnnplan.lowering import build_graph, build_plan
from rnnplan.passes import apply_passes
from tests.helpers import rel_err, torch_module

H200 = rp.DeviceShape(name="NVIDIA H200", sms=132, smem_per_block=232_448)
PERSISTENT = rp.PlanOptions(lowering="persistent", device=H200)
PATTERNS = {"mixed": [5, 2, 4, 1], "all full": [5, 5, 5, 5], "all one": [1, 1, 1, 1], "descending": [5, 4, 2, 1]}


def packed_torch(module, x, lengths, state, batch_first):
    """torch on a PackedSequence of x's sequences, padded back to the full length."""
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths, batch_first=batch_first,
                                                         enforce_sorted=False)
        args = () if state is None else (tuple(torch.from_numpy(s) for s in state) if isinstance(state, tuple)
                                         else torch.from_numpy(state),)
        out, st = module(packed, *args)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=5)
    st = tuple(s.numpy() for s in st) if isinstance(st, tuple) else st.numpy()
    return out.numpy(), st


def inputs(spec, seed):
    rng = np.random.default_rng(seed)
    shape = (spec.batch, spec.seq_len, spec.input_size) if spec.batch_first else (spec.seq_len, spec.batch,
                                                                                  spec.input_size)
    x = rng.standard_normal(shape).astype(np.float32)
    st = (spec.num_layers * spec.directions, spec.batch, spec.hidden_size)
    h0 = rng.standard_normal(st).astype(np.float32)
    return x, ((h0, rng.standard_normal(st).astype(np.float32)) if spec.cell == "lstm" else h0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("layers, bidir, batch_first", [(1, False, False), (2, True, False), (3, True, True)])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_matches_torch_packed_sequences(cell, layers, bidir, batch_first, pattern):
    spec = rp.RNNSpec(cell=cell, input_size=3, hidden_size=6, num_layers=layers, seq_len=5, batch=4,
                      bidirectional=bidir, batch_first=batch_first, variable_lengths=True)
    module = torch_module(spec, 7)
    lengths = PATTERNS[pattern]
    x, state = inputs(spec, 8)
    want = packed_torch(module, x, lengths, state, batch_first)
    plans = [build_plan(spec, passes=passes) for passes in (None, ())] + [build_plan(spec, options=PERSISTENT)]
    assert plans[-1].lowering == "persistent"
    for plan in plans:  # the graph lowering (masked cells), the naive plan, the persistent kernel
        ex = rp.Executor(plan, rp.Weights.from_torch(module, spec), backend="numpy")
        out, st = ex.run(x, state, lengths=lengths)
        assert rel_err(out, want[0]) < 1e-5 and np.isfinite(out).all()
        states = st if isinstance(st, tuple) else (st,)
        for got, w in zip(states, want[1] if isinstance(want[1], tuple) else (want[1],), strict=True):
            assert rel_err(got, w) < 1e-5
        t = np.arange(5)[:, None] if not batch_first else np.arange(5)[None, :]
        past = (t >= np.asarray(lengths)[None, :]) if not batch_first else (t >= np.asarray(lengths)[:, None])
        assert (out[past] == 0).all()  # exactly zero past each length


def test_every_pass_subset_and_the_three_step_repeat():
    spec = rp.RNNSpec(cell="lstm", input_size=3, hidden_size=4, num_layers=2, seq_len=7, batch=3, bidirectional=True,
                      variable_lengths=True)
    module = torch_module(spec, 1)
    lengths = [7, 3, 5]
    x = np.random.default_rng(2).standard_normal((7, 3, 3)).astype(np.float32)
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths, enforce_sorted=False)
        out, (h, c) = module(packed)
        want = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=7)[0].numpy()
    weights = rp.Weights.from_torch(module, spec)
    subsets = [s for k in range(len(rp.PASSES) + 1) for s in itertools.combinations(rp.PASSES, k)]
    for passes in subsets:
        options = rp.PlanOptions(passes=passes, input_chunk=2)
        graph = build_graph(spec, options)  # the repeat of three planned steps ...
        assert list(graph.nodes) == list(apply_passes(build(spec), options, check=False).nodes), passes
        got, (gh, gc) = rp.Executor(build_plan(spec, options=options), weights, backend="numpy").run(x, lengths=lengths)
        assert rel_err(got, want) < 1e-5 and rel_err(gh, h.numpy()) < 1e-5 and rel_err(gc, c.numpy()) < 1e-5, passes


def test_the_masked_graph_keeps_state_and_output_apart():
    spec = rp.RNNSpec(cell="gru", input_size=3, hidden_size=2, num_layers=1, seq_len=3, batch=2, variable_lengths=True)
    g = verify(build(spec))
    keep = g.nodes["L0.fwd.t1.h_keep"]
    assert (keep.op, keep.inputs) == ("select", ("L0.fwd.t1.mask", "L0.fwd.t1.h", "L0.fwd.t0.h_keep"))
    assert g.values["L0.fwd.t1.h_keep"].region is None  # the state: a temporary the next step reads
    assert g.values["L0.fwd.t1.y"].region.storage == "y0"  # what the layer outputs: masked, in y0
    assert g.nodes["L0.fwd.t2.gemm_hh.r"].inputs[0] == "L0.fwd.t1.h_keep"
    plan = build_plan(spec)
    assert set(plan.inputs) == {"x", "mask", "h0"} and plan.lowering == "graph"
    fused = next(s for s in plan.steps if s.kind == "fused")
    assert {i.op for i in fused.expr} >= {"select", "masked"} and len(fused.outputs) == 2


def test_the_persistent_lowering_reads_the_mask_and_writes_h_n_apart():
    spec = rp.RNNSpec(cell="lstm", input_size=3, hidden_size=4, num_layers=2, seq_len=3, batch=1, variable_lengths=True)
    plan = build_plan(spec, options=rp.PlanOptions(device=H200))
    assert plan.lowering == "persistent"  # auto takes it as for fixed lengths
    step = next(s for s in plan.steps if s.kind == "recurrent")
    assert step.recurrence.variable_lengths and plan.inputs["mask"] in step.inputs
    # outputs: the last layer's y (the one below is read only inside the kernel), c_n, then h_n, which
    # the plan's h_n outputs read (not the masked y)
    assert len(step.outputs) == 3 and plan.outputs["out"][0].buffer == step.outputs[0].buffer
    assert all(v.buffer == step.outputs[2].buffer for v in plan.outputs["h_n"])
    assert "MASKED 1" in rp.persistent.source.config_header(step.recurrence)
    fixed = build_plan(spec.model_copy(update={"variable_lengths": False}), options=rp.PlanOptions(device=H200))
    assert "MASKED 0" in rp.persistent.source.config_header(next(s for s in fixed.steps if s.recurrence).recurrence)


@pytest.mark.parametrize("lengths, error, message", [
    (None, TypeError, r"the plan's spec has variable lengths: pass lengths=, 4 ints in 1..5"),
    ([5, 2, 4], ValueError, r"lengths must be 4 ints \(one per sequence\), got shape \(3,\)"),
    ([5.0, 2, 4, 1], ValueError, "of dtype float64"),
    ([6, 2, 4, 1], ValueError, r"lengths must lie in 1..5 \(seq_len\), got 1..6"),
    ([0, 2, 4, 1], ValueError, r"lengths must lie in 1..5 \(seq_len\), got 0..4"),
])
def test_bad_lengths_are_named(lengths, error, message):
    spec = rp.RNNSpec(cell="rnn_tanh", input_size=3, hidden_size=6, num_layers=1, seq_len=5, batch=4,
                      variable_lengths=True)
    ex = rp.Executor(build_plan(spec), rp.Weights.random(spec), backend="numpy")
    x, _ = inputs(spec, 1)
    with pytest.raises(error, match=message):
        ex.run(x, lengths=lengths)
    assert ex.run(x, lengths=torch.tensor([5, 2, 4, 1]))[0].shape == (5, 4, 6)  # torch's own lengths: a CPU tensor
    fixed = rp.Executor(build_plan(spec.model_copy(update={"variable_lengths": False})), rp.Weights.random(spec),
                        backend="numpy")
    with pytest.raises(ValueError, match="lengths given, but the plan's spec has variable_lengths=False"):
        fixed.run(x, lengths=[5, 2, 4, 1])


@pytest.mark.gpu
@pytest.mark.skipif(rp.backends.cupy_unavailable_reason() is not None,
                    reason=str(rp.backends.cupy_unavailable_reason()))
@pytest.mark.parametrize("kw", [
    dict(cell="lstm", num_layers=2, bidirectional=True, batch_first=False),
    dict(cell="gru", num_layers=3, bidirectional=False, batch_first=True),
    dict(cell="rnn_relu", num_layers=1, bidirectional=True, batch_first=False),
], ids=lambda kw: kw["cell"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("lowering, mode, batch", [("graph", "graph", 4), ("graph", "streams", 4),
                                                   ("persistent", "graph", 4), ("persistent", "graph", 2)])
def test_gpu_masked_plans_match_torch_packed_sequences(kw, dtype, lowering, mode, batch):
    """The masked plan on the CuPy backend, every call poisoned first (debug), twice in a row: the graph
    lowering (its fused kernels read the mask as a column) and the persistent kernels (in fp16 at batch 4
    the tensor-core one, else FFMA), which keep the state past each end and write h_n apart."""
    spec = rp.RNNSpec(**kw, input_size=12, hidden_size=32, seq_len=5, batch=batch, variable_lengths=True, dtype=dtype)
    module = torch_module(spec, 9)
    weights = rp.Weights.from_torch(module, spec)
    if dtype == "float16":  # the reference sees the weights the kernels see
        weights = rp.Weights({k: v.astype(np.float16) for k, v in weights.tensors.items()}, weights.arch)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(p.half().float())
    x, state = inputs(spec, 10)
    x = x.astype(dtype).astype(np.float32)
    state = tuple(s.astype(dtype).astype(np.float32) for s in state) if isinstance(state, tuple) else \
        state.astype(dtype).astype(np.float32)
    lengths = {4: [5, 1, 3, 4], 2: [2, 5]}[batch]
    want = packed_torch(module, x, lengths, state, spec.batch_first)
    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering=lowering))
    assert plan.lowering == lowering
    ex = rp.Executor(plan, weights, backend="cupy", mode=mode, debug=True)
    cast = (lambda a: a.astype(dtype)) if dtype == "float16" else (lambda a: a)
    st = tuple(cast(s) for s in state) if isinstance(state, tuple) else cast(state)
    tol = 1e-5 if dtype == "float32" else 5e-3
    for _ in range(2):
        out, got_state = ex.run(cast(x), st, lengths=lengths)
        out = out.get().astype(np.float32)
        assert rel_err(out, want[0]) < tol and np.isfinite(out).all()
        got = got_state if isinstance(got_state, tuple) else (got_state,)
        ref = want[1] if isinstance(want[1], tuple) else (want[1],)
        assert all(rel_err(g.get().astype(np.float32), r) < tol for g, r in zip(got, ref))
