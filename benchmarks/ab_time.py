"""Time a fixed set of rows with whichever rnnplan is first on PYTHONPATH, for A/B comparisons of two
versions in one device session (run it alternately with each version's path; compare medians).

    PYTHONPATH=path/to/version python3 benchmarks/ab_time.py --tag NAME [--out FILE.json] [--repeats 30]

Uses only the public API every version since the persistent lowering has (RNNSpec, PlanOptions,
build_plan, Weights.random, Executor), and records per row the plan's digest without its options
(steps, buffers, streams, events), so that the two versions are seen to run the same plans.
Timing: CUDA events around `Executor.run` on the current stream, 3 warm-ups, median of `repeats`,
inputs rotated among 3 sets already on the GPU.
"""

import argparse
import hashlib
import json
import statistics

import cupy as cp
import numpy as np

import rnnplan as rp

ROWS = [  # (label, spec keywords, math); input size = hidden size, T 100
    ("LSTM 4x512 B64 tf32 (paper)", dict(cell="lstm", num_layers=4, hidden_size=512, batch=64), "tf32"),
    ("LSTM 4x512 B64 fp16 (paper)", dict(cell="lstm", num_layers=4, hidden_size=512, batch=64, dtype="float16"),
     "fp32"),
    ("LSTM 2x256 B1 fp32", dict(cell="lstm", num_layers=2, hidden_size=256, batch=1), "fp32"),
    ("LSTM 1x1024 B8 fp16", dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8, dtype="float16"), "fp32"),
    ("LSTM 4x256 B8 fp32", dict(cell="lstm", num_layers=4, hidden_size=256, batch=8), "fp32"),
    ("GRU 4x512 B64 fp16", dict(cell="gru", num_layers=4, hidden_size=512, batch=64, dtype="float16"), "fp32"),
    ("GRU 2x256 B4 fp32", dict(cell="gru", num_layers=2, hidden_size=256, batch=4), "fp32"),
    ("RNN-tanh 2x512 B1 fp32", dict(cell="rnn_tanh", num_layers=2, hidden_size=512, batch=1), "fp32"),
    ("LSTM 4x1024 B1 tf32", dict(cell="lstm", num_layers=4, hidden_size=1024, batch=1), "tf32"),
]


def median_ms(fn, repeats: int) -> float:
    # As rnnplan.timing.median_ms, written out: a version under test may have neither.
    for i in range(3):
        fn(i)
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for i in range(repeats):
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    results = []
    for label, kw, math in ROWS:
        spec = rp.RNNSpec(**kw, input_size=kw["hidden_size"], seq_len=100)
        plan = rp.build_plan(spec, options=rp.PlanOptions(math=math))
        digest = hashlib.sha1(json.dumps(plan.model_dump(mode="json", exclude={"options"}), sort_keys=True)
                              .encode()).hexdigest()[:12]
        ex = rp.Executor(plan, rp.Weights.random(spec, seed=0), backend="cupy")
        rng = np.random.default_rng(0)
        xs = [cp.asarray(rng.standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype))
              for _ in range(3)]
        ms = median_ms(lambda i: ex.run(xs[i % 3]), args.repeats)
        results.append(dict(row=label, tag=args.tag, ms=ms, lowering=plan.lowering, plan=digest))
        print(f"{args.tag:<8} {label:<30} {plan.lowering:<10} {ms:8.3f} ms  plan {digest}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
