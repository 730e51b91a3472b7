"""GPU benchmark, all in one run (so ratios compare like with like): (a) the paper's ablation on its
configuration, naive then each pass added in canonical order then graph replay; (b) rnnplan
against torch.nn.LSTM / GRU (cuDNN), eager and CUDA-graphed, on ANCHORS.md's rows in fp32 strict,
tf32 and fp16. Correctness against torch (strict fp32 reference) is checked before anything is timed.

Timing: CUDA events on the caller's stream around one full forward, after warm-up, median of
`repeats`, inputs rotated among 4 sets. Needs CuPy, PyTorch with CUDA, and a GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

import rnnplan as rp

CELL_LABELS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN-tanh", "rnn_relu": "RNN-ReLU"}


def config(cell: str, layers: int, hidden: int, batch: int, seq_len: int = 100, bidirectional: bool = False,
           note: str = "") -> tuple[str, dict]:
    """(label, RNNSpec keywords) of a benchmark row (input size = hidden size); the label is made from
    the keywords, so the two cannot disagree."""
    label = f"{CELL_LABELS[cell]} {layers}x{hidden} B{batch} T{seq_len}" + (" bidir" if bidirectional else "")
    kw = dict(cell=cell, input_size=hidden, hidden_size=hidden, num_layers=layers, seq_len=seq_len, batch=batch)
    return label + (f" ({note})" if note else ""), kw | ({"bidirectional": True} if bidirectional else {})


ROWS = [  # ANCHORS.md's configurations
    config("lstm", 4, 512, 64, note="paper"),
    config("lstm", 2, 256, 1),
    config("lstm", 4, 1024, 1),
    config("lstm", 4, 1024, 256),
    config("lstm", 1, 2048, 32, seq_len=200),
    config("gru", 4, 512, 64),
]
PRECISIONS = ("fp32", "tf32", "fp16")
TOL = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 5e-3}


def _rel_err(got, want) -> float:
    """Relative error by norm, in float32."""
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    import cupy as cp

    for i in range(warmup):
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


def cudnn_times(torch, module, xs_t: list, repeats: int) -> tuple[float, float]:
    """(eager ms, CUDA-graph ms) of the torch module over the rotated inputs; the graph is captured
    once on a static input, and each replay first copies the call's input into it."""
    with torch.no_grad():
        eager = _median_ms(lambda i: module(xs_t[i % len(xs_t)]), repeats)
        static_x = xs_t[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                module(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            module(static_x)

        def replay(i):
            static_x.copy_(xs_t[i % len(xs_t)])
            graph.replay()
        return eager, _median_ms(replay, repeats)


def _torch_setup(torch, spec: rp.RNNSpec, precision: str, seed: int = 0):
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.manual_seed(seed)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}[spec.cell]
    kw = {"nonlinearity": spec.cell[4:]} if spec.cell.startswith("rnn") else {}
    m = cls(spec.input_size, spec.hidden_size, num_layers=spec.num_layers, bidirectional=spec.bidirectional,
            **kw).cuda().eval()
    if precision == "fp16":
        m = m.half()
    m.flatten_parameters()
    return m


def _reference(torch, module, x: np.ndarray) -> np.ndarray:
    """Strict fp32 torch on the same (possibly fp16-rounded) weights and input."""
    import copy

    ref = copy.deepcopy(module).float()
    ref.flatten_parameters()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        out = ref(torch.as_tensor(x.astype(np.float32), device="cuda"))[0].cpu().numpy()
    return out


def bench_row(torch, cp, label: str, kw: dict, precision: str, repeats: int) -> dict:
    spec = rp.RNNSpec(**kw, dtype="float16" if precision == "fp16" else "float32")
    module = _torch_setup(torch, spec, precision)
    weights = rp.Weights.from_torch(module, spec)
    t0 = time.perf_counter()
    math = "tf32" if precision == "tf32" else "fp32"
    plan = rp.build_plan(spec, options=rp.PlanOptions(math=math, lowering="graph"))
    plan_s = time.perf_counter() - t0
    ex = rp.Executor(plan, weights, backend="cupy", mode="graph")
    rng = np.random.default_rng(0)
    xs_np = [rng.standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype) for _ in range(4)]
    want = _reference(torch, module, xs_np[0])
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    ex.impl.poison()
    got = ex.run(xs_np[0])[0].get().astype(np.float32)
    err = _rel_err(got, want)
    with torch.no_grad():
        cudnn_out = module(torch.as_tensor(xs_np[0], device="cuda"))[0].float().cpu().numpy()
    cudnn_err = _rel_err(cudnn_out, want)
    xs_cp = [cp.asarray(x) for x in xs_np]
    xs_t = [torch.as_tensor(x, device="cuda") for x in xs_np]
    ours = _median_ms(lambda i: ex.run(xs_cp[i % 4]), repeats)
    eager, cudnn_graph = cudnn_times(torch, module, xs_t, repeats)
    return dict(row=label, precision=precision, rnnplan_ms=ours, cudnn_eager_ms=eager, cudnn_graph_ms=cudnn_graph,
                vs_cudnn_graph=cudnn_graph / ours, vs_cudnn_eager=eager / ours, rel_err=err, cudnn_rel_err=cudnn_err,
                ok=err <= TOL[precision], plan_s=plan_s, kernels=plan.stats.kernels, streams=plan.stats.streams)


