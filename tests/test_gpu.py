"""The CuPy backend on a GPU, against torch on the GPU and the NumPy backend.

Marked `gpu`: skipped where CuPy or a usable GPU is missing. Outputs are poisoned with NaN before
every run, and every check runs twice in a row to expose races.
"""

import numpy as np
import pytest

import rnnplan as rp
from rnnplan.backends import cupy_unavailable_reason
from tests.helpers import random_inputs, rel_err, torch_module

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(cupy_unavailable_reason() is not None, reason=str(cupy_unavailable_reason()))]

TOL = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 5e-3}
GRAPH = rp.PlanOptions(lowering="graph")  # tests of the graph lowering (the default, "auto", may pick persistent)
SPECS = [
    dict(cell="lstm", input_size=7, hidden_size=13, num_layers=2, seq_len=9, batch=3, bidirectional=True),
    dict(cell="gru", input_size=33, hidden_size=47, num_layers=3, seq_len=11, batch=5),
    dict(cell="rnn_tanh", input_size=5, hidden_size=17, num_layers=2, seq_len=6, batch=4, bidirectional=True),
    dict(cell="rnn_relu", input_size=12, hidden_size=20, num_layers=1, seq_len=5, batch=2, bias=False),
    dict(cell="lstm", input_size=64, hidden_size=128, num_layers=3, seq_len=20, batch=8, batch_first=True),
    dict(cell="gru", input_size=32, hidden_size=64, num_layers=2, seq_len=7, batch=16, bidirectional=True),
]


