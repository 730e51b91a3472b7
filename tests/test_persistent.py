"""The persistent lowering on the CPU: plan shape, fit decisions, and the reference semantics of the
recurrent node against torch (the GPU kernel is checked against both in test_gpu.py)."""

import subprocess

import pytest

import rnnplan as rp
from rnnplan.lowering import build_plan  # the planner itself: hardware-free
from rnnplan.persistent import (
    AUTO_MAX_BATCH,
    DEFAULT_DEVICE,
    FFMA_MAX_BATCH,
    FFMA_REGISTER_BUDGET,
    KERNEL_WARPS,
    REGISTER_BUDGET,
    TF32_AUTO_MAX_BATCH,
    choose_lowering,
    choose_recurrence,
    kernel_name,
    kernel_of,
    kernel_source,
    tensor_core_recurrence,
)
from rnnplan.spec import DeviceShape
from tests.helpers import (
    assert_same_result,
    nvcc,
    random_inputs,
    run_torch,
    torch_module,
)

PERSISTENT = rp.PlanOptions(lowering="persistent")


def choose(spec, device=DEFAULT_DEVICE, math="fp32"):
    """choose_recurrence, with the choice as the kernel sees it (its layout and budgets)."""
    r, why = choose_recurrence(spec, device, math)
    return (None if r is None else kernel_of(r)), why


def tensor_cores(spec, units, device, registers, cluster=False):
    r = tensor_core_recurrence(spec, units, device, registers, cluster)
    return None if r is None else kernel_of(r)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("layers, bidir, bias, batch_first", [(1, False, True, False), (2, True, False, True),
                                                              (3, True, True, False)])
def test_reference_matches_torch(cell, layers, bidir, bias, batch_first):
    spec = rp.RNNSpec(cell=cell, input_size=7, hidden_size=13, num_layers=layers, seq_len=6, batch=3,
                      bidirectional=bidir, bias=bias, batch_first=batch_first)
    module = torch_module(spec, 1)
    x, state = random_inputs(spec, 2, with_state=layers != 2)
    for passes in (None, (), ("pretranspose",)):
        plan = build_plan(spec, passes=passes, options=PERSISTENT)
        got = rp.Executor(plan, rp.Weights.from_torch(module, spec), backend="numpy").run(x, state)
        assert_same_result(got, run_torch(module, x, state), 1e-5)


