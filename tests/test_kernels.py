"""Generated CUDA sources: one C expression per pointwise op, and every kernel compiles with nvcc."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rnnplan as rp
from rnnplan.backends.kernels import C_OPS, kernel_key, plan_kernels, vector_width
from rnnplan.ir import POINTWISE_OPS

NVCC = shutil.which("nvcc")


def test_every_pointwise_op_has_a_c_expression():
    assert set(C_OPS) == set(POINTWISE_OPS)


def test_vector_width_and_broadcast():
    plan = rp.build_plan(rp.PAPER_SPEC)
    fused = next(s for s in plan.steps if s.kind == "fused")
    key = kernel_key(fused, "float32")
    assert key.vec == 4 and vector_width(fused) == 4
    assert sum(key.broadcast) == 8  # the eight bias rows
    odd = rp.build_plan(rp.RNNSpec(cell="gru", input_size=3, hidden_size=5, num_layers=1, seq_len=2, batch=2))
    assert {kernel_key(s, "float32").vec for s in odd.steps if s.kind != "gemm"} == {1}


def test_persistent_plan_lists_its_kernel():
    spec = rp.RNNSpec(cell="lstm", input_size=16, hidden_size=32, num_layers=2, seq_len=3, batch=1)
    sources = plan_kernels(rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent")))
    assert len(sources) == 1
    name, src = next(iter(sources.items()))
    assert name.startswith("rnnplan_recurrent_") and f"void __launch_bounds__(256, 1) {name}(" in src


def test_kernels_are_shared_between_cell_steps():
    assert len(plan_kernels(rp.build_plan(rp.PAPER_SPEC))) == 1
    assert len(plan_kernels(rp.build_plan(rp.PAPER_SPEC, passes=()))) >= 4


@pytest.mark.skipif(NVCC is None and not os.environ.get("CI"), reason="nvcc not installed")
def test_cli_kernels_compile_with_nvcc(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    specs = [[], ["--passes", "none", "--seq-len", "3"], ["--cell", "gru", "--dtype", "float16"],
             ["--cell", "rnn_relu", "--hidden-size", "13", "--input-size", "7", "--dtype", "float16", "--passes", "none",
              "--seq-len", "2", "--no-bias"],
             ["--lowering", "persistent", "--batch", "2", "--hidden-size", "128", "--input-size", "64", "--bidirectional"],
             ["--lowering", "persistent", "--cell", "gru", "--batch", "3", "--hidden-size", "40", "--dtype", "float16",
              "--layers", "1", "--seq-len", "4"]]
    for i, flags in enumerate(specs):
        r = subprocess.run([sys.executable, "-m", "rnnplan.cli", "kernels", "--out", str(tmp_path / str(i)), *flags],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
    sources = sorted(tmp_path.glob("*/*.cu"))
    assert len(sources) >= 8 and sum("recurrent" in src.name for src in sources) == 2
    for src in sources:
        r = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-c", str(src), "-o", str(src.with_suffix(".o"))],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{src.name}: {r.stderr[:2000]}"