def torch_reference(module, x, state, device="cuda"):
    """torch on the GPU in strict fp32 (no TF32 anywhere): the reference for every precision."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    m = module.to(device).float()
    with torch.no_grad():
        tx = torch.as_tensor(np.asarray(x, np.float32), device=device)
        if state is None:
            out, st = m(tx)
        elif isinstance(state, tuple):
            out, st = m(tx, tuple(torch.as_tensor(np.asarray(s, np.float32), device=device) for s in state))
        else:
            out, st = m(tx, torch.as_tensor(np.asarray(state, np.float32), device=device))
    st = tuple(s.cpu().numpy() for s in st) if isinstance(st, tuple) else (st.cpu().numpy(),)
    return out.cpu().numpy(), st


def host(result):
    out, st = result
    st = st if isinstance(st, tuple) else (st,)
    return out.get(), tuple(s.get() for s in st)


def module_and_weights(spec, seed):
    """The torch module for `spec` and its weights; with fp16 storage, both rounded to fp16, so that the
    fp32 reference sees the weights the kernels see."""
    module = torch_module(spec, seed)
    weights = rp.Weights.from_torch(module, spec)
    if spec.dtype == "float16":
        weights = rp.Weights({k: v.astype(np.float16) for k, v in weights.tensors.items()}, weights.arch)
        for p in module.parameters():
            p.data = p.data.half().float()
    return module, weights


def check(spec_kw, precision, mode, seed):
    dtype = "float16" if precision == "fp16" else "float32"
    spec = rp.RNNSpec(**spec_kw, dtype=dtype)
    module, weights = module_and_weights(spec, seed)
    math = "tf32" if precision == "tf32" else "fp32"
    plan = rp.build_plan(spec, options=rp.PlanOptions(math=math, lowering="graph"))
    ex = rp.Executor(plan, weights, backend="cupy", mode=mode)
    x, state = random_inputs(spec, seed, with_state=seed % 2 == 0)
    want_out, want_st = torch_reference(module, x, state)
    for _ in range(2):
        ex.impl.poison()
        out, st = host(ex.run(x, state))
        assert np.isfinite(out.astype(np.float32)).all()
        assert rel_err(out, want_out) <= TOL[precision], (precision, rel_err(out, want_out))
        for s, w in zip(st, want_st):
            assert rel_err(s, w) <= TOL[precision]
    return ex, x, state, out


@pytest.mark.parametrize("spec_kw", SPECS, ids=lambda k: f"{k['cell']}-{k['num_layers']}x{k['hidden_size']}")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_graph_mode_matches_torch(spec_kw, precision):
    check(spec_kw, precision, "graph", seed=SPECS.index(spec_kw))


@pytest.mark.parametrize("spec_kw", SPECS[:3], ids=lambda k: k["cell"])
def test_streams_mode_matches_torch_and_numpy(spec_kw):
    ex, x, state, out = check(spec_kw, "fp32", "streams", seed=7)
    want, _ = rp.Executor(ex.plan, rp.Weights.from_torch(torch_module(ex.spec, 7), ex.spec), backend="numpy").run(x, state)
    assert rel_err(out, want) <= 1e-5


@pytest.mark.parametrize("passes", [(), ("combine_gates",), ("fuse_pointwise", "wavefront_streams"),
                                    ("batch_input_gemms", "wavefront_streams"), ("pretranspose",)])
def test_pass_subsets_on_gpu(passes):
    spec = rp.RNNSpec(**SPECS[0])
    w = rp.Weights.random(spec, seed=3)
    x, state = random_inputs(spec, 3)
    want, _ = rp.Executor(rp.build_plan(spec, passes=()), w, backend="numpy").run(x, state)
    for mode in ("graph", "streams"):
        ex = rp.Executor(rp.build_plan(spec, passes=passes, options=GRAPH), w, backend="cupy", mode=mode)
        for _ in range(2):
            ex.impl.poison()
            assert rel_err(ex.run(x, state)[0].get(), want) <= 1e-5


def test_inputs_from_numpy_cupy_and_torch_and_ownership():
    import cupy as cp
    import torch

    spec = rp.RNNSpec(**SPECS[4])
    w = rp.Weights.random(spec, seed=1)
    ex = rp.Executor(rp.build_plan(spec, options=GRAPH), w, backend="cupy")
    x, state = random_inputs(spec, 1)
    first, (h, c) = ex.run(x, state)
    assert isinstance(first, cp.ndarray) and first.shape == (8, 20, 128)  # batch_first
    kept = first.copy()
    for xx, ss in ((cp.asarray(x), tuple(cp.asarray(s) for s in state)),
                   (torch.as_tensor(x, device="cuda"), tuple(torch.as_tensor(s, device="cuda") for s in state))):
        again, _ = ex.run(xx, ss)
        assert rel_err(again.get(), kept.get()) == 0.0
    ex.run(random_inputs(spec, 2)[0])  # a later call must not overwrite what an earlier one returned
    assert rel_err(first.get(), kept.get()) == 0.0
    with pytest.raises(ValueError, match="x has dtype float64"):
        ex.run(torch.zeros((8, 20, 64), dtype=torch.float64, device="cuda"))


def random_specs(n, seed=2026):
    """Odd sizes from a seeded generator: every cell, 1-3 layers, either direction, either layout."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield dict(cell=str(rng.choice(["lstm", "gru", "rnn_tanh", "rnn_relu"])), input_size=int(rng.integers(1, 70)),
                   hidden_size=int(rng.integers(1, 70)), num_layers=int(rng.integers(1, 4)),
                   seq_len=int(rng.integers(1, 13)), batch=int(rng.integers(1, 9)),
                   bidirectional=bool(rng.integers(2)), bias=bool(rng.integers(2)), batch_first=bool(rng.integers(2)))


@pytest.mark.parametrize("spec_kw", list(random_specs(8)), ids=lambda k: "-".join(str(v) for v in k.values()))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_random_specs_match_torch(spec_kw, precision):
    check(spec_kw, precision, "graph", seed=11)


def test_input_on_another_gpu_is_rejected(monkeypatch):
    import rnnplan.backends.cupy_backend as cb

    spec = rp.RNNSpec(**SPECS[2])
    ex = rp.Executor(rp.build_plan(spec, options=GRAPH), rp.Weights.random(spec), backend="cupy")
    x, _ = random_inputs(spec, 0)
    import cupy as cp

    monkeypatch.setattr(cb, "_device_id", lambda arr: 1)  # as if the array lived on GPU 1
    with pytest.raises(ValueError, match="x is on GPU 1; this executor runs on GPU 0"):
        ex.run(cp.asarray(x))


