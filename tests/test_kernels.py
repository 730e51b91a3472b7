"""Generated CUDA sources: one C expression per pointwise op, and every kernel compiles with nvcc."""

import subprocess
import sys

import rnnplan as rp
from rnnplan.backends.kernels import kernel_key, plan_kernels, vector_width
from rnnplan.ir import POINTWISE_OPS
from rnnplan.lowering import build_plan  # the planner itself: hardware-free
from tests.helpers import nvcc, subprocess_env


def test_every_pointwise_op_has_its_forms_side_by_side():
    for op in POINTWISE_OPS.values():
        args = [f"a{i}" for i in range(op.arity)]
        assert callable(op.numpy) and all(a in op.c_expr(*args) for a in args), op.name


def test_vector_width_and_broadcast():
    plan = build_plan(rp.PAPER_SPEC)
    fused = next(s for s in plan.steps if s.kind == "fused")
    key = kernel_key(fused, "float32")
    assert key.vec == 4 and vector_width(fused) == 4
    assert sum(key.broadcast) == 8  # the eight bias rows
    odd = build_plan(rp.RNNSpec(cell="gru", input_size=3, hidden_size=5, num_layers=1, seq_len=2, batch=2))
    assert {kernel_key(s, "float32").vec for s in odd.steps if s.kind != "gemm"} == {1}


def test_persistent_plan_lists_its_kernel():
    spec = rp.RNNSpec(cell="lstm", input_size=16, hidden_size=32, num_layers=2, seq_len=3, batch=1)
    sources = plan_kernels(build_plan(spec, options=rp.PlanOptions(lowering="persistent")))
    assert len(sources) == 1
    name, src = next(iter(sources.items()))
    assert name.startswith("rnnplan_recurrent_") and f"#define KERNEL_NAME {name}\n" in src
    assert "void __launch_bounds__(NTHREADS, 1) KERNEL_NAME(" in src and "#define NTHREADS 256\n" in src


def test_kernels_are_shared_between_cell_steps():
    assert len(plan_kernels(build_plan(rp.PAPER_SPEC))) == 1
    assert len(plan_kernels(build_plan(rp.PAPER_SPEC, passes=()))) >= 4


def test_cli_kernels_compile_with_nvcc(tmp_path):
    env = subprocess_env()
    specs = [["--lowering", "graph"], ["--passes", "none", "--seq-len", "3"],  # graph: on any machine
             ["--cell", "gru", "--dtype", "float16", "--lowering", "graph"],
             ["--cell", "rnn_relu", "--hidden-size", "13", "--input-size", "7", "--dtype", "float16", "--passes", "none",
              "--seq-len", "2", "--no-bias"],
             ["--lowering", "persistent", "--batch", "2", "--hidden-size", "128", "--input-size", "64", "--bidirectional"],
             ["--lowering", "persistent", "--cell", "gru", "--batch", "3", "--hidden-size", "40", "--dtype", "float16",
              "--layers", "1", "--seq-len", "4"],
             ["--variable-lengths", "--cell", "gru", "--seq-len", "4", "--dtype", "float16"],  # masks: column reads
             ["--variable-lengths", "--passes", "none", "--seq-len", "2", "--hidden-size", "7"],
             ["--dtype", "bfloat16", "--lowering", "graph", "--variable-lengths"],  # bf16: loads, stores, masks
             ["--lowering", "persistent", "--dtype", "bfloat16", "--batch", "8", "--hidden-size", "64"],  # bf16 mma
             ["--lowering", "persistent", "--dtype", "bfloat16", "--batch", "1", "--hidden-size", "64",
              "--cell", "gru"]]  # bf16 FFMA
    for i, flags in enumerate(specs):
        r = subprocess.run([sys.executable, "-m", "rnnplan.cli", "kernels", "--out", str(tmp_path / str(i)), *flags],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
    sources = sorted(tmp_path.glob("*/*.cu"))
    assert len(sources) >= 11 and sum("recurrent" in src.name for src in sources) == 4
    for src in sources:
        r = subprocess.run([nvcc(), "-arch=sm_90", "-std=c++17", "-c", str(src), "-o", str(src.with_suffix(".o"))],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{src.name}: {r.stderr[:2000]}"


def test_the_copy_kernel_compiles_cleanly(tmp_path):
    """`backends/cuda/copies.cu` (a drop-in call's copies in one launch) compiles for sm_90 without
    warnings or spills; its job rows have the 7 words pointer_call writes."""
    from importlib.resources import files

    for name in ("copies.cu", "packed.cu"):  # packed.cu: a PackedSequence in and out in one launch each
        src = tmp_path / name
        src.write_text((files("rnnplan.backends") / "cuda" / name).read_text())
        r = subprocess.run([nvcc(), "-arch=sm_90", "-cubin", "-Xptxas", "-v", str(src), "-o",
                            str(tmp_path / f"{name}.cubin")], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        assert "0 bytes spill stores" in r.stderr
    assert "7 words" in (tmp_path / "copies.cu").read_text()