def ablation(torch, cp, repeats: int, precision: str = "tf32") -> list[dict]:
    spec = rp.RNNSpec(**ROWS[0][1])
    weights = rp.Weights.random(spec, seed=0)
    x = cp.asarray(np.random.default_rng(1).standard_normal((spec.seq_len, spec.batch, spec.input_size)), dtype=np.float32)
    ref = None
    rows = []
    steps = [((), "streams")] + [(rp.PASSES[:k], "streams") for k in range(1, len(rp.PASSES) + 1)] + [(rp.PASSES, "graph")]
    for done, (passes, mode) in enumerate(steps, 1):
        plan = rp.build_plan(spec, options=rp.PlanOptions(passes=passes, math=precision, lowering="graph"))
        ex = rp.Executor(plan, weights, backend="cupy", mode=mode)
        out = ex.run(x)[0].get()
        ref = out if ref is None else ref
        err = _rel_err(out, ref)
        label = "all passes + CUDA graph" if mode == "graph" else ("naive" if not passes else "+ " + passes[-1])
        ms = _median_ms(lambda i: ex.run(x), repeats if passes else max(5, repeats // 3))
        rows.append(dict(step=label, ms=ms, kernels=plan.stats.kernels, rel_err_vs_naive=err))
        print(f"  [{done}/{len(steps)}] ablation {label:<32} {ms:9.3f} ms  {plan.stats.kernels:6d} kernels", flush=True)
        ex.impl.close()
    return rows


def environment(torch, cp) -> dict:
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    return dict(device=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                sms=props["multiProcessorCount"], torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                cupy=cp.__version__, cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                driver=cp.cuda.runtime.driverGetVersion(), rnnplan=rp.__version__,
                date=time.strftime("%Y-%m-%d"))


def _markdown(env: dict, abl: list[dict], rows: list[dict]) -> str:
    lines = [f"Device: {env['device']} ({env['sms']} SMs); torch {env['torch']}, cuDNN {env['cudnn']}, "
             f"CuPy {env['cupy']}, CUDA runtime {env['cuda_runtime']}, driver API {env['driver']}; {env['date']}.", "",
             "| ablation step (paper config, tf32) | ms | kernels | speed-up vs naive |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['ms']:.3f} | {r['kernels']:,} | {abl[0]['ms'] / r['ms']:.1f}x |" for r in abl]
    lines += ["", "| config | precision | rnnplan ms | cuDNN eager ms | cuDNN graph ms | vs cuDNN graph | vs cuDNN eager | rel. err (rnnplan / cuDNN) |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['precision']} | {r['rnnplan_ms']:.3f} | {r['cudnn_eager_ms']:.3f} | "
              f"{r['cudnn_graph_ms']:.3f} | {r['vs_cudnn_graph']:.2f}x | {r['vs_cudnn_eager']:.2f}x | "
              f"{r['rel_err']:.1e} / {r['cudnn_rel_err']:.1e}{'' if r['ok'] else ' FAIL'} |" for r in rows]
    return "\n".join(lines) + "\n"


def _chart(abl: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), constrained_layout=True)
    names = [r["step"] for r in abl]
    ax.barh(names[::-1], [r["ms"] for r in abl][::-1], color="#3182bd")
    ax.set_xscale("log")
    ax.set_xlabel("ms per forward (log scale, lower is better)")
    ax.set_title("rnnplan ablation, LSTM 4x512, batch 64, 100 steps, tf32")
    for i, r in enumerate(abl[::-1]):
        ax.text(r["ms"], i, f" {r['ms']:.2f} ms", va="center")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(quick: bool = False, out: str | None = None, repeats: int = 30) -> None:
    try:
        import cupy as cp
        import torch
    except ImportError as e:
        raise RuntimeError(f"rnnplan bench needs CuPy and PyTorch with CUDA: {e}") from None
    if not torch.cuda.is_available():
        raise RuntimeError("rnnplan bench needs a CUDA GPU visible to PyTorch")
    repeats = 10 if quick else repeats
    env = environment(torch, cp)
    print(json.dumps(env), flush=True)
    abl = ablation(torch, cp, repeats)
    rows = []
    todo = [(label, kw, precision) for label, kw in (ROWS[:2] if quick else ROWS) for precision in PRECISIONS]
    for done, (label, kw, precision) in enumerate(todo, 1):
        r = bench_row(torch, cp, label, kw, precision, repeats)
        rows.append(r)
        print(f"  [{done}/{len(todo)}] {label:<30} {precision}  rnnplan {r['rnnplan_ms']:8.3f}  "
              f"eager {r['cudnn_eager_ms']:8.3f}  graph {r['cudnn_graph_ms']:8.3f}  "
              f"x{r['vs_cudnn_graph']:.2f} vs graph  err {r['rel_err']:.1e}", flush=True)
    text = _markdown(env, abl, rows)
    print(text)
    if out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps(dict(environment=env, ablation=abl, rows=rows), indent=1))
        (d / "results.md").write_text(text)
        _chart(abl, d / "ablation.png")
