"""The tensor-core persistent kernel with the cluster hand-off (a chain's blocks in one thread-block
cluster, h through distributed shared memory) against the same kernel handing h over through global
memory (the planner's choice on a device described without clusters), and cuDNN, in one run.

    python3 benchmarks/cluster_bench.py [--out OUT.json] [--precision fp16 bf16 tf32] [--only TEXT ...] [--any-shape]

Each kernel is checked against strict fp32 torch before it is timed (Executor.run on device tensors,
median of 30 after warm-up, CUDA events); cuDNN eager and cuDNN replayed from a CUDA graph are timed
in the same process. Rows where no cluster kernel fits say why (`cluster_recurrence`).
"""

import argparse
import json

import numpy as np
import torch

import rnnplan as rp
from rnnplan.backends import describe_device
from rnnplan.bench.harness import (
    DTYPES,
    MATHS,
    TOL,
    config,
    cudnn_module,
    cudnn_times,
    device_tensor,
    environment,
    host_float32,
    median_ms,
    rel_err,
    strict_reference,
)
from rnnplan.persistent import kernel_of, select

ROWS = [
    config("lstm", 1, 512, 1), config("lstm", 1, 512, 8), config("lstm", 1, 512, 16), config("lstm", 1, 512, 32),
    config("lstm", 1, 256, 8), config("lstm", 2, 256, 1), config("lstm", 2, 256, 8), config("lstm", 4, 256, 8),
    config("lstm", 1, 512, 8, bidirectional=True), config("gru", 1, 512, 8), config("gru", 2, 256, 4),
    config("rnn_tanh", 2, 512, 1), config("lstm", 2, 512, 8), config("lstm", 1, 512, 64), config("lstm", 1, 256, 32),
    config("lstm", 4, 256, 16), config("gru", 2, 256, 16), config("lstm", 3, 128, 16),
]


def timed(torch, plan, weights, xs_t, want, precision, repeats):
    ex = rp.Executor(plan, weights, backend="cupy")
    ex.impl.poison()
    err = rel_err(host_float32(torch, ex.run(xs_t[0])[0]), want)
    assert err <= TOL[precision], err
    ms = median_ms(lambda i: ex.run(xs_t[i % len(xs_t)]), repeats)
    k = kernel_of(next(s.recurrence for s in plan.steps if s.recurrence))
    ex.impl.close()
    return ms, err, k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--precision", nargs="*", default=["fp16", "bf16"])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--any-shape", action="store_true",
                    help="plan the cluster kernel past the planner's batch and layer limits (to re-measure them)")
    args = ap.parse_args()
    if args.any_shape:
        select.CLUSTER_MAX_BATCH = select.CLUSTER_MAX_LAYERS = 10**6
    device = describe_device()
    plain = device.model_copy(update={"cluster_blocks": 0, "max_clusters": 0})
    results = []
    for label, kw in ROWS:
        if args.only and not any(o in label for o in args.only):
            continue
        for precision in args.precision:
            spec = rp.RNNSpec(**kw, dtype=DTYPES[precision])
            math = MATHS[precision]
            module = cudnn_module(torch, spec, precision)
            weights = rp.Weights.from_torch(module, spec)
            rng = np.random.default_rng(0)
            xs = [rng.standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype) for _ in range(4)]
            want = strict_reference(torch, module, xs[0])
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            xs_t = [device_tensor(torch, x) for x in xs]
            row = dict(row=label, precision=precision)
            for name, on in (("cluster", device), ("global", plain)):
                try:
                    plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math=math, device=on))
                except ValueError as e:
                    row[f"{name}_why"] = str(e)
                    continue
                ms, err, k = timed(torch, plan, weights, xs_t, want, precision, args.repeats)
                if name == "cluster" and not k.cluster:
                    row["cluster_why"] = "no cluster kernel fits: " + plan.lowering_reason
                    continue
                held = "registers" if k.weights_in_registers else "shared"
                kind = f"mma tile {k.batch_tile} {held}" if k.batch_tile else f"ffma {held}"
                row |= {f"{name}_ms": ms, f"{name}_err": err,
                        f"{name}_kernel": f"{k.blocks} blocks x {k.units_per_block} units, {kind}"}
            row["cudnn_eager_ms"], row["cudnn_graph_ms"] = cudnn_times(torch, module, xs_t, args.repeats)
            results.append(row)
            cells = [f"{label:<24} {precision}"]
            for name in ("cluster", "global"):
                if f"{name}_ms" in row:
                    cells.append(f"{name} {row[name + '_ms']:.3f} ms ({row[name + '_kernel']}) "
                                 f"x{row['cudnn_graph_ms'] / row[name + '_ms']:.2f}")
                else:
                    cells.append(f"{name}: {row.get(name + '_why', '-')}")
            cells.append(f"cuDNN graph {row['cudnn_graph_ms']:.3f} eager {row['cudnn_eager_ms']:.3f}")
            print(" | ".join(cells), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(torch), "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