def test_plan_shape_and_summary():
    spec = rp.RNNSpec(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=100, batch=1,
                      bidirectional=True)
    plan = build_plan(spec, options=PERSISTENT)
    assert [s.kind for s in plan.steps] == ["gemm", "gemm", "recurrent"]
    assert plan.stats.critical_path == 2
    r = plan.steps[-1].recurrence
    assert r.units_per_block * (DEFAULT_DEVICE.sms // 4) >= 256
    summary = rp.summarize(plan)
    assert "1 kernel" in summary and "lowering=persistent" in summary
    held = "registers" if kernel_of(r).weights_in_registers else "shared memory"
    assert f"weights held in {held}" in summary  # what the kernel does, not one fixed phrase
    assert rp.load_plan(plan.to_json()) == plan
    gemm = plan.steps[0]
    assert gemm.gemm.m == 100 and gemm.gemm.n == 1024  # layer 0's input projection, all steps at once


def test_fit_decisions_say_why():
    small = rp.RNNSpec(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=10, batch=1)
    rec, why = choose(small)
    assert rec is not None and rec.units_per_block > 0 and "fit on-chip" in why and "MiB" in why
    big = rp.RNNSpec(cell="lstm", input_size=2048, hidden_size=2048, num_layers=4, seq_len=10, batch=1)
    rec, why = choose(big)
    assert rec is None and "KiB of shared memory per block" in why
    with pytest.raises(ValueError, match="lowering='persistent' does not fit"):
        build_plan(big, options=PERSISTENT)
    tiny_gpu = DeviceShape(name="a small GPU", sms=2, smem_per_block=48 * 1024)
    assert choose(small.model_copy(update={"num_layers": 3}), tiny_gpu)[0] is None


def test_auto_lowering_decides_and_says_why():
    small = rp.RNNSpec(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=10, batch=1)
    h200 = DEFAULT_DEVICE
    assert choose_lowering(small, rp.PlanOptions(lowering="auto"))[0] == "graph"  # no device described
    lowering, why = choose_lowering(small, rp.PlanOptions(lowering="auto", device=h200))
    assert lowering == "persistent" and "fit on-chip" in why
    wide = small.model_copy(update={"batch": AUTO_MAX_BATCH["float32"] + 1})
    lowering, why = choose_lowering(wide, rp.PlanOptions(lowering="auto", device=h200))
    assert lowering == "graph" and "batch" in why
    assert choose_lowering(rp.PAPER_SPEC, rp.PlanOptions(lowering="auto", device=h200))[0] == "graph"
    # tf32 operands run the tensor-core kernel, which measured faster up to batch 64 (crossover.py)
    tf32 = rp.PlanOptions(lowering="auto", device=h200, math="tf32")
    assert choose_lowering(wide, tf32)[0] == "persistent"
    lowering, why = choose_lowering(small.model_copy(update={"batch": TF32_AUTO_MAX_BATCH + 1}), tf32)
    assert lowering == "graph" and "(tf32)" in why
    no_coop = h200.model_copy(update={"cooperative_launch": False})
    assert "cooperative" in choose_lowering(small, rp.PlanOptions(lowering="auto", device=no_coop))[1]
    plan = build_plan(small, options=rp.PlanOptions(lowering="auto", device=h200))
    assert plan.lowering == "persistent" and "fit on-chip" in plan.lowering_reason
    assert "lowering       persistent: auto: recurrent weights" in rp.summarize(plan)
    assert "persistent lowering: auto: recurrent weights" in rp.viz.to_dot(plan)
    assert build_plan(wide, options=rp.PlanOptions(lowering="auto", device=h200)).lowering == "graph"


def test_inspection_of_a_persistent_plan(tmp_path):
    from rnnplan.persistent import wavefront
    from rnnplan.viz import predicted_trace, save_wavefront_png, to_dot

    spec = rp.RNNSpec(cell="lstm", input_size=16, hidden_size=32, num_layers=3, seq_len=4, batch=1)
    plan = build_plan(spec, options=PERSISTENT)
    r = plan.steps[-1].recurrence
    levels = wavefront(r)
    assert levels[(0, 0, 0)] == 0 and levels[(2, 0, 3)] == 3 + 2  # one round per step, one per layer
    bidir_plan = build_plan(spec.model_copy(update={"bidirectional": True}), options=PERSISTENT)
    bidir = wavefront(bidir_plan.steps[-1].recurrence)
    assert bidir[(1, 0, 0)] == 4  # layer 1 waits for the whole reverse pass of layer 0
    assert "whole network" in to_dot(plan, view="cell") and "recurrence" in to_dot(plan)
    assert save_wavefront_png(plan, tmp_path / "w.png").stat().st_size > 5000
    spans = [e for e in predicted_trace(plan)["traceEvents"] if e["ph"] == "X"]
    assert spans[-1]["name"] == "recurrence" and spans[-1]["dur"] >= 6 * 2.3


def test_kernel_choice_by_dtype_and_batch():
    base = dict(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=10)
    fp32 = choose(rp.RNNSpec(**base, batch=8))[0]
    assert fp32.batch_tile == 0  # fp32 math is FFMA
    small = choose(rp.RNNSpec(**base, batch=FFMA_MAX_BATCH, dtype="float16"))[0]
    assert small.batch_tile == 0  # fp16 at batch 1-2: FFMA's tagged hand-off is faster (BENCHMARKS.md)
    rec, why = choose(rp.RNNSpec(**base, batch=5, dtype="float16"))
    assert rec.batch_tile == 8 and "tensor cores (fp16), batch tiles of 8" in why
    # The paper configuration fits in fp16 with its weights in registers (the whole batch in one tile),
    # or in shared memory by tiling the batch; in fp32 it does not fit.
    paper16 = rp.PAPER_SPEC.model_copy(update={"dtype": "float16"})
    rec, why = choose(paper16)
    assert rec.weights_in_registers and rec.batch_tile == 64 and "weights in registers" in why
    assert rec.smem_layout()["stage"] == 0  # no weights in shared memory
    held = tensor_cores(paper16, rec.units_per_block, DEFAULT_DEVICE, registers=False)
    assert 8 <= held.batch_tile < 64 and held.shared_memory_bytes <= DEFAULT_DEVICE.smem_per_block
    assert choose(rp.PAPER_SPEC)[0] is None
    # Too many weights per warp for registers (2 layers of 768: 48 fragments a warp): shared memory.
    wide = rp.RNNSpec(cell="lstm", input_size=768, hidden_size=768, num_layers=2, seq_len=10, batch=8, dtype="float16")
    rec = choose(wide)[0]
    assert rec.batch_tile and not rec.weights_in_registers
    assert tensor_cores(wide, rec.units_per_block, DEFAULT_DEVICE, registers=True) is None
    plan = build_plan(rp.RNNSpec(**base, batch=5, dtype="float16"), options=PERSISTENT)
    assert plan.steps[-1].recurrence.batch_tile == 8 and "tensor cores" in plan.lowering_reason


def test_kernel_choice_with_tf32_math():
    """fp32 storage with math="tf32" runs the tensor-core kernel on tf32 operands (k-steps of 8) above
    FFMA_MAX_BATCH; with math="fp32" it stays FFMA (exact fp32 products)."""
    spec = rp.RNNSpec(cell="lstm", input_size=256, hidden_size=256, num_layers=2, seq_len=10, batch=8)
    rec, why = choose(spec, DEFAULT_DEVICE, "tf32")
    assert rec.batch_tile == 8 and rec.weights_in_registers and rec.mma_kstep == 8 and rec.element_bytes == 4
    assert "tensor cores (tf32), batch tiles of 8" in why
    assert choose(spec)[0].batch_tile == 0
    small = spec.model_copy(update={"batch": FFMA_MAX_BATCH})
    ffma_tf32, ffma_fp32 = choose(small, DEFAULT_DEVICE, "tf32")[0], choose(small)[0]
    assert ffma_tf32.batch_tile == 0 and ffma_tf32.math == "tf32" and ffma_fp32.math == "fp32"
    # tf32 math allows the cell's fast exponentials in the FFMA kernel too; strict fp32 keeps the accurate ones
    assert "#define FAST_EXP 1" in kernel_source(ffma_tf32) and "#define FAST_EXP 0" in kernel_source(ffma_fp32)
    assert rec.math == "tf32" and choose(spec.model_copy(update={"dtype": "float16"}))[0].fast_cell
    plan = build_plan(spec, options=rp.PlanOptions(lowering="persistent", math="tf32"))
    assert plan.steps[-1].recurrence == rec.recurrence and "(tf32)" in plan.lowering_reason
    assert build_plan(spec, options=PERSISTENT).steps[-1].recurrence.batch_tile == 0  # the cache keys on math
    # The paper configuration's fp32 weights (28 MiB) fit neither registers nor shared memory per block.
    rec, why = choose(rp.PAPER_SPEC, DEFAULT_DEVICE, "tf32")
    assert rec is None and "28.0 MiB" in why


@pytest.mark.parametrize("kw", [
    dict(cell="lstm", input_size=7, hidden_size=16, num_layers=2, seq_len=9, batch=2),
    dict(cell="gru", input_size=5, hidden_size=12, num_layers=3, seq_len=4, batch=3, bidirectional=True),
    dict(cell="rnn_relu", input_size=4, hidden_size=8, num_layers=1, seq_len=6, batch=1, bias=False),
], ids=lambda kw: kw["cell"])
def test_persistent_plan_from_one_step_equals_the_plan_from_the_whole_graph(kw):
    """build_plan plans the persistent lowering from a one-step graph (its cost does not grow with the
    sequence); for every subset of passes the plan is the one the whole unrolled graph gives."""
    import itertools

    from rnnplan.ir import build
    from rnnplan.lowering.lower import lower
    from rnnplan.lowering.recurrent import persistent_recurrence
    from rnnplan.passes.manager import apply_passes

    spec = rp.RNNSpec(**kw)
    for passes in itertools.chain.from_iterable(itertools.combinations(rp.PASSES, k) for k in range(6)):
        options = rp.PlanOptions(lowering="persistent", device=DEFAULT_DEVICE, passes=passes)
        whole = lower(persistent_recurrence(apply_passes(build(spec), options, check=False), options), options)
        plan = build_plan(spec, options=options)
        assert plan.model_dump(exclude={"lowering", "lowering_reason"}) == whole.model_dump(
            exclude={"lowering", "lowering_reason"}), passes


def test_ffma_weights_in_registers_where_they_fit():
    """The FFMA kernel holds its weights in registers (fp32, a warp's fixed rows) where they and the
    accumulators fit REGISTER_BUDGET, and then keeps none in shared memory; else shared memory."""

    def ffma(**kw):
        return choose(rp.RNNSpec(**{"input_size": kw["hidden_size"], "seq_len": 10, **kw}))
    rec, why = ffma(cell="lstm", num_layers=1, hidden_size=1024, batch=1)
    # 8 units x 4 gates = 32 rows over 8 warps: 4 rows a warp, each 1024 long: 32 values a lane per row
    assert rec.weights_in_registers and rec.ffma_rows_per_warp == 4 and rec.weight_registers == 128
    assert rec.smem_layout()["h"] == 0 and "FFMA, weights in registers" in why and "128 registers" in why
    rec = ffma(cell="lstm", num_layers=4, hidden_size=256, batch=8)[0]  # W_hh and W_ih: 4 x (8 + 8)
    assert rec.weights_in_registers and rec.weight_registers == 64
    rec = ffma(cell="lstm", num_layers=1, hidden_size=1024, batch=8)[0]  # 128 + 2 x 4 x 8 accumulators
    assert rec.weights_in_registers and rec.weight_registers + 2 * 4 * 8 == FFMA_REGISTER_BUDGET
    assert "#define WREG 1" in kernel_source(rec) and "#define KHR 32" in kernel_source(rec)
    rec = ffma(cell="lstm", num_layers=2, hidden_size=768, batch=1, dtype="float16")[0]  # 12 units: 2 x 4 x 48
    assert not rec.weights_in_registers and rec.weight_registers == 384
    assert rec.smem_layout()["h"] == 4 * 12 * (768 + 768) * 2  # fp16 weights in shared memory


def test_ffma_merged_wait_where_it_measured_faster():
    """Above layer 0 the FFMA kernel waits for h and the layer input at once only where each alone has
    more words than threads and both fit one round of in-flight loads (faster there, slower elsewhere)."""
    def merged_wait(r):
        return kernel_of(r).merged_wait

    def ffma(**kw):
        return choose(rp.RNNSpec(**{"input_size": kw["hidden_size"], "seq_len": 10, **kw}))[0]
    assert merged_wait(ffma(cell="rnn_tanh", num_layers=2, hidden_size=512, batch=1))  # 512 + 512 words
    assert merged_wait(ffma(cell="gru", num_layers=2, hidden_size=256, batch=4))  # 1024 + 1024
    assert not merged_wait(ffma(cell="lstm", num_layers=2, hidden_size=256, batch=1))  # 256: a word a thread
    assert not merged_wait(ffma(cell="lstm", num_layers=4, hidden_size=256, batch=8))  # 2048 + 2048: two rounds
    assert not merged_wait(ffma(cell="lstm", num_layers=1, hidden_size=1024, batch=1))  # one layer
    assert "#define MERGED_WAIT 1" in kernel_source(ffma(cell="rnn_tanh", num_layers=2, hidden_size=512, batch=1))


def test_ffma_vector_loads_where_they_measured_faster():
    """The FFMA kernel's 4-value loads: with several batch rows or one weight row a warp (faster on the
    H200), not with one batch row and several weight rows (slower there), and never for rows that are
    not whole runs of 4."""
    def vector_dot(r):
        return kernel_of(r).vector_dot

    def ffma(**kw):
        return choose(rp.RNNSpec(**{"input_size": kw["hidden_size"], "seq_len": 10, **kw}))[0]
    assert vector_dot(ffma(cell="lstm", num_layers=1, hidden_size=1024, batch=8))
    assert vector_dot(ffma(cell="lstm", num_layers=1, hidden_size=256, batch=1))  # 2 units: a row a warp
    assert not vector_dot(ffma(cell="lstm", num_layers=1, hidden_size=1024, batch=1))  # 4 rows a warp
    assert not vector_dot(ffma(cell="gru", num_layers=2, hidden_size=47, batch=8))  # rows of 47
    src = kernel_source(ffma(cell="lstm", num_layers=1, hidden_size=1024, batch=8))
    assert "#define VEC4 1" in src and "#define SPLIT_SUMS 0" in src


@pytest.mark.parametrize("dtype, batch, math", [("float32", 3, "fp32"), ("float32", 20, "tf32"), ("float16", 1, "fp32"),
                                               ("float16", 20, "fp32")])
def test_one_definition_of_the_kernel_layouts(dtype, batch, math):
    spec = rp.RNNSpec(cell="gru", input_size=12, hidden_size=47, num_layers=2, seq_len=3, batch=batch,
                      bidirectional=True, dtype=dtype)
    r = choose(spec, DEFAULT_DEVICE, math)[0]
    assert bool(r.batch_tile) == (batch > FFMA_MAX_BATCH and (dtype, math) != ("float32", "fp32"))
    layout = r.smem_layout()
    offsets = [v for k, v in layout.items() if k != "end"]
    assert offsets == sorted(offsets) and all(v % 16 == 0 for v in offsets)
    assert layout["end"] == r.shared_memory_bytes
    src = kernel_source(r)
    for k, v in layout.items():  # the kernel reads its offsets from the layout, never recomputes them
        assert (f"#define OFF_{k.upper()} {v}\n" in src) == (k != "end")
    size, zeroed = r.exchange_bytes
    if r.batch_tile:  # counters are zeroed per run; h rows are 16-byte aligned, in the storage type
        assert zeroed == r.exchange_counter_bytes < size and r.exchange_stride * r.element_bytes % 16 == 0
        # staged rows 16 bytes past a multiple of 128: the 8 rows of an ldmatrix hit different banks
        assert r.stage_stride * r.element_bytes % 128 == 16 and r.stage_stride >= sum(r.mma_k)
        assert all(k % r.mma_kstep == 0 for k in r.mma_k) and r.mma_kstep * r.element_bytes == 32
    else:  # one tagged 8-byte word per value, all zeroed
        assert zeroed == size == len(r.chains) * r.seq_len * r.batch * r.hidden * 8


def test_tensor_core_work_split():
    """Weights in shared memory: each warp owns (m-tile, n-group) jobs; k is split only when jobs are
    fewer than warps, and then the later k-slices get partial-sum slots of their own in shared memory
    (no atomics)."""
    paper16 = rp.PAPER_SPEC.model_copy(update={"dtype": "float16"})
    paper = tensor_cores(paper16, 16, DEFAULT_DEVICE, registers=False)
    m_tiles, n_tiles = paper.mma_rows // 16, paper.batch_tile // 8
    groups, k_split = paper.mma_split
    assert (groups, k_split) == (2, 1) and m_tiles * groups == 8 and n_tiles % groups == 0
    layout = paper.smem_layout()
    assert layout["partial"] == layout["bias"]  # no k-split, no partial sums
    small = tensor_cores(rp.RNNSpec(cell="lstm", input_size=256, hidden_size=256, num_layers=4, seq_len=10,
                                              batch=8, dtype="float16"), 8, DEFAULT_DEVICE, registers=False)
    assert small.mma_split == (1, 4)  # 2 m-tiles x 1 n-tile: k split four ways to use 8 warps
    layout = small.smem_layout()
    assert layout["bias"] - layout["partial"] == 3 * 2 * small.batch_tile * small.sum_stride * 4


@pytest.mark.parametrize("kw, group, split, ksteps, dtype", [
    # paper: 2 pairs of m-tiles x (h, layer input) x 2 k-slices = 8 warps, each holding 2 x 16 fragments
    (dict(cell="lstm", num_layers=4, hidden_size=512, batch=64), 2, (1, 2), 16, "float16"),
    # one layer: no layer-input part; 2 m-tiles, one n-tile: k split four ways (16 fragments a warp)
    (dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8), 1, (1, 4), 16, "float16"),
    # the same in tf32: fragments cover k-steps of 8, so twice as many a warp (32)
    (dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8), 1, (1, 4), 32, "float32"),
    # GRU: 3 m-tiles (no pairs) x 2 parts = 6 warps busy, each holding 32 fragments
    (dict(cell="gru", num_layers=4, hidden_size=512, batch=64), 1, (1, 1), 32, "float16"),
])
def test_tensor_core_work_split_with_weights_in_registers(kw, group, split, ksteps, dtype):
    """A warp's job is fixed for the run: `mma_mgroup` m-tiles, one part (h or layer input), one k-slice
    of it, every n-tile of the batch tile; its fragments stay in registers, within REGISTER_BUDGET."""
    r = choose(rp.RNNSpec(**kw, input_size=kw["hidden_size"], seq_len=10, dtype=dtype), DEFAULT_DEVICE,
                          "tf32")[0]
    assert r.weights_in_registers and r.registers_fit
    assert (r.mma_mgroup, r.mma_split, r.register_ksteps) == (group, split, ksteps)
    assert r.mma_rows // 16 // group * r.mma_parts * r.mma_split[1] <= KERNEL_WARPS
    assert 4 * group * (r.register_ksteps + r.mma_nchunk) <= REGISTER_BUDGET
    layout = r.smem_layout()
    assert layout["stage"] == layout["weights"] == 0
    # the whole batch in one tile, units in 16-byte runs: layer 0 prefetches its input projection
    assert r.prefetches_xproj == (r.batch <= r.batch_tile and r.units_per_block * r.element_bytes % 16 == 0)
    assert layout["end"] - layout["xproj"] == (r.batch_tile * r.mma_rows * r.element_bytes if r.prefetches_xproj else 0)
    assert layout["bias"] - layout["partial"] == (split[1] - 1) * 2 * r.batch_tile * r.sum_stride * 4


