"""bfloat16 storage (issue 18, item 1): stored bf16 (ml_dtypes' NumPy dtype on the host, its bits as
int16 in CuPy), fp32 math. Accuracy per cell against a float64 torch reference on the same
bf16-rounded weights, inputs and states: relative error at most 1e-2, on the NumPy reference (both
plan forms), and on the GPU (marked gpu) in both lowerings through `rnnplan.compile`; the drop-in on
bf16 CPU tensors; bf16 plans persistent where its kernel fits."""

import numpy as np
import pytest
import torch

import rnnplan as rp
from tests.helpers import TORCH_CLASSES as TORCH
from tests.helpers import rel_err, torch_module

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def rounded(a):
    return np.asarray(a, dtype=np.float32).astype("bfloat16")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, bidirectional, variable", [(1, False, False), (2, True, False), (3, False, True)])
def test_bf16_against_float64_torch_on_the_same_rounded_values(cell, layers, bidirectional, variable):
    spec = rp.RNNSpec(cell=cell, input_size=24, hidden_size=32, num_layers=layers, seq_len=20, batch=3,
                      bidirectional=bidirectional, dtype="bfloat16", variable_lengths=variable)
    module = torch_module(spec.model_copy(update={"dtype": "float32"}), 3)
    with torch.no_grad():  # the reference sees the weights the plan stores
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    weights = rp.Weights.from_torch(module, spec)
    rng = np.random.default_rng(4)
    x = rounded(rng.standard_normal((20, 3, 24)))
    h0 = rounded(rng.standard_normal((layers * spec.directions, 3, 32)))
    state = (h0, rounded(rng.standard_normal(h0.shape))) if cell == "lstm" else h0
    lengths = [20, 7, 13] if variable else None
    m64 = module.double()
    with torch.no_grad():
        xt = torch.from_numpy(x.astype(np.float64))
        args = tuple(torch.from_numpy(s.astype(np.float64)) for s in state) if cell == "lstm" else \
            torch.from_numpy(h0.astype(np.float64))
        if variable:
            packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, enforce_sorted=False)
            want_out, want_st = m64(packed, args)
            want_out = torch.nn.utils.rnn.pad_packed_sequence(want_out, total_length=20)[0]
        else:
            want_out, want_st = m64(xt, args)
    want = [want_out] + (list(want_st) if cell == "lstm" else [want_st])
    for lowering in ("graph", "persistent"):  # the NumPy reference runs both plan forms
        plan = rp.build_plan(spec, options=rp.PlanOptions(lowering=lowering))
        out, st = rp.Executor(plan, weights, backend="numpy", debug=True).run(x, state, lengths=lengths)
        assert out.dtype == np.dtype("bfloat16")
        got = [out] + (list(st) if cell == "lstm" else [st])
        for g, w in zip(got, want, strict=True):
            err = rel_err(g.astype(np.float32), w.numpy())
            assert err <= 1e-2, (lowering, err)


def test_the_drop_in_takes_bf16_cpu_tensors():
    torch.manual_seed(0)
    m = torch.nn.LSTM(6, 8, num_layers=2).eval().to(torch.bfloat16)
    fast = rp.compile(m)
    x = torch.randn(5, 2, 6).to(torch.bfloat16)
    out, (h, c) = fast(x)
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    with torch.no_grad():
        want = m.double()(x.double())
    assert rel_err(out.float().numpy(), want[0].numpy()) <= 1e-2
    assert rel_err(c.float().numpy(), want[1][1].numpy()) <= 1e-2
    assert "(bfloat16, fp32)" in fast.explain()


def test_bf16_plans_persistent_where_its_kernel_fits():
    spec = rp.RNNSpec(cell="gru", input_size=3, hidden_size=4, num_layers=1, seq_len=2, batch=1, dtype="bfloat16")
    h200 = rp.PlanOptions(device=rp.DeviceShape(name="NVIDIA H200", sms=132, smem_per_block=232_448))
    plan = rp.build_plan(spec, options=h200)
    assert plan.lowering == "persistent" and plan.steps[-1].recurrence.dtype == "bfloat16"
    assert rp.Precision.of("bfloat16").operands == "bf16" and rp.Precision.of("bfloat16").element_bytes == 2


GPU = torch.cuda.is_available() and rp.backends.cupy_unavailable_reason() is None


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lowering", ["persistent", "graph"])
@pytest.mark.parametrize("batch", [1, 8])
def test_gpu_bf16_against_float64_torch(cell, lowering, batch):
    """bf16 CUDA tensors in and out of rnnplan.compile: cuBLAS bf16 GEMMs and the fused kernels (graph),
    the persistent kernels with bf16 mma operands (batch 8) or FFMA (batch 1); packed and streamed."""
    torch.manual_seed(3)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    m = TORCH[cell](48, 64, num_layers=2, bidirectional=True, **kw).cuda().eval().to(torch.bfloat16)
    fast = rp.compile(m, lowering=lowering, autotune=False, debug=batch == 1)
    x = torch.randn(30, batch, 48, device="cuda").to(torch.bfloat16)
    lengths = [30] + [max(1, 30 - 7 * i) for i in range(1, batch)]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    m64 = m.double()
    for args in ((x,), (packed,)):
        got = fast(*args)
        assert fast.executor(30, batch, args[0] is packed, x.device).plan.lowering == lowering
        with torch.no_grad():
            want = m64(*(a.double() if isinstance(a, torch.Tensor) else a.to(torch.float64) for a in args))
        flat = lambda r: [r[0].data if args[0] is packed else r[0]] + list(r[1] if cell == "lstm" else (r[1],))
        for g, w in zip(flat(got), flat(want), strict=True):
            assert g.dtype == torch.bfloat16 and g.is_cuda
            assert rel_err(g.float().cpu().numpy(), w.float().cpu().numpy()) <= 1e-2
    m.to(torch.bfloat16)


def test_without_ml_dtypes_bf16_is_named_with_its_extra():
    from tests.helpers import output_without

    code = ("import rnnplan as rp\n"
            "try:\n    rp.RNNSpec(cell='gru', input_size=3, hidden_size=4, num_layers=1, seq_len=2, batch=1, "
            "dtype='bfloat16')\nexcept ValueError as e:\n    print(e)\n")
    assert "dtype='bfloat16' needs ml_dtypes (NumPy's bfloat16): pip install 'rnnplan[bf16]'" in \
        output_without("ml_dtypes", code)
