"""LSTM projections (`proj_size`, torch's LSTMP; issue 18, item 2): h = W_hr (o * tanh(c)) of size
proj, c of size hidden, the layers above reading the projected h. Against torch on the NumPy
reference for naive and optimized plans, directions, layouts, states and variable lengths; the
spec, the weights and the JSON plan; the persistent lowering (the FFMA kernel's projection step, masked
too); the drop-in on CPU tensors; and on the GPU (marked gpu) in fp32, fp16
and bf16, autotuned against cuDNN, and the persistent kernel against torch."""

import numpy as np
import pytest
import torch

import rnnplan as rp
from rnnplan.backends import cupy_unavailable_reason
from tests.helpers import (
    assert_same_result,
    random_inputs,
    rel_err,
    run_torch,
    torch_module,
)

GPU = cupy_unavailable_reason() is None and torch.cuda.is_available()


H200_OPTIONS = rp.PlanOptions(device=rp.DeviceShape(name="NVIDIA H200", sms=132, smem_per_block=232_448))


def spec_of(**kw) -> rp.RNNSpec:
    base = dict(cell="lstm", input_size=6, hidden_size=9, proj_size=4, num_layers=2, seq_len=7, batch=3)
    return rp.RNNSpec(**(base | kw))


@pytest.mark.parametrize("passes", ["none", "all"])
@pytest.mark.parametrize("layers, bidirectional, batch_first, bias", [(1, False, False, True), (2, True, False, True),
                                                                      (3, False, True, False), (2, True, True, True)])