def test_several_executors_alive():
    specs = [rp.RNNSpec(**SPECS[0]), rp.RNNSpec(**SPECS[1])]
    exs = [rp.Executor(rp.build_plan(s, options=GRAPH), rp.Weights.random(s, seed=i), backend="cupy") for i, s in enumerate(specs)]
    nps = [rp.Executor(rp.build_plan(s), rp.Weights.random(s, seed=i), backend="numpy") for i, s in enumerate(specs)]
    inputs = [random_inputs(s, 5) for s in specs]
    for _ in range(2):
        for ex, ref, (x, st) in zip(exs, nps, inputs):
            assert rel_err(ex.run(x, st)[0].get(), ref.run(x, st)[0]) <= 1e-5


def test_plan_too_large_for_the_device():
    from rnnplan.backends.cupy_backend import CupyExecutor, DeviceMemoryError

    spec = rp.RNNSpec(cell="lstm", input_size=8192, hidden_size=8192, num_layers=1, seq_len=2, batch=2_000_000)
    with pytest.raises(DeviceMemoryError, match=r"the plan needs .* GiB of GPU 0's free memory \(sequences .*\), and "
                                                r".* GiB is available; the temporaries grow with batch=2000000"):
        CupyExecutor(rp.build_plan(spec), weights=None)  # fails on the estimate, before weights are read


def test_measured_gpu_timeline():
    spec = rp.RNNSpec(**SPECS[0])
    plan = rp.build_plan(spec, options=GRAPH)
    ex = rp.Executor(plan, rp.Weights.random(spec), backend="cupy")
    trace = ex.trace(random_inputs(spec, 0)[0])
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(plan.steps) and trace["otherData"]["source"] == "measured on cupy"
    end = {e["name"]: e["ts"] + e["dur"] for e in spans}
    for e, step in zip(spans, plan.steps):
        assert e["dur"] > 0
        for d in step.deps:  # measured: a step starts after the steps it reads have ended
            assert e["ts"] >= end[plan.steps[d].name] - 1.0


PERSISTENT = [
    dict(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=100, batch=1),
    dict(cell="gru", input_size=33, hidden_size=47, num_layers=3, seq_len=11, batch=5, bidirectional=True),
    dict(cell="rnn_tanh", input_size=5, hidden_size=17, num_layers=2, seq_len=6, batch=4, bidirectional=True),
    dict(cell="rnn_relu", input_size=12, hidden_size=20, num_layers=1, seq_len=5, batch=2, bias=False),
    dict(cell="lstm", input_size=64, hidden_size=128, num_layers=3, seq_len=20, batch=8, batch_first=True),
    dict(cell="gru", input_size=8, hidden_size=40, num_layers=2, seq_len=4, batch=20, bidirectional=True),  # 2 batch tiles
    # FFMA in every precision: above layer 0 one wait for h and both directions of the layer below
    dict(cell="gru", input_size=30, hidden_size=300, num_layers=2, seq_len=5, batch=2, bidirectional=True),
    # fp16: tensor-core kernel over two batch tiles (64 + a partial one of 8)
    dict(cell="lstm", input_size=96, hidden_size=256, num_layers=2, seq_len=7, batch=72),
    dict(cell="gru", input_size=40, hidden_size=72, num_layers=2, seq_len=5, batch=70, bidirectional=True),
]


@pytest.mark.parametrize("spec_kw", PERSISTENT, ids=lambda k: f"{k['cell']}-{k['num_layers']}x{k['hidden_size']}")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
@pytest.mark.parametrize("mode", ["graph", "streams"])
def test_persistent_lowering_matches_torch(spec_kw, precision, mode):
    """fp32: the FFMA kernel; tf32 (fp32 storage): the tensor-core kernel on tf32 operands above batch 2,
    else FFMA; fp16: the tensor-core kernel above batch 2, else FFMA."""
    dtype = "float16" if precision == "fp16" else "float32"
    spec = rp.RNNSpec(**spec_kw, dtype=dtype)
    module, weights = module_and_weights(spec, 3)
    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math="tf32" if precision == "tf32" else "fp32"))
    assert sum(s.kind == "recurrent" for s in plan.steps) == 1
    r = plan.steps[-1].recurrence
    assert bool(r.batch_tile) == (precision != "fp32" and spec.batch > 2)
    ex = rp.Executor(plan, weights, backend="cupy", mode=mode)
    x, state = random_inputs(spec, 4)
    want_out, want_st = torch_reference(module, x, state)
    ref_out, _ = rp.Executor(plan, weights, backend="numpy").run(x, state)
    for _ in range(2):
        ex.impl.poison()
        out, st = host(ex.run(x, state))
        assert rel_err(out, want_out) <= TOL[precision]
        assert rel_err(out, ref_out) <= TOL[precision]
        for s_, w in zip(st, want_st):
            assert rel_err(s_, w) <= TOL[precision]


