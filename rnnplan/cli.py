"""The `rnnplan` command line. Every spec flag defaults to the paper's configuration, so
`rnnplan run` alone plans and runs it on whatever backend the machine has."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from rnnplan.spec import PAPER_SPEC, PlanOptions, RNNSpec

EXAMPLES = """examples:
  rnnplan run                                  # the paper's LSTM 4x512, B 64, T 100, all passes
  rnnplan run --backend numpy --passes none    # the naive plan on the CPU
  rnnplan plan --cell gru --layers 2 --hidden-size 256 --bidirectional
  rnnplan plan --passes combine_gates,fuse_pointwise --json plan.json
  rnnplan plan --seq-len 8 --dot plan.dot --svg plan.svg     # kernels by stream, levels as ranks
  rnnplan plan --view cell --max-steps 20 --svg cells.svg    # one box per cell-step
  rnnplan plan --png wavefront.png --trace timeline.json     # layer x step grid; Perfetto trace
  rnnplan serve model.npz --port 8000                        # HTTP on Ray Serve, requests batched
  rnnplan build-calls                                        # the drop-in's C++ call path, ahead of time
"""


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line and exit status 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _spec_flags(p: argparse.ArgumentParser) -> None:
    d = PAPER_SPEC
    # The architecture's flags default to None: `run --weights FILE` takes what the file records, the
    # paper's configuration fills the rest.
    g = p.add_argument_group("network (defaults: the paper's configuration, or what --weights records)")
    g.add_argument("--cell", default=None, choices=["lstm", "gru", "rnn_tanh", "rnn_relu"])
    g.add_argument("--input-size", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--layers", type=int, default=None)
    g.add_argument("--seq-len", type=int, default=d.seq_len)
    g.add_argument("--batch", type=int, default=d.batch)
    g.add_argument("--bidirectional", action="store_true", default=None)
    g.add_argument("--no-bias", action="store_true", default=None)
    g.add_argument("--batch-first", action="store_true", default=None)
    g.add_argument("--proj-size", type=int, default=None, help="LSTM projections (torch's proj_size; 0: none)")
    g.add_argument("--variable-lengths", action="store_true",
                   help="each sequence has its own length (run: random lengths in 1..seq-len)")
    g.add_argument("--dtype", default=d.dtype, choices=["float32", "float16", "bfloat16"])
    o = p.add_argument_group("planning")
    o.add_argument("--passes", default="all", help="all | none | comma-separated pass names")
    o.add_argument("--streams", type=int, default=None, help="number of streams (default: one per layer-direction)")
    o.add_argument("--input-chunk", type=int, default=None, help="steps per merged input GEMM (default: planner's choice)")
    o.add_argument("--math", default="fp32", choices=["fp32", "tf32"],
                   help="with fp32 storage, tf32 allows TF32 tensor cores (cuBLAS, the persistent kernel) and fast exponentials")
    o.add_argument("--lowering", default="auto", choices=["graph", "persistent", "auto"],
                   help="graph: a kernel per GEMM and cell-step; persistent: one kernel for the whole recurrence; "
                        "auto: persistent where it fits this machine's GPU and should win")


def _spec(a: argparse.Namespace, arch: dict | None = None) -> RNNSpec:
    """The spec of the flags; an architecture field no flag gives comes from `arch` (what a weights
    file records), else from the paper's configuration."""
    given = {"cell": a.cell, "input_size": a.input_size, "hidden_size": a.hidden_size, "num_layers": a.layers,
             "bidirectional": a.bidirectional, "bias": None if a.no_bias is None else not a.no_bias,
             "batch_first": a.batch_first, "proj_size": a.proj_size}
    base = {**PAPER_SPEC.model_dump(), **(arch or {})}
    fields = {k: base[k] if v is None else v for k, v in given.items()}
    return RNNSpec(**fields, seq_len=a.seq_len, batch=a.batch, dtype=a.dtype, variable_lengths=a.variable_lengths)


