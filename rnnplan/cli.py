"""The `rnnplan` command line. Every spec flag defaults to the paper's configuration, so
`rnnplan run` alone plans and runs it on whatever backend the machine has."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
from pydantic import ValidationError

from rnnplan.spec import PAPER_SPEC, PlanOptions, RNNSpec

EXAMPLES = """examples:
  rnnplan run                                  # the paper's LSTM 4x512, B 64, T 100, all passes
  rnnplan run --backend numpy --passes none    # the naive plan on the CPU
  rnnplan plan --cell gru --layers 2 --hidden-size 256 --bidirectional
  rnnplan plan --passes combine_gates,fuse_pointwise --json plan.json
"""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _spec_flags(p: argparse.ArgumentParser) -> None:
    d = PAPER_SPEC
    g = p.add_argument_group("network (defaults: the paper's configuration)")
    g.add_argument("--cell", default=d.cell, choices=["lstm", "gru", "rnn_tanh", "rnn_relu"])
    g.add_argument("--input-size", type=int, default=d.input_size)
    g.add_argument("--hidden-size", type=int, default=d.hidden_size)
    g.add_argument("--layers", type=int, default=d.num_layers)
    g.add_argument("--seq-len", type=int, default=d.seq_len)
    g.add_argument("--batch", type=int, default=d.batch)
    g.add_argument("--bidirectional", action="store_true")
    g.add_argument("--no-bias", action="store_true")
    g.add_argument("--batch-first", action="store_true")
    g.add_argument("--dtype", default=d.dtype, choices=["float32", "float16"])
    o = p.add_argument_group("planning")
    o.add_argument("--passes", default="all", help="all | none | comma-separated pass names")
    o.add_argument("--streams", type=int, default=None, help="number of streams (default: one per layer-direction)")
    o.add_argument("--input-chunk", type=int, default=None, help="steps per merged input GEMM (default: planner's choice)")
    o.add_argument("--math", default="fp32", choices=["fp32", "tf32"])


def _spec(a: argparse.Namespace) -> RNNSpec:
    return RNNSpec(cell=a.cell, input_size=a.input_size, hidden_size=a.hidden_size, num_layers=a.layers,
                   seq_len=a.seq_len, batch=a.batch, bidirectional=a.bidirectional, bias=not a.no_bias,
                   batch_first=a.batch_first, dtype=a.dtype)


def _options(a: argparse.Namespace) -> PlanOptions:
    passes = {"all": None, "none": ()}.get(a.passes)
    if a.passes not in ("all", "none"):
        passes = tuple(p.strip() for p in a.passes.split(",") if p.strip())
    return PlanOptions(passes=passes, num_streams=a.streams, input_chunk=a.input_chunk, math=a.math)


def _plan(a: argparse.Namespace):
    from rnnplan.scheduler import build_plan

    return build_plan(_spec(a), options=_options(a))


def cmd_plan(a: argparse.Namespace) -> None:
    plan = _plan(a)
    print(plan.summary())
    if a.json:
        with open(a.json, "w") as f:
            f.write(plan.to_json(indent=1))
        print(f"wrote {a.json}")


def cmd_run(a: argparse.Namespace) -> None:
    from rnnplan.backends import Executor
    from rnnplan.weights import Weights

    spec = _spec(a)
    t0 = time.perf_counter()
    plan = _plan(a)
    weights = Weights.load(a.weights) if a.weights else Weights.random(spec, seed=a.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = Executor(plan, weights, backend=a.backend)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    plan_s = time.perf_counter() - t0
    shape = (spec.batch, spec.seq_len, spec.input_size) if spec.batch_first else \
        (spec.seq_len, spec.batch, spec.input_size)
    x = np.random.default_rng(a.seed).standard_normal(shape).astype(spec.dtype)
    times = []
    for _ in range(max(1, a.repeat)):
        t = time.perf_counter()
        out, _state = ex.run(x)
        checksum = float(np.asarray(out.get() if hasattr(out, "get") else out, dtype=np.float64).sum())
        times.append(time.perf_counter() - t)
    print(f"spec        {spec.short()}")
    print(f"backend     {ex.backend}   plan: {plan.stats.kernels:,} kernels on {plan.stats.streams} "
          f"stream(s), built in {plan_s:.2f} s")
    print(f"output      shape {tuple(out.shape)}  checksum {checksum:.6f}")
    print(f"time        {np.median(times) * 1e3:.2f} ms per forward (median of {len(times)})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnplan", description="Plan and run stacked RNN inference as a DAG.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("plan", help="build a plan and print its summary")
    _spec_flags(pp)
    pp.add_argument("--json", metavar="PATH", help="write the plan as JSON")
    pp.set_defaults(func=cmd_plan)
    pr = sub.add_parser("run", help="build a plan and execute it with random input")
    _spec_flags(pr)
    pr.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    pr.add_argument("--weights", metavar="FILE.npz", help="weights saved by Weights.save (default: random)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--repeat", type=int, default=3, help="forwards to time (median reported)")
    pr.set_defaults(func=cmd_run)
    return p


def _one_line(e: Exception) -> str:
    if isinstance(e, ValidationError):  # "field: reason" for each problem, without pydantic's links
        return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, RuntimeError, OSError) as e:  # pydantic's ValidationError is a ValueError
        msg = _one_line(e)
        print(f"rnnplan {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