def assert_kernel_matches_torch(plan, module, weights, seed, precision):
    """The plan's kernel (a variant the planner may not pick) against torch, twice, on poisoned buffers."""
    ex = rp.Executor(plan, weights, backend="cupy")
    x, state = random_inputs(plan.spec, seed)
    want_out, want_st = torch_reference(module, x, state)
    for _ in range(2):
        ex.impl.poison()
        out, st = host(ex.run(x, state))
        assert rel_err(out, want_out) <= TOL[precision]
        for s_, w in zip(st, want_st):
            assert rel_err(s_, w) <= TOL[precision]


TENSOR_CORE = [  # fp16 and tf32, each run with the weights in registers and in shared memory
    dict(cell="lstm", input_size=40, hidden_size=200, num_layers=1, seq_len=6, batch=8),  # one layer: k split 4 ways
    dict(cell="lstm", input_size=96, hidden_size=256, num_layers=2, seq_len=7, batch=72),  # a tile of 64 + 8
    dict(cell="gru", input_size=40, hidden_size=72, num_layers=2, seq_len=5, batch=70, bidirectional=True),
    dict(cell="rnn_tanh", input_size=37, hidden_size=100, num_layers=3, seq_len=5, batch=13, bidirectional=True),
    dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=6, batch=64),  # the paper's, short
    # one tile, 8 units a block: layer 0 prefetches its input projection, in both directions
    dict(cell="lstm", input_size=48, hidden_size=256, num_layers=2, seq_len=9, batch=16, bidirectional=True),
]


# The paper's shape is left out in tf32: its fp32 weights (28 MiB) fit neither way (test_persistent.py).
TENSOR_CORE_CASES = [(k, "fp16") for k in TENSOR_CORE] + [(k, "tf32") for k in TENSOR_CORE if k["hidden_size"] != 512]


@pytest.mark.parametrize("spec_kw, precision", TENSOR_CORE_CASES,
                         ids=lambda v: v if isinstance(v, str) else f"{v['cell']}-{v['num_layers']}x{v['hidden_size']}-B{v['batch']}")
@pytest.mark.parametrize("registers", [True, False], ids=["registers", "shared"])
def test_tensor_core_kernel_with_weights_in_registers_or_shared_memory(spec_kw, precision, registers):
    from rnnplan.backends import describe_device
    from rnnplan.lowering.recurrent import with_recurrence
    from rnnplan.persistent import kernel_of, tensor_core_recurrence

    spec = rp.RNNSpec(**spec_kw, dtype="float16" if precision == "fp16" else "float32")
    module, weights = module_and_weights(spec, 5)
    # the hand-off through global memory: the units the planner takes on the device without clusters
    without_clusters = describe_device().model_copy(update={"cluster_blocks": 0, "max_clusters": 0})
    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math="tf32", device=without_clusters))
    chosen = next(s.recurrence for s in plan.steps if s.recurrence)
    r = tensor_core_recurrence(spec, chosen.units_per_block, without_clusters, registers)
    assert r is not None and r.weights_in_registers == registers
    assert kernel_of(r).mma_kstep == (16 if precision == "fp16" else 8)
    assert_kernel_matches_torch(with_recurrence(plan, r), module, weights, 6, precision)