@pytest.mark.parametrize("kw", [dict(cell="lstm", num_layers=4, hidden_size=512, batch=64, dtype="float16"),
                                dict(cell="gru", num_layers=4, hidden_size=512, batch=64, dtype="float16"),
                                dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8, dtype="float16"),
                                dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8, dtype="float32"),
                                dict(cell="lstm", num_layers=2, hidden_size=512, batch=8, dtype="float32")], ids=str)
def test_register_held_weights_compile_without_spills(kw, tmp_path):
    """The register budget holds in the compiled kernel: ptxas keeps every held fragment in registers
    (fp16 and, for fp32 storage, tf32 operands)."""
    r = choose(rp.RNNSpec(**kw, input_size=kw["hidden_size"], seq_len=10), DEFAULT_DEVICE, "tf32")[0]
    assert r.weights_in_registers
    (tmp_path / "k.cu").write_text(kernel_source(r))
    out = subprocess.run([nvcc(), "-arch=sm_90", "-cubin", "-o", str(tmp_path / "k.cubin"), "-Xptxas", "-v",
                          str(tmp_path / "k.cu")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in out.stderr, out.stderr


def _variant(kind, **kw):
    """A kernel configuration by kind: "ffma" / "ffma_registers" / "ffma_tf32" (FFMA whatever the dtype,
    weights in shared memory / registers / registers with tf32 math), "registers" / "shared" (the
    tensor-core kernel holding its weights so; fp32 storage means tf32 operands)."""
    from rnnplan.persistent import recurrence_of

    spec = rp.RNNSpec(**{"input_size": kw["hidden_size"], "seq_len": 5, **kw})
    units = choose(spec, DEFAULT_DEVICE, "tf32")[0].units_per_block
    if kind.startswith("ffma"):
        r = recurrence_of(spec, units, registers=kind != "ffma", math="tf32" if kind == "ffma_tf32" else "fp32")
        return r if kernel_of(r).registers_fit or not r.weights_in_registers else None
    if kind.startswith("cluster"):  # the chain's blocks in one cluster (most blocks that fit), any batch
        from rnnplan.persistent.select import cluster_units

        for units in cluster_units(spec, DEFAULT_DEVICE):
            r = tensor_cores(spec, units, DEFAULT_DEVICE, registers=kind == "cluster_registers", cluster=True)
            if r is not None and r.fit(DEFAULT_DEVICE).ok:
                return r
        return None
    return tensor_cores(spec, units, DEFAULT_DEVICE, registers=kind == "registers")


@pytest.mark.parametrize("kind, kw", [
    ("ffma", dict(cell="gru", num_layers=3, hidden_size=47, batch=5, bidirectional=True)),  # scalar loads, split sums
    ("ffma", dict(cell="lstm", num_layers=1, hidden_size=256, batch=1)),  # vector loads, projection prefetched
    ("ffma", dict(cell="lstm", num_layers=2, hidden_size=128, batch=8, dtype="float16")),  # fp16 vector loads
    ("ffma", dict(cell="lstm", num_layers=1, hidden_size=512, batch=64)),  # too many values to prefetch
    ("ffma", dict(cell="rnn_relu", num_layers=2, hidden_size=20, batch=2, bias=False)),
    ("ffma_registers", dict(cell="lstm", num_layers=1, hidden_size=1024, batch=1)),  # 4 rows a warp, 128 registers
    ("ffma_registers", dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8)),  # the budget: 128 + 64
    ("ffma_registers", dict(cell="lstm", num_layers=2, hidden_size=512, batch=8)),  # 128 + 64, both parts
    ("ffma_registers", dict(cell="lstm", num_layers=4, hidden_size=256, batch=8)),  # vector loads, both parts
    ("ffma_registers", dict(cell="gru", num_layers=3, hidden_size=47, batch=5, bidirectional=True)),  # 2 sets of rows
    ("ffma_registers", dict(cell="lstm", num_layers=2, hidden_size=128, batch=2, dtype="float16")),
    ("ffma_tf32", dict(cell="lstm", num_layers=2, hidden_size=256, batch=1)),  # fast exponentials, fp32 storage
    ("ffma_registers", dict(cell="rnn_tanh", num_layers=2, hidden_size=512, batch=1)),  # one wait for h and x
    ("shared", dict(cell="lstm", num_layers=2, hidden_size=256, batch=72, dtype="float16")),
    ("shared", dict(cell="gru", num_layers=2, hidden_size=72, batch=70, bidirectional=True)),  # tf32
    ("registers", dict(cell="rnn_tanh", num_layers=3, hidden_size=100, batch=13, bidirectional=True)),  # tf32
    ("registers", dict(cell="lstm", num_layers=2, hidden_size=256, batch=16)),  # tf32, projection prefetched
    # variable lengths: the masked cell (reads h_prev), the last layer's y, h_n apart
    ("ffma_registers", dict(cell="lstm", num_layers=2, hidden_size=128, batch=2, variable_lengths=True)),
    ("registers", dict(cell="lstm", num_layers=2, hidden_size=256, batch=16, variable_lengths=True,
                       bidirectional=True)),
    ("shared", dict(cell="gru", num_layers=2, hidden_size=256, batch=64, dtype="float16", variable_lengths=True)),
    # projections (the FFMA kernel's second hand-off and W_hr in shared memory)
    ("ffma", dict(cell="lstm", num_layers=3, hidden_size=1024, proj_size=256, batch=1, dtype="float16")),
    ("ffma", dict(cell="lstm", num_layers=3, hidden_size=1024, proj_size=256, batch=16, dtype="bfloat16")),
    ("ffma_registers", dict(cell="lstm", num_layers=2, hidden_size=100, proj_size=37, batch=3, bidirectional=True)),
    ("ffma", dict(cell="lstm", num_layers=2, hidden_size=96, proj_size=32, batch=4, variable_lengths=True)),
    # projections on the tensor-core kernel (the cell's h handed over with counters, the projection on mma:
    # one n-tile and eight k-slices at batch 1, two n-tiles at 16, eight n-tiles and one slice at 64)
    ("shared", dict(cell="lstm", num_layers=3, hidden_size=1024, proj_size=256, batch=1, dtype="float16")),
    ("shared", dict(cell="lstm", num_layers=2, hidden_size=256, proj_size=64, batch=64, dtype="bfloat16")),
    ("shared", dict(cell="lstm", num_layers=3, hidden_size=1024, proj_size=256, batch=16, dtype="float16")),
    ("shared", dict(cell="lstm", num_layers=3, hidden_size=1024, proj_size=256, batch=8, dtype="bfloat16")),
    ("registers", dict(cell="lstm", num_layers=2, hidden_size=100, proj_size=37, batch=9, bidirectional=True)),
    ("registers", dict(cell="lstm", num_layers=2, hidden_size=96, proj_size=32, batch=12, dtype="float16",
                       variable_lengths=True)),
    # the cluster hand-off (h through distributed shared memory): one layer, a layer above, both
    # directions, the masked cell, GRU's h_prev, tf32, weights in shared memory
    ("cluster_registers", dict(cell="lstm", num_layers=1, hidden_size=512, batch=8, dtype="float16")),
    ("cluster_registers", dict(cell="lstm", num_layers=2, hidden_size=256, batch=1, dtype="bfloat16")),
    ("cluster_registers", dict(cell="gru", num_layers=2, hidden_size=128, batch=16, bidirectional=True,
                               dtype="float16", variable_lengths=True)),
    ("cluster_registers", dict(cell="lstm", num_layers=2, hidden_size=256, batch=8)),  # tf32
    ("cluster_shared", dict(cell="lstm", num_layers=1, hidden_size=512, batch=16, dtype="float16")),
], ids=lambda v: v if isinstance(v, str) else f"{v['cell']}-{v['num_layers']}x{v['hidden_size']}-B{v['batch']}"
                                                f"-{v.get('dtype', 'float32')}{'-varlen' * v.get('variable_lengths', 0)}"
                                                f"{'-proj' * bool(v.get('proj_size'))}")
def test_every_kernel_variant_compiles_cleanly(kind, kw, tmp_path):
    """Both kernels' generated sources, over the switches their #defines turn (vector or scalar loads,
    split or summed gate parts, the projection prefetched or not, fp16 or tf32 operands, weights in
    registers or shared memory), compile for sm_90 without warnings or spills."""
    r = _variant(kind, **kw)
    assert r is not None and bool(r.batch_tile) == (not kind.startswith("ffma"))
    (tmp_path / "k.cu").write_text(kernel_source(r))
    out = subprocess.run([nvcc(), "-std=c++17", "-arch=sm_90", "-cubin", "-o", str(tmp_path / "k.cubin"), "-Xptxas",
                          "-v", str(tmp_path / "k.cu")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in out.stderr, out.stderr


def test_the_planner_plans_for_the_device_it_is_given(monkeypatch):
    """The planner probes no hardware: it plans for the device the options describe (graph without
    one, for "auto"). `rp.build_plan` is where the local GPU is described and handed to it."""
    import rnnplan.api

    small = rp.RNNSpec(cell="lstm", input_size=32, hidden_size=32, num_layers=2, seq_len=5, batch=1)
    plan = build_plan(small)
    assert plan.lowering == "graph" and "no CUDA device" in plan.lowering_reason and plan.options.device is None
    on_h200 = rp.PlanOptions(device=DEFAULT_DEVICE)
    plan = build_plan(small, options=on_h200)
    assert plan.lowering == "persistent" and plan.lowering_reason.startswith("auto: recurrent weights")
    assert build_plan(small, passes=(), options=on_h200).lowering == "graph"  # a pass study keeps its kernels
    assert build_plan(small, options=on_h200.model_copy(update={"lowering": "graph"})).lowering == "graph"
    # The public entry point fills in the machine's GPU (a stand-in for one here) and plans for it.
    monkeypatch.setattr(rnnplan.api, "local_device", lambda: DEFAULT_DEVICE)
    plan = rp.build_plan(small)
    assert plan.options.device == DEFAULT_DEVICE and plan.lowering == "persistent"
    monkeypatch.setattr(rnnplan.api, "local_device", lambda: None)
    assert rp.build_plan(small).lowering == "graph" and rp.build_plan(small).options.device is None


@pytest.mark.parametrize("kw, kernel", [
    (dict(cell="lstm", num_layers=1, hidden_size=1024, batch=1), "1 kernel (FFMA), 128 blocks of 8 hidden units, "
                                                                 "weights held in registers"),
    (dict(cell="lstm", num_layers=2, hidden_size=768, batch=1, dtype="float16"), "weights held in shared memory"),
    (dict(cell="lstm", num_layers=4, hidden_size=512, batch=64, dtype="float16"),
     "1 kernel (tensor cores (fp16), batch tiles of 64), 128 blocks of 16 hidden units, weights held in registers"),
], ids=["ffma-registers", "ffma-shared", "mma-registers"])
def test_summary_says_which_kernel_and_where_its_weights_are(kw, kernel):
    plan = build_plan(rp.RNNSpec(**kw, input_size=kw["hidden_size"], seq_len=10), options=PERSISTENT)
    line = next(line for line in rp.summarize(plan).splitlines() if line.startswith("persistent"))
    assert kernel in line


@pytest.mark.parametrize("batch", [1, 16])
def test_a_new_length_compiles_nothing(batch):
    """The sequence length is the kernels' argument: plans of two lengths run the same kernel (source and
    name), so a call at a new length finds it compiled (issue 17, item 2)."""
    def kernel(steps):
        spec = rp.RNNSpec(cell="lstm", input_size=64, hidden_size=128, num_layers=2, seq_len=steps, batch=batch)
        return choose(spec, DEFAULT_DEVICE, "tf32")[0]
    short, long = kernel(3), kernel(250)
    assert short.seq_len != long.seq_len and bool(short.batch_tile) == (batch > FFMA_MAX_BATCH)
    assert kernel_source(short) == kernel_source(long) and kernel_name(short) == kernel_name(long)
    assert "#define T " not in kernel_source(short)
