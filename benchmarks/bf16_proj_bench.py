"""bf16 and LSTM projections on the GPU (issue 18, item 4): rnnplan's lowerings and the autotuned
`rnnplan.compile` against torch's cuDNN (eager, and captured in a CUDA graph), in the same run: bf16
rows with fp16 beside them for reference (cuDNN has a persistent kernel for fp16, none for bf16),
and `proj_size` rows (LSTM 3x1024 proj 256, batch 1, 4, 8, 16) in fp16, bf16 and tf32 (torch runs
projections on cuDNN's standard algorithm only). Correctness first: each
rnnplan result against float64 torch on the same bf16 weights and input (relative error, goal <=
1e-2). Timing: CUDA events on torch's stream, warm-ups, median of `--repeats` calls, inputs rotated
among 4 sets.

    python3 benchmarks/bf16_proj_bench.py [--repeats 30] [--out FILE.json] [--only bf16|proj]

Needs CuPy, torch with CUDA and a GPU.
"""

import argparse
import json

import torch

import rnnplan as rp
from rnnplan.bench.harness import cudnn_times, environment
from rnnplan.timing import median_ms

ROWS = {  # the single-layer rows of issue 18 and the benchmark matrix's shapes
    "LSTM 1x512 B8 T100": dict(cell="lstm", layers=1, hidden=512, batch=8),
    "LSTM 1x1024 B8 T100": dict(cell="lstm", layers=1, hidden=1024, batch=8),
    "LSTM 4x512 B64 T100 (paper)": dict(cell="lstm", layers=4, hidden=512, batch=64),
    "LSTM 2x256 B1 T100": dict(cell="lstm", layers=2, hidden=256, batch=1),
    "LSTM 4x1024 B1 T100": dict(cell="lstm", layers=4, hidden=1024, batch=1),
    "GRU 4x512 B64 T100": dict(cell="gru", layers=4, hidden=512, batch=64),
}
PROJ_ROWS = {f"LSTM 3x1024 proj 256 B{b} T100": dict(cell="lstm", layers=3, hidden=1024, batch=b, proj=256)
             for b in (1, 4, 8, 16)}


def row(label: str, cell: str, layers: int, hidden: int, batch: int, dtype, repeats: int, proj: int = 0) -> dict:
    torch.manual_seed(0)
    extra = {"proj_size": proj} if proj else {}
    m = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(hidden, hidden, num_layers=layers, **extra)
    m = m.cuda().eval().to(dtype)
    xs = [torch.randn(100, batch, hidden, device="cuda").to(dtype) for _ in range(4)]
    with torch.no_grad():
        want = m.double()(xs[0].double())[0]
        m.to(dtype)
    result = dict(row=label, dtype=str(dtype).replace("torch.", "") + (" (tf32)" if dtype == torch.float32 else ""))
    for name, options in (("graph", dict(lowering="graph", autotune=False)),
                          ("persistent", dict(lowering="persistent", autotune=False)), ("compiled", {})):
        fast = rp.compile(m, **options)
        try:
            with torch.no_grad():
                got = fast(xs[0])[0]
        except (ValueError, RuntimeError) as e:  # the persistent kernel does not fit: say why
            result[name] = f"not run ({str(e)[:120]})"
            continue
        err = float((got.double() - want).norm() / want.norm())
        with torch.no_grad():
            ms = median_ms(lambda i: fast(xs[i % 4]), repeats)
        result[name] = ms
        result[f"{name}_rel_err"] = err
        if name == "compiled":
            result["choice"] = next(iter(fast._executors.values())).chosen.name
    result["cudnn_eager"], result["cudnn_graph"] = cudnn_times(torch, m, xs, repeats)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out")
    ap.add_argument("--only", choices=["bf16", "proj"])
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows: tf32, both sides
    env = environment(torch)
    print(json.dumps(env))
    results = []
    work = [] if args.only == "proj" else [(label, kw, dtype) for label, kw in ROWS.items()
                                            for dtype in (torch.bfloat16, torch.float16)]
    work += [] if args.only == "bf16" else [(label, kw, dtype) for label, kw in PROJ_ROWS.items()
                                            for dtype in (torch.float16, torch.bfloat16, torch.float32)]
    for label, kw, dtype in work:
        r = row(label, **kw, dtype=dtype, repeats=args.repeats)
        results.append(r)
        cells = "  ".join(f"{k} {r[k]:.3f} ({r[k + '_rel_err']:.1e})" if isinstance(r[k], float) else f"{k} {r[k][:60]}"
                          for k in ("graph", "persistent", "compiled"))
        best = min((r[k] for k in ("graph", "persistent") if isinstance(r[k], float)), default=float("nan"))
        print(f"{label:<30} {r['dtype']:<13} {cells}  choice {r.get('choice')}  cuDNN eager {r['cudnn_eager']:.3f}"
              f"  graph {r['cudnn_graph']:.3f}  best rnnplan vs cuDNN graph {r['cudnn_graph'] / best:.2f}x", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(environment=env, rows=results), f, indent=1)


if __name__ == "__main__":
    main()