CLUSTER = [  # the cluster hand-off (h through distributed shared memory), also outside the planner's batches
    (dict(cell="lstm", input_size=64, hidden_size=512, num_layers=1, seq_len=9, batch=8), "fp16"),  # 16 blocks
    (dict(cell="lstm", input_size=40, hidden_size=256, num_layers=2, seq_len=7, batch=1), "fp16"),  # a layer above
    (dict(cell="gru", input_size=24, hidden_size=128, num_layers=2, seq_len=6, batch=13, bidirectional=True), "fp16"),
    (dict(cell="rnn_tanh", input_size=16, hidden_size=64, num_layers=3, seq_len=5, batch=5), "fp16"),  # 8 blocks
    (dict(cell="lstm", input_size=32, hidden_size=256, num_layers=2, seq_len=6, batch=8), "tf32"),
    (dict(cell="lstm", input_size=32, hidden_size=512, num_layers=1, seq_len=6, batch=16), "fp16"),
]


@pytest.mark.parametrize("spec_kw, precision", CLUSTER,
                         ids=lambda v: v if isinstance(v, str) else f"{v['cell']}-{v['num_layers']}x{v['hidden_size']}-B{v['batch']}")
@pytest.mark.parametrize("registers", [True, False], ids=["registers", "shared"])
@pytest.mark.parametrize("seed", [5, 6])
def test_cluster_handoff_matches_torch(spec_kw, precision, registers, seed):
    """The tensor-core kernel with each chain's blocks in one thread-block cluster, weights in registers
    or shared memory, against torch (twice each, poisoned outputs, two seeds: a race in the hand-off
    shows as an error that moves)."""
    from rnnplan.backends import describe_device
    from rnnplan.lowering.recurrent import with_recurrence
    from rnnplan.persistent import kernel_of, tensor_core_recurrence
    from rnnplan.persistent.select import cluster_units

    spec = rp.RNNSpec(**spec_kw, dtype="float16" if precision == "fp16" else "float32")
    device = describe_device()
    found = [r for u in cluster_units(spec, device)
             if (r := tensor_core_recurrence(spec, u, device, registers, cluster=True)) and kernel_of(r).fit(device).ok]
    if not found:
        pytest.skip(f"weights in {'registers' if registers else 'shared memory'} do not fit this shape")
    r = found[0]  # the most blocks a chain (as the planner takes them, at any batch here)
    assert r.cluster
    module, weights = module_and_weights(spec, seed)
    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math="tf32"))
    assert_kernel_matches_torch(with_recurrence(plan, r), module, weights, seed, precision)


FFMA = [  # (spec, units a block): the FFMA kernel with its weights in registers and in shared memory
    (dict(cell="lstm", input_size=256, hidden_size=256, num_layers=1, seq_len=9, batch=1), 2),  # a row a warp, 4-value loads
    (dict(cell="lstm", input_size=64, hidden_size=1024, num_layers=1, seq_len=5, batch=1), 8),  # 4 rows a warp, 1-value loads
    (dict(cell="lstm", input_size=64, hidden_size=1024, num_layers=1, seq_len=4, batch=8), 8),  # the register budget
    (dict(cell="rnn_tanh", input_size=48, hidden_size=512, num_layers=2, seq_len=6, batch=1), 8),  # one wait for h and x
    (dict(cell="lstm", input_size=64, hidden_size=128, num_layers=3, seq_len=6, batch=8), 16),  # 2 sets of rows a warp
    (dict(cell="gru", input_size=33, hidden_size=47, num_layers=3, seq_len=7, batch=5, bidirectional=True), 3),
    (dict(cell="rnn_relu", input_size=12, hidden_size=20, num_layers=2, seq_len=5, batch=2, bias=False), 5),
]


