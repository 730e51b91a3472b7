"""Persistent lowering against the graph lowering and cuDNN (eager and CUDA graph), same run, on
small-batch configurations and ANCHORS.md's rows.

    python3 benchmarks/persistent_bench.py [--out OUT.json] [--only TEXT ...] [--precision fp32 tf32 fp16]

Precisions as in rnnplan.bench.matrix: fp32 (strict: PlanOptions(math="fp32"), cuDNN without TF32), tf32 (fp32
storage, PlanOptions(math="tf32"), cuDNN and cuBLAS allowed TF32), fp16. Each row also times the
persistent kernels the planner did not pick, where they fit, on the same plan: the choice is measured.
Where the persistent lowering does not fit, the row times what lowering="auto" runs instead (the graph
lowering) against cuDNN.
"""

import argparse
import dataclasses
import json

import cupy as cp
import numpy as np
import torch

import rnnplan as rp
from rnnplan.backends import describe_device
from rnnplan.bench import (
    ROWS,
    TOL,
    config,
    cudnn_module,
    cudnn_times,
    median_ms,
    rel_err,
    strict_reference,
)
from rnnplan.lowering.recurrent import with_recurrence
from rnnplan.persistent import kernel_of, tensor_core_recurrence

SMALL = [  # small batches, where the persistent kernels are meant to win
    config("lstm", 1, 256, 1),
    config("lstm", 4, 256, 1),
    config("lstm", 1, 1024, 1),
    config("lstm", 4, 256, 8),
    config("lstm", 1, 1024, 8),
    config("lstm", 2, 512, 8),
    config("lstm", 2, 256, 4, bidirectional=True),
    config("gru", 2, 256, 4),
    config("rnn_tanh", 2, 512, 1),
]
ap = argparse.ArgumentParser()
ap.add_argument("--out")
ap.add_argument("--only", nargs="*", help="rows whose label contains one of these")
ap.add_argument("--precision", nargs="*", default=["fp32", "tf32", "fp16"])
args = ap.parse_args()
results = []

for label, kw in SMALL + ROWS:
    if args.only and not any(o in label for o in args.only):
        continue
    for precision in args.precision:
        spec = rp.RNNSpec(**kw, dtype="float16" if precision == "fp16" else "float32")
        math = "tf32" if precision == "tf32" else "fp32"
        try:
            plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math=math))
        except ValueError as e:
            plan, why = None, str(e)
        module = cudnn_module(torch, spec, precision)
        w = rp.Weights.from_torch(module, spec)
        x = np.random.default_rng(0).standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype)
        want = strict_reference(torch, module, x)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        xc = cp.asarray(x)
        graph_ex = rp.Executor(rp.build_plan(spec, options=rp.PlanOptions(lowering="graph", math=math)), w,
                               backend="cupy")
        graph_err = rel_err(graph_ex.run(x)[0].get().astype(np.float32), want)
        theirs_plan = median_ms(lambda i: graph_ex.run(xc), 30)
        eager, cudnn_graph = cudnn_times(torch, module, [torch.as_tensor(x, device="cuda")], 30)
        if plan is None:  # what lowering="auto" runs instead: the graph lowering, against cuDNN
            results.append(dict(row=label, precision=precision, persistent_ms=None, graph_lowering_ms=theirs_plan,
                                cudnn_eager_ms=eager, cudnn_graph_ms=cudnn_graph, rel_err=graph_err, why=why))
            print(f"{label:<30} {precision}: persistent lowering not possible ({why}); graph lowering "
                  f"{theirs_plan:8.3f} ms | cuDNN graph {cudnn_graph:8.3f} | x{cudnn_graph / theirs_plan:.2f} | "
                  f"err {graph_err:.1e}", flush=True)
            continue
        ex = rp.Executor(plan, w, backend="cupy")
        got = ex.run(x)[0].get().astype(np.float32)
        err = rel_err(got, want)
        ours = median_ms(lambda i: ex.run(xc), 30)
        r = kernel_of(next(st.recurrence for st in plan.steps if st.recurrence))
        # The kernels the planner did not pick, on the same plan, where they fit: FFMA (weights in shared
        # memory or registers) and, where tensor cores apply (fp16, tf32), the tensor-core kernel with its
        # weights in registers or shared memory.
        device = describe_device()
        chosen = r.recurrence
        others = {"ffma": dataclasses.replace(chosen, batch_tile=0, weights_in_registers=False),
                  "ffma_registers": dataclasses.replace(chosen, batch_tile=0, weights_in_registers=True)}
        if precision != "fp32":
            others["mma_registers"] = tensor_core_recurrence(spec, r.units_per_block, device, True)
            others["mma_shared"] = tensor_core_recurrence(spec, r.units_per_block, device, False)
        other_ms = {}
        for name, alt in others.items():
            if alt is None or alt == chosen or kernel_of(alt).shared_memory_bytes > device.smem_per_block:
                continue
            alt_ex = rp.Executor(with_recurrence(plan, alt), w, backend="cupy")
            alt_err = rel_err(alt_ex.run(x)[0].get(), want)
            assert alt_err < TOL[precision], (name, alt_err)
            other_ms[name] = median_ms(lambda i: alt_ex.run(xc), 30)
        results.append(dict(row=label, precision=precision, persistent_ms=ours, graph_lowering_ms=theirs_plan,
                            cudnn_eager_ms=eager, cudnn_graph_ms=cudnn_graph, rel_err=err,
                            blocks=r.blocks, units=r.units_per_block, batch_tile=r.batch_tile,
                            weights_in_registers=r.weights_in_registers,
                            **{f"persistent_{k}_ms": other_ms.get(k) for k in others}))
        held = ", registers" if r.weights_in_registers else ""
        kernel = f"mma tile {r.batch_tile}{held}" if r.batch_tile else f"ffma{held}"
        other = "".join(f" | {k} {v:8.3f}" for k, v in other_ms.items())
        print(f"{label:<30} {precision}: persistent {ours:8.3f} ms ({kernel}){other} | graph lowering {theirs_plan:8.3f} | "
              f"cuDNN eager {eager:8.3f} | cuDNN graph {cudnn_graph:8.3f} | x{cudnn_graph / ours:.2f} vs cuDNN graph | "
              f"err {err:.1e} | {r.blocks} blocks x {r.units_per_block} units", flush=True)

if args.out:
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