def test_projected_lstm_matches_torch(passes, layers, bidirectional, batch_first, bias):
    spec = spec_of(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    module = torch_module(spec, 2)
    assert module.proj_size == 4
    weights = rp.Weights.from_torch(module, spec)
    plan = rp.build_plan(spec, passes=passes)
    gemms = [s for s in plan.steps if s.kind == "gemm" and ".gemm_hr" in s.name]
    assert len(gemms) == layers * spec.directions * spec.seq_len  # one projection a cell-step
    ex = rp.Executor(plan, weights, backend="numpy", debug=True)
    for seed, with_state in ((0, True), (1, False)):
        x, state = random_inputs(spec, seed, with_state)
        got = ex.run(x, state)
        assert got[1][0].shape == (layers * spec.directions, 3, 4) and got[1][1].shape[-1] == 9
        assert got[0].shape[-1] == spec.directions * 4
        assert_same_result(got, run_torch(module, x, state), 1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_projected_lstm_with_variable_lengths_matches_torch_packed(bidirectional):
    """Masked: c is kept past a sequence's end before the projection, h after it; in the graph
    lowering's naive and optimized plans and in the persistent lowering's recurrence."""
    spec = spec_of(bidirectional=bidirectional, variable_lengths=True)
    module = torch_module(spec, 3)
    x, state = random_inputs(spec, 4)
    lengths = [7, 2, 5]
    persistent = rp.build_plan(spec, options=H200_OPTIONS.model_copy(update={"lowering": "persistent"}))
    for plan in (rp.build_plan(spec, passes="none"), rp.build_plan(spec, passes="all"), persistent):
        out, (h, c) = rp.Executor(plan, rp.Weights.from_torch(module, spec),
                                  backend="numpy", debug=True).run(x, state, lengths=lengths)
        with torch.no_grad():
            packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths, enforce_sorted=False)
            want, (wh, wc) = module(packed, tuple(torch.from_numpy(s) for s in state))
            want = torch.nn.utils.rnn.pad_packed_sequence(want, total_length=7)[0]
        for g, w in ((out, want), (h, wh), (c, wc)):
            assert rel_err(g, w.numpy()) <= 1e-5


def test_the_spec_names_what_a_projection_needs():
    with pytest.raises(ValueError, match="proj_size=3: projections exist for cell='lstm' only, not 'gru'"):
        spec_of(cell="gru", proj_size=3)
    with pytest.raises(ValueError, match="proj_size=9 must be smaller than hidden_size=9"):
        spec_of(proj_size=9)
    spec = spec_of()
    assert spec.output_size == 4 and spec.state_size("c") == 9 and spec.layer_input_size(1) == 4
    module = spec.to_torch()
    assert module.proj_size == 4 and rp.RNNSpec.from_torch(module, 7, 3) == spec
    weights = rp.Weights.from_torch(module, spec)
    assert weights.tensors["weight_hr_l1"].shape == (4, 9) and weights.tensors["weight_hh_l0"].shape == (36, 4)
    with pytest.raises(rp.WeightsError, match="hyper-parameter proj_size: weights come from a module with "
                                              "proj_size=4, the spec has proj_size=0"):
        weights.check(spec.model_copy(update={"proj_size": 0}))
    assert "proj=4" in spec.short()


def test_the_persistent_lowering_takes_a_projection_on_either_kernel():
    spec = spec_of(batch=1)
    plan = rp.build_plan(spec, options=H200_OPTIONS)
    assert plan.lowering == "persistent" and "FFMA" in plan.lowering_reason
    (rec,) = [s.recurrence for s in plan.steps if s.recurrence is not None]
    assert rec.proj_size == 4 and rec.h_width == 4 and rec.batch_tile == 0  # the FFMA kernel at batch 1
    # auto takes the persistent kernels up to their measured batch limit for projections
    assert rp.build_plan(spec_of(batch=16, dtype="float16"), options=H200_OPTIONS).lowering == "persistent"
    big = rp.build_plan(spec_of(batch=17, dtype="float16"), options=H200_OPTIONS)
    assert big.lowering == "graph" and "batch 17 > 16" in big.lowering_reason
    forced = rp.build_plan(spec_of(batch=16, dtype="float16"), options=H200_OPTIONS.model_copy(
        update={"lowering": "persistent"}))  # fp16: the tensor-core kernel's projection
    assert forced.steps[-1].recurrence.batch_tile > 0 and "tensor cores" in forced.lowering_reason
    assert "W_hr on-chip" in forced.lowering_reason
    assert rp.build_plan(spec_of(batch=1, variable_lengths=True), options=H200_OPTIONS).lowering == "persistent"


@pytest.mark.parametrize("layers, bidirectional, batch_first, bias", [(1, False, False, True), (2, True, False, True),
                                                                      (3, False, True, False)])
def test_the_persistent_recurrence_with_a_projection_matches_torch(layers, bidirectional, batch_first, bias):
    """The recurrent node's reference semantics (`run_recurrence`, what the kernel computes) with
    W_hr: h P wide in w_hh, the upper layers' w_ih, h0 and y; c H wide."""
    spec = spec_of(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    module = torch_module(spec, 6)
    plan = rp.build_plan(spec, options=H200_OPTIONS.model_copy(update={"lowering": "persistent"}))
    (step,) = [s for s in plan.steps if s.kind == "recurrent"]
    assert sum((v.rows, v.cols) == (spec.proj_size, spec.hidden_size) for v in step.inputs) == layers * spec.directions
    ex = rp.Executor(plan, rp.Weights.from_torch(module, spec), backend="numpy", debug=True)
    for seed, with_state in ((0, True), (1, False)):
        x, state = random_inputs(spec, seed, with_state)
        assert_same_result(ex.run(x, state), run_torch(module, x, state), 1e-5)


def test_a_projected_plan_round_trips_through_json():
    plan = rp.build_plan(spec_of(bidirectional=True))
    again = rp.load_plan(plan.to_json())
    assert again == plan and again.spec.proj_size == 4


def test_the_drop_in_runs_projected_lstms_for_any_shape_packed_and_streamed():
    torch.manual_seed(5)
    m = torch.nn.LSTM(6, 9, num_layers=2, proj_size=4, bidirectional=True).eval()
    fast = rp.compile(m)
    for steps, batch in ((5, 2), (9, 3)):
        x = torch.randn(steps, batch, 6)
        state = (torch.randn(4, batch, 4), torch.randn(4, batch, 9))
        with torch.no_grad():
            want = m(x, state)
        got = fast(x, state)
        assert got[1][0].shape == (4, batch, 4) and got[1][1].shape == (4, batch, 9)
        for g, w in zip((got[0], *got[1]), (want[0], *want[1])):
            assert rel_err(g.numpy(), w.numpy()) <= 1e-5
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(6, 3, 6), [6, 2, 4], enforce_sorted=False)
    with torch.no_grad():
        want = m(packed)
    got = fast(packed)
    assert rel_err(got[0].data.numpy(), want[0].data.numpy()) <= 1e-5
    uni = torch.nn.LSTM(6, 9, num_layers=2, proj_size=4).eval()
    stream, state, outs = rp.compile(uni), None, []
    x = torch.randn(7, 2, 6)
    for chunk in (x[:1], x[1:4], x[4:]):
        out, state = stream(chunk, state)
        outs.append(out)
    with torch.no_grad():
        want = uni(x)
    assert rel_err(torch.cat(outs).numpy(), want[0].numpy()) <= 1e-5
    assert rel_err(state[0].numpy(), want[1][0].numpy()) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("autotune", [False, True])
def test_gpu_projected_lstm_against_torch(dtype, tol, autotune):
    """The graph lowering on CUDA tensors (fp32 strict, fp16, bf16 against float64 torch), fixed and
    packed, with and without autotuning against torch's own (cuDNN) call."""
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(1)
    m = torch.nn.LSTM(40, 96, num_layers=2, proj_size=32, bidirectional=True).cuda().eval().to(dtype)
    fast = rp.compile(m, autotune=autotune)
    x = torch.randn(20, 8, 40, device="cuda").to(dtype)
    h = (torch.randn(4, 8, 32, device="cuda").to(dtype), torch.randn(4, 8, 96, device="cuda").to(dtype))
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [20, 3, 17, 9, 20, 1, 5, 12], enforce_sorted=False)
    m64 = m.double()
    for args in ((x, h), (packed,), (x,)):
        got = fast(*args)
        with torch.no_grad():
            want = m64(*(tuple(s.double() for s in a) if type(a) is tuple else a.to(torch.float64) for a in args))
        flat = [got[0].data if args[0] is packed else got[0], *got[1]]
        wflat = [want[0].data if args[0] is packed else want[0], *want[1]]
        for g, w in zip(flat, wflat, strict=True):
            assert g.dtype == dtype and g.is_cuda and g.shape == w.shape
            assert rel_err(g.double().cpu().numpy(), w.cpu().numpy()) <= tol
    assert "proj 32" in fast.explain()
    m.to(dtype)
    torch.backends.cudnn.allow_tf32 = True