@pytest.mark.parametrize("spec_kw, units", FFMA, ids=lambda v: v if isinstance(v, int) else
                         f"{v['cell']}-{v['num_layers']}x{v['hidden_size']}-B{v['batch']}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("registers", [True, False], ids=["registers", "shared"])
def test_ffma_kernel_with_weights_in_registers_or_shared_memory(spec_kw, units, precision, registers):
    from rnnplan.lowering.recurrent import with_recurrence
    from rnnplan.persistent import kernel_of, recurrence_of

    spec = rp.RNNSpec(**spec_kw, dtype="float16" if precision == "fp16" else "float32")
    module, weights = module_and_weights(spec, 7)
    r = recurrence_of(spec, units, registers=registers)
    assert not registers or kernel_of(r).registers_fit
    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent"))
    assert_kernel_matches_torch(with_recurrence(plan, r), module, weights, 8, precision)


def test_default_plan_reads_the_device_and_picks_persistent_at_small_batch():
    spec = rp.RNNSpec(cell="gru", input_size=24, hidden_size=64, num_layers=2, seq_len=9, batch=1)
    plan = rp.build_plan(spec)  # lowering="auto", no device given: rp.build_plan describes GPU 0
    assert plan.options.device == rp.backends.describe_device()
    assert plan.lowering == "persistent" and "fit on-chip" in plan.lowering_reason
    assert rp.build_plan(rp.PAPER_SPEC).lowering == "graph"  # fp32 weights do not fit on-chip
    w = rp.Weights.random(spec, seed=4)
    x, state = random_inputs(spec, 4)
    want, _ = rp.Executor(rp.build_plan(spec, passes=()), w, backend="numpy").run(x, state)
    assert rel_err(rp.Executor(plan, w, backend="cupy").run(x, state)[0].get(), want) <= 1e-5


def test_auto_lowering_with_the_real_device():
    from rnnplan.backends import describe_device

    device = describe_device()
    assert device.sms > 0 and device.smem_per_block >= 48 * 1024
    small = rp.RNNSpec(cell="lstm", input_size=64, hidden_size=64, num_layers=2, seq_len=8, batch=1)
    plan = rp.build_plan(small, options=rp.PlanOptions(lowering="auto", device=device))
    assert plan.lowering == "persistent" and device.name in plan.lowering_reason
    wide = rp.build_plan(small.model_copy(update={"batch": 16}), options=rp.PlanOptions(lowering="auto", device=device))
    assert wide.lowering == "graph"
    w = rp.Weights.random(small, seed=2)
    x, state = random_inputs(small, 2)
    want, _ = rp.Executor(rp.build_plan(small, passes=()), w, backend="numpy").run(x, state)
    assert rel_err(rp.Executor(plan, w, backend="cupy").run(x, state)[0].get(), want) <= 1e-5


@pytest.mark.parametrize("spec_kw, precision", [
    (dict(cell="lstm", input_size=64, hidden_size=128, num_layers=2, seq_len=12, batch=1), "fp32"),  # FFMA
    (dict(cell="gru", input_size=32, hidden_size=64, num_layers=2, seq_len=10, batch=16), "fp16"),  # tensor cores
], ids=["ffma", "mma"])
def test_profiled_kernel_computes_the_same_and_counts_its_phases(spec_kw, precision):
    """profile=True compiles the persistent kernel with its PROF marks on: the same results, and every
    block's clock sums of its phases (set-up, and at least one phase per step) and its three global-timer
    stamps are filled in."""
    spec = rp.RNNSpec(**spec_kw, dtype="float16" if precision == "fp16" else "float32")
    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent"))
    w = rp.Weights.random(spec, seed=3)
    x, state = random_inputs(spec, 3)
    plain = rp.Executor(plan, w, backend="cupy", mode="streams")
    profiled = rp.Executor(plan, w, backend="cupy", mode="streams", profile=True)
    for _ in range(2):
        assert rel_err(profiled.run(x, state)[0].get(), plain.run(x, state)[0].get()) == 0.0
    (cycles,) = profiled.impl.persistent_profile()
    r = plan.steps[-1].recurrence
    from rnnplan.persistent import PROFILE_SLOTS, kernel_of

    assert cycles.shape == (kernel_of(r).blocks, PROFILE_SLOTS) == (kernel_of(r).blocks, 11)
    assert (cycles[:, 7] > 0).all() and (cycles[:, :5].sum(axis=1) > 0).all()
    # the global timer's stamps a block: start <= set-up done <= end, all blocks within one run
    start, ready, end = cycles[:, 8].astype(np.int64), cycles[:, 9].astype(np.int64), cycles[:, 10].astype(np.int64)
    assert (start > 0).all() and (start <= ready).all() and (ready <= end).all()
    assert end.max() - start.min() < 10**9  # ns: one run, not stamps of different runs
    assert plain.impl.persistent_profile() == []
