"""Where the persistent lowering stops beating the graph lowering as the batch grows, measured and
predicted in one run (issue 19, item 6: "auto's crossover re-measured up to batch 256").

    python3 benchmarks/crossover.py [--out OUT.json] [--repeats 30]

For each configuration, precision and batch: both lowerings planned (the persistent one where it
fits), timed as the matrix times them (`Executor.run`, CUDA events, median of `repeats` over rotated
inputs already on the GPU), and predicted by the planner's cost model (`rnnplan.lowering.cost`);
with what `lowering="auto"` plans. A line per row, then per configuration the measured and the
predicted crossover batch.
"""

import argparse
import json

import cupy as cp
import numpy as np

import rnnplan as rp
from rnnplan.bench import median_ms
from rnnplan.bench.harness import DTYPES, MATHS
from rnnplan.bench.predictions import CROSSOVER_CONFIGS, CROSSOVER_PRECISIONS
from rnnplan.lowering.cost import predicted_ms

CONFIGS, PRECISIONS = CROSSOVER_CONFIGS, CROSSOVER_PRECISIONS
BATCHES = (8, 16, 32, 64, 96, 128, 192, 256)


def timed(spec: rp.RNNSpec, lowering: str, math: str, repeats: int):
    try:
        plan = rp.build_plan(spec, options=rp.PlanOptions(lowering=lowering, math=math))
    except ValueError as e:  # the persistent lowering does not fit
        return None, None, str(e).split(": ", 1)[-1][:80]
    ex = rp.Executor(plan, rp.Weights.random(spec, seed=0), backend="cupy")
    rng = np.random.default_rng(0)
    xs = [cp.asarray(rng.standard_normal((spec.seq_len, spec.batch, spec.input_size)), spec.dtype) for _ in range(3)]
    return median_ms(lambda i: ex.run(xs[i % 3]), repeats), predicted_ms(plan), ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rows = []
    for name, kw in CONFIGS.items():
        for prec in PRECISIONS:
            math = MATHS[prec]
            for batch in BATCHES:
                spec = rp.RNNSpec(**kw, batch=batch, seq_len=100, dtype=DTYPES[prec])
                g, gp, _ = timed(spec, "graph", math, args.repeats)
                p, pp, why = timed(spec, "persistent", math, args.repeats)
                auto = rp.build_plan(spec, options=rp.PlanOptions(math=math)).lowering
                rows.append(dict(config=name, precision=prec, batch=batch, graph_ms=g, graph_pred_ms=gp,
                                 persistent_ms=p, persistent_pred_ms=pp, persistent_why=why, auto=auto))
                pers = f"{p:.3f} (pred {pp:.3f})" if p else f"- ({why})"
                print(f"{name} {prec} B{batch}: graph {g:.3f} (pred {gp:.3f}), persistent {pers}, auto {auto}",
                      flush=True)
    for name in CONFIGS:
        for prec in PRECISIONS:
            sel = [r for r in rows if r["config"] == name and r["precision"] == prec]
            measured = [r["batch"] for r in sel if r["persistent_ms"] and r["persistent_ms"] < r["graph_ms"]]
            predicted = [r["batch"] for r in sel if r["persistent_pred_ms"] and r["persistent_pred_ms"] < r["graph_pred_ms"]]
            agree = sum((r["persistent_ms"] is not None and r["persistent_ms"] < r["graph_ms"])
                        == (r["persistent_pred_ms"] is not None and r["persistent_pred_ms"] < r["graph_pred_ms"])
                        for r in sel)
            print(f"{name} {prec}: persistent faster at B {measured or '-'}; predicted at B {predicted or '-'}; "
                  f"the model ranks {agree} of {len(sel)} rows right")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