PERSISTENT_PROJ = [  # (spec, units per block or None for the planner's): the FFMA kernel's projection step
    (dict(input_size=256, hidden_size=1024, proj_size=256, num_layers=3, seq_len=30, batch=1), None),
    (dict(input_size=40, hidden_size=100, proj_size=37, num_layers=2, seq_len=9, batch=3, bidirectional=True), None),
    (dict(input_size=20, hidden_size=64, proj_size=16, num_layers=2, seq_len=7, batch=2, bias=False), None),
    (dict(input_size=64, hidden_size=256, proj_size=128, num_layers=2, seq_len=12, batch=16, batch_first=True), None),
    (dict(input_size=33, hidden_size=200, proj_size=50, num_layers=3, seq_len=6, batch=5), 64),  # few blocks, np 13
    (dict(input_size=24, hidden_size=96, proj_size=32, num_layers=2, seq_len=11, batch=4, bidirectional=True,
          variable_lengths=True), None),  # masked: the projected h kept past each sequence's end
]
# Each with its weights in shared memory, and in registers where they fit the register budget (the
# first and the fifth do not: 96 rows of 256 and 832 rows of 50 values a block).
PROJ_CASES = [(kw, units, registers) for i, (kw, units) in enumerate(PERSISTENT_PROJ)
              for registers in ((False,) if i in (0, 4) else (True, False))]


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("spec_kw, units, registers", PROJ_CASES,
                         ids=[f"{kw['num_layers']}x{kw['hidden_size']}p{kw['proj_size']}-B{kw['batch']}-"
                              f"{'registers' if reg else 'shared'}" for kw, _, reg in PROJ_CASES])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_persistent_kernel_with_a_projection_matches_torch(spec_kw, units, registers, precision):
    """The FFMA kernel with W_hr on-chip against strict-fp32 torch and the NumPy reference, twice on
    poisoned buffers, with the weights in registers (where they fit) and in shared memory."""
    from rnnplan.persistent import kernel_of, recurrence_of

    spec = rp.RNNSpec(cell="lstm", **spec_kw, dtype="float16" if precision == "fp16" else "float32")
    planned = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent")).steps[-1].recurrence
    r = recurrence_of(spec, units or planned.units_per_block, registers=registers)
    assert kernel_of(r).registers_fit or not registers
    _kernel_matches_torch(spec, r, precision)