def _options(a: argparse.Namespace) -> PlanOptions:
    passes = {"all": None, "none": ()}.get(a.passes)
    if a.passes not in ("all", "none"):
        passes = tuple(p.strip() for p in a.passes.split(",") if p.strip())
    return PlanOptions(passes=passes, num_streams=a.streams, input_chunk=a.input_chunk, math=a.math,
                       lowering=a.lowering)  # the planner reads the local GPU, if any


def _plan(a: argparse.Namespace, spec: RNNSpec | None = None):
    from rnnplan.api import build_plan

    with Progress("planning") as progress:
        return build_plan(spec or _spec(a), options=_options(a), progress=progress)


class Progress:
    """Stage-by-stage progress on stderr, shown only once the work has taken over two seconds."""

    def __init__(self, what: str, after_s: float = 2.0):
        self.what, self.after_s, self.shown = what, after_s, False

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.t0
        if elapsed >= self.after_s:
            bar = "#" * (20 * done // total)
            print(f"\r{self.what} [{bar:<20}] {done}/{total} {stage:<20} {elapsed:6.1f} s",
                  end="", file=sys.stderr, flush=True)
            self.shown = True

    def __exit__(self, *exc):
        if self.shown:
            print(file=sys.stderr)


# Graphviz's layout time grows fast with the boxes drawn (this project's CPU machine: 216 boxes 0.8 s,
# 422 boxes 5.3 s, the paper configuration's 831 kernels 109 s): above this many, say so and how to
# draw fewer.
SVG_WARN_NODES = 400
SUFFIXES = {"svg": (".svg", ".png"), "png": (".png",)}


def _check_outputs(a: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Every output path is writable where it points and has a suffix its writer knows, before any
    planning (which may take seconds) is done."""
    for name in names:
        path = getattr(a, name, None)
        if not path:
            continue
        path = Path(path)
        if not path.parent.is_dir():
            raise CLIError(f"--{name} {path}: the folder {path.parent} does not exist")
        if name in SUFFIXES and path.suffix.lower() not in SUFFIXES[name]:
            raise CLIError(f"--{name} {path}: writes {' or '.join(SUFFIXES[name])} files, not {path.suffix or 'no suffix'}")


def cmd_plan(a: argparse.Namespace) -> None:
    from rnnplan import viz

    _check_outputs(a, ("json", "dot", "svg", "png", "trace"))
    if a.max_steps is not None and a.max_steps < 1:
        raise CLIError(f"--max-steps must be >= 1, got {a.max_steps}")
    plan = _plan(a)
    print(viz.summarize(plan))
    dot = viz.to_dot(plan, a.view, a.max_steps) if (a.dot or a.svg) else None
    if a.svg and (boxes := dot.count(" [label=")) > SVG_WARN_NODES:
        print(f"note: --svg draws {boxes:,} boxes, which Graphviz may take minutes to lay out; --view cell or "
              "--max-steps N draws fewer", file=sys.stderr)
    writers = [
        (a.json, lambda p: Path(p).write_text(plan.to_json(indent=1))),
        (a.dot, lambda p: Path(p).write_text(dot)),
        (a.svg, lambda p: viz.render(dot, p)),
        (a.png, lambda p: viz.save_wavefront_png(plan, p)),
        (a.trace, lambda p: viz.write_trace(viz.predicted_trace(plan), p)),
    ]
    for path, write in writers:
        if path:
            write(path)
            print(f"wrote {path}")


def cmd_run(a: argparse.Namespace) -> None:
    from rnnplan.executor import Executor
    from rnnplan.weights import Weights

    _check_outputs(a, ("trace",))
    weights = Weights.load(a.weights) if a.weights else None  # a bad file is named before planning
    spec = _spec(a, weights.arch if weights else None)
    t0 = time.perf_counter()
    plan = _plan(a, spec)
    weights = weights or Weights.random(spec, seed=a.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = Executor(plan, weights, backend=a.backend, mode=a.mode)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    plan_s = time.perf_counter() - t0
    shape = (spec.batch, spec.seq_len, spec.input_size) if spec.batch_first else \
        (spec.seq_len, spec.batch, spec.input_size)
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal(shape).astype(spec.dtype)
    lengths = rng.integers(1, spec.seq_len + 1, spec.batch) if spec.variable_lengths else None
    sync = lambda: None  # noqa: E731
    if ex.backend == "cupy":  # time the forward, not the host-to-device copy of x
        import cupy

        x = cupy.asarray(x)
        sync = cupy.cuda.get_current_stream().synchronize
    times = []
    for _ in range(max(1, a.repeat) + 1):  # the first call warms up
        t = time.perf_counter()
        out, _state = ex.run(x, lengths=lengths)
        sync()
        times.append(time.perf_counter() - t)
    times = times[1:] if len(times) > 1 else times
    checksum = float(np.asarray(out.get() if hasattr(out, "get") else out, dtype=np.float64).sum())
    print(f"spec        {spec.short()}")
    print(f"backend     {ex.backend}   plan: {plan.stats.kernels:,} kernels on {plan.stats.streams} "
          f"stream(s); plan and executor ready in {plan_s:.2f} s")
    print(f"output      shape {tuple(out.shape)}  checksum {checksum:.6f}")
    where = ", input already on the GPU" if ex.backend == "cupy" else ""
    print(f"time        {np.median(times) * 1e3:.3f} ms per forward, wall clock{where} "
          f"(median of {len(times)}, after one warm-up)")
    if a.trace:
        from rnnplan.viz import write_trace

        write_trace(ex.trace(x, lengths=lengths), a.trace)
        print(f"wrote {a.trace} (measured timeline, Chrome trace JSON)")


def cmd_kernels(a: argparse.Namespace) -> None:
    from rnnplan.backends.kernels import plan_kernels

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = plan_kernels(_plan(a))
    for name, src in sources.items():
        (out / f"{name}.cu").write_text(src)
    print(f"wrote {len(sources)} CUDA source file(s) to {out} (compile: nvcc -arch=sm_90 -std=c++17 -c FILE.cu)")


def cmd_bench(a: argparse.Namespace) -> None:
    from rnnplan.bench.matrix import main as bench_main

    bench_main(quick=a.quick, out=a.out, repeats=a.repeats, rows=a.rows, precisions=a.precisions)


def cmd_build_calls(a: argparse.Namespace) -> None:
    """Build the compiled call path now (a container image's build step), not on a first GPU call."""
    try:
        import torch  # noqa: F401 (the extension is torch's)
    except ImportError:
        raise CLIError('the compiled call path needs torch: pip install "rnnplan[torch]"') from None
    import rnnplan.compiled_calls as compiled_calls

    print("building the compiled call path (once per machine; 20-40 s) ...", flush=True)
    t0 = time.perf_counter()
    ext = compiled_calls.load()
    if ext is None:
        raise CLIError(compiled_calls.why_not())
    print(f"ready in {time.perf_counter() - t0:.1f} s (kept for later processes): {ext.__file__}")


def cmd_serve(a: argparse.Namespace) -> None:
    try:
        from rnnplan.serve.ray_app import serve_forever
    except ImportError as e:
        raise CLIError(f"serving needs Ray Serve and torch ({e.name} is missing): pip install \"rnnplan[serve]\"") from None
    try:
        buckets = tuple(int(b) for b in a.batch_buckets.split(",")) if a.batch_buckets else None
    except ValueError:
        raise CLIError(f"--batch-buckets takes sequence counts separated by commas (8,32), got {a.batch_buckets!r}") \
            from None
    serve_forever(a.model, address=a.address, host=a.host, port=a.port, backend=a.backend, replicas=a.replicas,
                  max_batch=a.max_batch, batch_wait_ms=a.batch_wait_ms, max_body_mb=a.max_body_mb, bucket=a.bucket,
                  batch_buckets=buckets, warm_up_steps=a.warm_up_steps, build=a.build)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rnnplan", description="Plan and run stacked RNN inference as a DAG.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pp = sub.add_parser("plan", help="build a plan and print its summary")
    _spec_flags(pp)
    out = pp.add_argument_group("outputs")
    out.add_argument("--json", metavar="PATH", help="write the plan as JSON (rnnplan.load_plan reads it back)")
    out.add_argument("--dot", metavar="PATH", help="write the Graphviz DOT text of the plan")
    out.add_argument("--svg", metavar="PATH", help="render the DOT view to SVG (or .png) with Graphviz's dot")
    out.add_argument("--png", metavar="PATH", help="write the wavefront picture: layer x step grid by level and stream")
    out.add_argument("--trace", metavar="PATH", help="write a predicted timeline as Chrome trace JSON (Perfetto)")
    out.add_argument("--view", default="op", choices=["op", "cell"], help="DOT view: one node per kernel or per cell-step")
    out.add_argument("--max-steps", type=int, default=None, help="draw only the first N steps of each layer")
    pp.set_defaults(func=cmd_plan)
    pr = sub.add_parser("run", help="build a plan and execute it with random input")
    _spec_flags(pr)
    pr.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    pr.add_argument("--weights", metavar="FILE.npz", help="weights saved by Weights.save, whose recorded architecture "
                    "the network flags default to (default: random weights)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--repeat", type=int, default=3, help="forwards to time (median reported)")
    pr.add_argument("--trace", metavar="PATH", help="also write a measured timeline (Chrome trace JSON) of one run")
    pr.add_argument("--mode", default="graph", choices=["graph", "streams"],
                    help="cupy backend: replay one CUDA graph, or launch from Python every call")
    pr.set_defaults(func=cmd_run)
    pk = sub.add_parser("kernels", help="write every generated CUDA kernel of a plan as .cu files")
    _spec_flags(pk)
    pk.add_argument("--out", required=True, metavar="DIR")
    pk.set_defaults(func=cmd_kernels)
    pb = sub.add_parser("bench", help="GPU benchmark: the paper's ablation and rnnplan against cuDNN (needs CuPy, torch, a GPU)")
    pb.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    pb.add_argument("--repeats", type=int, default=30)
    pb.add_argument("--rows", nargs="+", metavar="TEXT", help="only the rows whose label contains one of these "
                    "(say 'paper' or 'B8'); the ablation is then left out")
    pb.add_argument("--precisions", nargs="+", metavar="P", help="only these of fp32, tf32, fp16, bf16")
    pb.add_argument("--out", metavar="DIR", default=None, help="write results.json, results.md and ablation.png here")
    pb.set_defaults(func=cmd_bench)
    pc = sub.add_parser("build-calls", help="build the drop-in's compiled call path now (a C++ extension; needs "
                        "torch, ninja and a C++ compiler), instead of on a worker thread at the first GPU call")
    pc.set_defaults(func=cmd_build_calls)
    ps = sub.add_parser("serve", help="serve a model over HTTP on Ray Serve, batching concurrent requests")
    ps.add_argument("model", metavar="MODEL", help="a Weights .npz (Weights.save, with its architecture) or an .onnx file")
    ps.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    ps.add_argument("--host", default="127.0.0.1", help="where Serve's HTTP proxy listens")
    ps.add_argument("--port", type=int, default=8000)
    ps.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    ps.add_argument("--replicas", type=int, default=None, help="default: one a GPU of the cluster, else one")
    ps.add_argument("--max-batch", type=int, default=32, help="sequences a call, at most")
    ps.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    ps.add_argument("--max-body-mb", type=float, default=64.0, help="larger bodies get HTTP 413")
    ps.add_argument("--bucket", type=int, default=None, help="pad lengths to multiples of N steps (fewer plans)")
    ps.add_argument("--batch-buckets", metavar="N,N", help="pad a call's sequences up to these counts "
                    "(default on a GPU: 8 and --max-batch)")
    ps.add_argument("--warm-up-steps", type=int, default=0, metavar="T",
                    help="build every shape up to T steps before serving (needs --bucket)")
    ps.add_argument("--build", default="blocking", choices=["blocking", "background"],
                    help="background: a new shape builds on a worker thread while its calls run torch's module")
    ps.set_defaults(func=cmd_serve)
    return p


def _one_line(e: Exception) -> str:
    if isinstance(e, ValidationError):  # "field: reason" for each problem, without pydantic's links
        return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, TypeError, RuntimeError, OSError, MemoryError) as e:  # ValidationError: a ValueError
        msg = _one_line(e)
        print(f"rnnplan {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
