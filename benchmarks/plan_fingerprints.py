"""Fingerprints of a grid of plans, to show that a change leaves what rnnplan computes alone: the
digest of every plan's JSON over specs x pass subsets x options (graph and persistent lowerings, the
persistent ones for a described H200, so that any machine gives the same), and the CUDA source of
every kernel they need; with --ptx, each kernel compiled to PTX by nvcc (comments and line info
stripped), which shows whether a change of kernel source changed the code.

    python benchmarks/plan_fingerprints.py OUT_DIR [--ptx]     # OUT_DIR/plans.txt, kernels/, ptx/
    diff -r BEFORE_DIR AFTER_DIR

Uses only `rp.build_plan`, `rp.PlanOptions`, `rp.DeviceShape` and `rnnplan.backends.kernels.plan_kernels`,
so that it runs on the versions before and after a change alike; spec fields added later are left out
of the digest at their defaults.
"""

import argparse
import hashlib
import itertools
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import rnnplan as rp
from rnnplan.backends.kernels import plan_kernels

H200 = rp.DeviceShape(name="NVIDIA H200", sms=132, smem_per_block=232_448)
SUBSETS = [s for k in range(len(rp.PASSES) + 1) for s in itertools.combinations(rp.PASSES, k)]
GRAPH_SPECS = [
    dict(cell="lstm", input_size=7, hidden_size=13, num_layers=2, seq_len=5, batch=3, bidirectional=True),
    dict(cell="gru", input_size=5, hidden_size=12, num_layers=3, seq_len=4, batch=2),
    dict(cell="rnn_tanh", input_size=4, hidden_size=8, num_layers=1, seq_len=6, batch=1, bias=False, batch_first=True),
    dict(cell="rnn_relu", input_size=6, hidden_size=8, num_layers=2, seq_len=7, batch=2, bidirectional=True,
         dtype="float16"),
    dict(cell="lstm", input_size=8, hidden_size=16, num_layers=3, seq_len=12, batch=2, dtype="float16"),
    dict(cell="gru", input_size=9, hidden_size=10, num_layers=2, seq_len=9, batch=4, bidirectional=True),
]
PERSISTENT_SPECS = [
    dict(cell="lstm", input_size=7, hidden_size=16, num_layers=2, seq_len=9, batch=2),
    dict(cell="gru", input_size=5, hidden_size=12, num_layers=3, seq_len=4, batch=3, bidirectional=True),
    dict(cell="rnn_relu", input_size=4, hidden_size=8, num_layers=1, seq_len=6, batch=1, bias=False),
    dict(cell="rnn_tanh", input_size=16, hidden_size=40, num_layers=2, seq_len=5, batch=20, dtype="float16"),
    dict(cell="lstm", input_size=32, hidden_size=64, num_layers=2, seq_len=5, batch=8, bidirectional=True),
]
KERNEL_VARIANTS = [  # (spec, math): one plan per persistent kernel variant the tests compile
    (dict(cell="lstm", num_layers=4, hidden_size=512, batch=64, dtype="float16"), "fp32"),
    (dict(cell="gru", num_layers=4, hidden_size=512, batch=64, dtype="float16"), "fp32"),
    (dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8, dtype="float16"), "fp32"),
    (dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8), "tf32"),
    (dict(cell="lstm", num_layers=2, hidden_size=512, batch=8), "tf32"),
    (dict(cell="lstm", num_layers=1, hidden_size=1024, batch=1), "fp32"),
    (dict(cell="lstm", num_layers=1, hidden_size=1024, batch=8), "fp32"),
    (dict(cell="lstm", num_layers=4, hidden_size=256, batch=8), "fp32"),
    (dict(cell="gru", num_layers=3, hidden_size=47, batch=5, bidirectional=True), "fp32"),
    (dict(cell="lstm", num_layers=2, hidden_size=768, batch=1, dtype="float16"), "fp32"),
    (dict(cell="rnn_tanh", num_layers=2, hidden_size=512, batch=1), "fp32"),
    (dict(cell="lstm", num_layers=2, hidden_size=256, batch=1), "tf32"),
    (dict(cell="lstm", num_layers=2, hidden_size=256, batch=72, dtype="float16"), "fp32"),
    (dict(cell="gru", num_layers=2, hidden_size=72, batch=70, bidirectional=True), "tf32"),
    (dict(cell="rnn_tanh", num_layers=3, hidden_size=100, batch=13, bidirectional=True), "tf32"),
    (dict(cell="lstm", num_layers=2, hidden_size=256, batch=16), "tf32"),
    (dict(cell="rnn_relu", num_layers=2, hidden_size=20, batch=2, bias=False), "fp32"),
    (dict(cell="lstm", num_layers=2, hidden_size=768, batch=8, dtype="float16"), "fp32"),
]


def plans():
    """(tag, plan) over the grid, in a fixed order."""
    for kw in GRAPH_SPECS:
        spec = rp.RNNSpec(**kw)
        chains = spec.num_layers * spec.directions
        for passes in SUBSETS:
            for opt in (dict(), dict(input_chunk=2, num_streams=2 * chains), dict(math="tf32", num_streams=1)):
                options = rp.PlanOptions(passes=passes, lowering="graph", **opt)
                yield f"graph {spec.short()} {passes} {opt}", rp.build_plan(spec, options=options)
        yield f"auto {spec.short()}", rp.build_plan(spec, options=rp.PlanOptions(lowering="graph"))
    yield "paper", rp.build_plan(rp.PAPER_SPEC, options=rp.PlanOptions(lowering="graph"))
    for kw in PERSISTENT_SPECS:
        spec = rp.RNNSpec(**kw)
        for passes in SUBSETS:
            for math in ("fp32", "tf32"):
                options = rp.PlanOptions(passes=passes, lowering="persistent", device=H200, math=math)
                yield f"persistent {spec.short()} {passes} {math}", rp.build_plan(spec, options=options)
    for kw, math in KERNEL_VARIANTS:
        spec = rp.RNNSpec(**kw, input_size=kw["hidden_size"], seq_len=10)
        options = rp.PlanOptions(lowering="persistent", device=H200, math=math)
        yield f"kernel {spec.short()} {math}", rp.build_plan(spec, options=options)


def ptx(source: Path, out: Path) -> None:
    raw = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-ptx", "-o", "-", str(source)],
                         capture_output=True, text=True, check=True).stdout
    out.write_text("".join(line + "\n" for line in raw.splitlines()
                           if not re.match(r"\s*(//|\.file|\.loc)", line)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ptx", action="store_true", help="also compile every kernel to PTX with nvcc")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "kernels").mkdir(parents=True, exist_ok=True)
    lines, sources = [], {}
    for tag, plan in plans():
        # Spec fields added since (at their default) are left out, so that versions compare.
        text = plan.to_json().replace(',"variable_lengths":false', "")
        lines.append(f"{tag} {hashlib.sha1(text.encode()).hexdigest()}")
        for name, src in plan_kernels(plan).items():
            sources.setdefault(name, src)
    (out / "plans.txt").write_text("\n".join(lines) + "\n")
    for name, src in sources.items():
        (out / "kernels" / f"{name}.cu").write_text(src)
    if args.ptx:
        (out / "ptx").mkdir(exist_ok=True)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: ptx(out / "kernels" / f"{n}.cu", out / "ptx" / f"{n}.ptx"), sources))
    print(f"{len(lines)} plans, {len(sources)} kernels", "(and their PTX)" if args.ptx else "")


if __name__ == "__main__":
    main()
