"""Planner speed and scale: time, node count and peak memory of build_plan (the passes, the
three-step repeat where it applies, lowering, graph and plan verification), graph lowering, for the
paper configuration and a large bidirectional LSTM.

    python benchmarks/plan_time.py [--quick]

Each configuration runs in a fresh subprocess, build_plan first (its peak RSS is taken before
anything else runs), then a repeated build_plan (the cache) and, for reference, the naive unrolled
graph (`ir.build`, which build_plan no longer builds for sequences longer than three steps).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import rnnplan as rp
from rnnplan.ir import build
spec = rp.RNNSpec.model_validate_json(sys.argv[1])
options = rp.PlanOptions(lowering="graph")  # what a machine without a GPU plans; on a GPU, auto may
t0 = time.perf_counter()                     # pick the persistent lowering, planned from one step
plan = rp.build_plan(spec, options=options)
t1 = time.perf_counter()
again = rp.build_plan(spec, options=options)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
naive_nodes = len(build(spec))  # after planning, so that its heap does not shape build_plan's
t3 = time.perf_counter()
print(json.dumps(dict(naive_nodes=naive_nodes, build_s=t3 - t2, plan_s=t1 - t0, cached_s=t2 - t1,
    kernels=plan.stats.kernels, graph_nodes=plan.stats.nodes, peak_rss_mb=peak)))
"""

CONFIGS = {
    "paper: LSTM 4x512 B64 T100": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4,
                                       seq_len=100, batch=64),
    "LSTM 8x512 bidir B64 T1000": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=8,
                                       seq_len=1000, batch=64, bidirectional=True),
}
QUICK_SCALE = {  # cost should grow linearly with layers x steps
    "LSTM 2x512 bidir T250": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=2,
                                  seq_len=250, batch=64, bidirectional=True),
    "LSTM 4x512 bidir T250": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4,
                                  seq_len=250, batch=64, bidirectional=True),
    "LSTM 4x512 bidir T500": dict(cell="lstm", input_size=512, hidden_size=512, num_layers=4,
                                  seq_len=500, batch=64, bidirectional=True),
}


def measure(spec: dict) -> dict:
    import rnnplan as rp

    text = rp.RNNSpec(**spec).model_dump_json()
    out = subprocess.run([sys.executable, "-c", CHILD, text], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the 8x1000 configuration")
    args = ap.parse_args()
    configs = {**CONFIGS, **QUICK_SCALE}
    if args.quick:
        configs.pop("LSTM 8x512 bidir B64 T1000")
    print("| configuration | naive nodes | plan nodes | kernels | naive build s | build_plan s | cached s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, spec in configs.items():
        r = measure(spec)
        print(f"| {name} | {r['naive_nodes']:,} | {r['graph_nodes']:,} | {r['kernels']:,} | {r['build_s']:.2f} | "
              f"{r['plan_s']:.2f} | {r['cached_s'] * 1e3:.2f} ms | {r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