MMA_PROJ = [  # the tensor-core kernel's projection (batch above PROJ_FFMA_MAX_BATCH: every batch)
    dict(input_size=256, hidden_size=1024, proj_size=256, num_layers=3, seq_len=20, batch=1),
    dict(input_size=256, hidden_size=1024, proj_size=256, num_layers=3, seq_len=20, batch=2),
    dict(input_size=20, hidden_size=64, proj_size=16, num_layers=2, seq_len=7, batch=3, bias=False),
    dict(input_size=256, hidden_size=1024, proj_size=256, num_layers=3, seq_len=20, batch=8),
    dict(input_size=40, hidden_size=100, proj_size=37, num_layers=2, seq_len=9, batch=9, bidirectional=True),
    dict(input_size=64, hidden_size=256, proj_size=128, num_layers=2, seq_len=12, batch=16, batch_first=True),
    dict(input_size=33, hidden_size=200, proj_size=50, num_layers=3, seq_len=6, batch=21, bias=False),  # 2 tiles
    dict(input_size=24, hidden_size=96, proj_size=32, num_layers=2, seq_len=11, batch=12, bidirectional=True,
         variable_lengths=True),  # masked: the projected h kept past each sequence's end
]
MMA_CASES = [(kw, registers) for kw in MMA_PROJ for registers in (True, False)]


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("spec_kw, registers", MMA_CASES,
                         ids=[f"{kw['num_layers']}x{kw['hidden_size']}p{kw['proj_size']}-B{kw['batch']}-"
                              f"{'registers' if reg else 'shared'}" for kw, reg in MMA_CASES])
@pytest.mark.parametrize("precision", ["tf32", "fp16"])
def test_gpu_tensor_core_kernel_with_a_projection_matches_torch(spec_kw, registers, precision):
    """The tensor-core kernel with W_hr on-chip (the cell's h handed over with counters of its own,
    the projection on mma: project_mma), checked as the FFMA one is, its weights in
    registers and in shared memory where each fits."""
    from rnnplan.persistent import kernel_of
    from rnnplan.persistent.select import (
        DEFAULT_DEVICE,
        choose_recurrence,
        tensor_core_recurrence,
    )

    spec = rp.RNNSpec(cell="lstm", **spec_kw, dtype="float16" if precision == "fp16" else "float32")
    planned, why = choose_recurrence(spec, DEFAULT_DEVICE, "tf32")
    if planned is None:
        pytest.skip(f"does not fit: {why}")
    r = tensor_core_recurrence(spec, planned.units_per_block, DEFAULT_DEVICE, registers)
    if r is None or kernel_of(r).shared_memory_bytes > DEFAULT_DEVICE.smem_per_block:
        pytest.skip("this holding of the weights does not fit")
    _kernel_matches_torch(spec, r, precision)


def _kernel_matches_torch(spec, r, precision):
    """Kernel `r` in the persistent plan of `spec` against strict-fp32 torch (packed where lengths vary)
    and the NumPy reference, twice on poisoned buffers."""
    from rnnplan.lowering.recurrent import with_recurrence
    from tests.test_gpu import TOL, host, module_and_weights, torch_reference

    module, weights = module_and_weights(spec, 11)
    math = "tf32" if precision == "tf32" else "fp32"
    plan = with_recurrence(rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math=math)), r)
    ex = rp.Executor(plan, weights, backend="cupy")
    x, state = random_inputs(spec, 12)
    lengths = [(11, 3, 8, 1)[i % 4] for i in range(spec.batch)] if spec.variable_lengths else None
    if lengths:  # torch's packed run, padded back: the reference of a masked plan
        import torch as th
        with th.no_grad():
            packed = th.nn.utils.rnn.pack_padded_sequence(th.from_numpy(x.astype(np.float32)), lengths,
                                                          enforce_sorted=False)
            out, st = module.float()(packed, tuple(th.from_numpy(s.astype(np.float32)) for s in state))
            want_out = th.nn.utils.rnn.pad_packed_sequence(out, total_length=spec.seq_len)[0].numpy()
            want_st = tuple(s.numpy() for s in st)
    else:
        want_out, want_st = torch_reference(module, x, state)
    ref_out, _ = rp.Executor(plan, weights, backend="numpy").run(x, state, lengths=lengths)
    for _ in range(2):
        ex.impl.poison()
        out, st = host(ex.run(x, state, lengths=lengths))
        assert rel_err(out, want_out) <= TOL[precision] and rel_err(out, ref_out) <= TOL[precision]
        assert [s.shape for s in st] == [w.shape for w in want_st]
        for s_, w in zip(st, want_st):
            assert rel_err(s_, w) <= TOL[precision]
