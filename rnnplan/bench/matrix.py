"""`rnnplan bench`: the GPU benchmark matrix, all in one run (so ratios compare like with like): (a) the
paper's ablation on its configuration, naive then each pass added in canonical order then graph
replay; (b) rnnplan against torch.nn.LSTM / GRU (cuDNN), eager and CUDA-graphed, on ANCHORS.md's rows
in fp32 strict, tf32, fp16 and bf16, LSTM projections among them. Correctness against torch (strict fp32 reference) is checked before
anything is timed. Inputs rotated among 4 sets. Needs CuPy, PyTorch with CUDA, and a GPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import rnnplan as rp
from rnnplan.bench.harness import (
    DTYPES,
    MATHS,
    PRECISIONS,
    ROWS,
    TOL,
    cudnn_module,
    cudnn_replay,
    device_tensor,
    environment,
    host_float32,
    interleaved_ms,
    median_ms,
    rel_err,
    strict_reference,
)


def bench_row(torch, label: str, kw: dict, precision: str, repeats: int) -> dict:
    spec = rp.RNNSpec(**kw, dtype=DTYPES[precision])
    module = cudnn_module(torch, spec, precision)
    weights = rp.Weights.from_torch(module, spec)
    t0 = time.perf_counter()
    math = MATHS[precision]
    plan = rp.build_plan(spec, options=rp.PlanOptions(math=math, lowering="graph"))
    plan_s = time.perf_counter() - t0
    ex = rp.Executor(plan, weights, backend="cupy", mode="graph")
    rng = np.random.default_rng(0)
    xs_np = [rng.standard_normal((spec.seq_len, spec.batch, spec.input_size)).astype(spec.dtype) for _ in range(4)]
    want = strict_reference(torch, module, xs_np[0])
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    ex.impl.poison()
    got = host_float32(torch, ex.run(xs_np[0])[0])
    err = rel_err(got, want)
    xs_t = [device_tensor(torch, x) for x in xs_np]  # rnnplan reads them in place (zero copy)
    with torch.no_grad():
        cudnn_out = module(xs_t[0])[0].float().cpu().numpy()
    cudnn_err = rel_err(cudnn_out, want)
    ours = median_ms(lambda i: ex.run(xs_t[i % 4]), repeats)
    ex.impl.close()
    persistent, persistent_err, why = _persistent(torch, spec, weights, math, xs_t, want, repeats)
    with torch.no_grad():
        eager = median_ms(lambda i: module(xs_t[i % 4]), repeats)
    replay = cudnn_replay(torch, module, xs_t)
    compiled = rp.compile(module)  # autotuned on its first call: persistent, graph, cuDNN in a CUDA graph
    with torch.no_grad():
        compiled_err = rel_err(compiled(xs_t[0])[0].float().cpu().numpy(), want)
        # cuDNN graph and the compiled module taking turns: the spread of cuDNN's rounds is the noise
        rounds = interleaved_ms({"cudnn_graph": replay, "compiled": lambda i: compiled(xs_t[i % 4])}, repeats)
    cudnn_graph, compiled_ms = (float(np.median(rounds[k])) for k in ("cudnn_graph", "compiled"))
    noise = (max(rounds["cudnn_graph"]) - min(rounds["cudnn_graph"])) / cudnn_graph
    choice = next(iter(compiled._executors.values()))
    path = "compiled" if compiled._fast is not None else "Python"
    compiled.clear()
    return dict(row=label, precision=precision, rnnplan_ms=ours, cudnn_eager_ms=eager, cudnn_graph_ms=cudnn_graph,
                vs_cudnn_graph=cudnn_graph / ours, vs_cudnn_eager=eager / ours, rel_err=err, cudnn_rel_err=cudnn_err,
                ok=err <= TOL[precision] and (persistent_err or 0) <= TOL[precision] and compiled_err <= TOL[precision],
                plan_s=plan_s, kernels=plan.stats.kernels, streams=plan.stats.streams,
                persistent_ms=persistent, persistent_rel_err=persistent_err, persistent_why=why,
                compiled_ms=compiled_ms, compiled_rel_err=compiled_err, compiled_choice=choice.chosen.name,
                compiled_timings=choice.timings, compiled_vs_cudnn_graph=cudnn_graph / compiled_ms, compiled_path=path,
                rounds=rounds, cudnn_graph_noise=noise)


def _persistent(torch, spec, weights, math: str, xs_t: list, want, repeats: int):
    """(ms, rel. error, why) of the persistent lowering on the row, or (None, None, why it does not fit)."""
    try:
        plan = rp.build_plan(spec, options=rp.PlanOptions(math=math, lowering="persistent"))
    except ValueError as e:
        return None, None, str(e)
    ex = rp.Executor(plan, weights, backend="cupy", mode="graph")
    ex.impl.poison()
    err = rel_err(host_float32(torch, ex.run(xs_t[0])[0]), want)
    ms = median_ms(lambda i: ex.run(xs_t[i % 4]), repeats)
    ex.impl.close()
    return ms, err, plan.lowering_reason


def ablation(torch, repeats: int, precision: str = "tf32") -> list[dict]:
    spec = rp.RNNSpec(**ROWS[0][1])
    weights = rp.Weights.random(spec, seed=0)
    x = torch.as_tensor(np.random.default_rng(1).standard_normal((spec.seq_len, spec.batch, spec.input_size)),
                        dtype=torch.float32, device="cuda")
    ref = None
    rows = []
    steps = [((), "streams")] + [(rp.PASSES[:k], "streams") for k in range(1, len(rp.PASSES) + 1)] + [(rp.PASSES, "graph")]
    for done, (passes, mode) in enumerate(steps, 1):
        plan = rp.build_plan(spec, options=rp.PlanOptions(passes=passes, math=precision, lowering="graph"))
        ex = rp.Executor(plan, weights, backend="cupy", mode=mode)
        out = ex.run(x)[0].get()
        ref = out if ref is None else ref
        err = rel_err(out, ref)
        label = "all passes + CUDA graph" if mode == "graph" else ("naive" if not passes else "+ " + passes[-1])
        ms = median_ms(lambda i: ex.run(x), repeats if passes else max(5, repeats // 3))
        rows.append(dict(step=label, ms=ms, kernels=plan.stats.kernels, rel_err_vs_naive=err))
        print(f"  [{done}/{len(steps)}] ablation {label:<32} {ms:9.3f} ms  {plan.stats.kernels:6d} kernels", flush=True)
        ex.impl.close()
    return rows


def _markdown(env: dict, abl: list[dict], rows: list[dict]) -> str:
    lines = [f"Device: {env['device']} ({env['sms']} SMs); torch {env['torch']}, cuDNN {env['cudnn']}, "
             f"CuPy {env['cupy']}, CUDA {env['cuda']} (torch's), driver {env['driver']}; {env['date']}."]
    if abl:  # (not run where rows were picked by label)
        lines += ["", "| ablation step (paper config, tf32) | ms | kernels | speed-up vs naive |", "|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['ms']:.3f} | {r['kernels']:,} | {abl[0]['ms'] / r['ms']:.1f}x |" for r in abl]
    lines += ["", "rnnplan's own lowerings in their own columns (graph, persistent: '-' where it does not fit), "
              "then `rnnplan.compile` autotuned (its choice among them and cuDNN in a CUDA graph; 'C++' where its "
              "repeat calls took the compiled call path); ratios are cuDNN graph's time over ours. The compiled "
              "module and cuDNN graph are timed in three rounds, taking turns (medians of the rounds' medians; in "
              "brackets the ratio's range over the rounds); the spread is cuDNN graph's (max - min) / median over its "
              "rounds: the noise a difference must exceed.", "",
              "| config | precision | graph ms | persistent ms | compiled ms (choice) | cuDNN eager ms | cuDNN graph ms "
              "| spread | graph vs cuDNN graph | persistent vs cuDNN graph | compiled vs cuDNN graph | rel. err (graph / "
              "persistent / compiled / cuDNN) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, g = r["persistent_ms"], r["cudnn_graph_ms"]
        pe = "-" if r["persistent_rel_err"] is None else f"{r['persistent_rel_err']:.1e}"
        lines.append(f"| {r['row']} | {r['precision']} | {r['rnnplan_ms']:.3f} | {'-' if p is None else f'{p:.3f}'} | "
                     f"{r['compiled_ms']:.3f} ({r['compiled_choice']}"
                     f"{'; C++' if r.get('compiled_path') == 'compiled' else ''}) | "
                     f"{r['cudnn_eager_ms']:.3f} | {g:.3f} | {_spread(r)} | "
                     f"{r['vs_cudnn_graph']:.2f}x | {'-' if p is None else f'{g / p:.2f}x'} | "
                     f"{r['compiled_vs_cudnn_graph']:.2f}x{_round_ratios(r)} | {r['rel_err']:.1e} / {pe} / "
                     f"{r['compiled_rel_err']:.1e} / "
                     f"{r['cudnn_rel_err']:.1e}{'' if r['ok'] else ' FAIL'} |")
    slower = [r for r in rows if r.get("cudnn_graph_noise") is not None
              and r["compiled_vs_cudnn_graph"] < 1 - r["cudnn_graph_noise"]]
    if any(r.get("cudnn_graph_noise") is not None for r in rows):
        lines += ["", f"Rows where the compiled module is slower than cuDNN graph by more than cuDNN graph's spread: "
                  f"{len(slower)} of {len(rows)}" + "".join(
                      f"; {r['row']} {r['precision']} {r['compiled_vs_cudnn_graph']:.2f}x (spread "
                      f"{r['cudnn_graph_noise']:.1%})" for r in slower) + "."]
    return "\n".join(lines) + "\n"


def _spread(row: dict) -> str:
    noise = row.get("cudnn_graph_noise")  # (results files before the rounds have none)
    return "-" if noise is None else f"{noise:.1%}"


def _round_ratios(row: dict) -> str:
    rounds = row.get("rounds")
    if not rounds:
        return ""
    ratios = [g / c for g, c in zip(rounds["cudnn_graph"], rounds["compiled"])]
    return f" ({min(ratios):.2f}-{max(ratios):.2f})"


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


def selected(quick: bool = False, rows: list[str] | None = None, precisions: list[str] | None = None) -> list[tuple]:
    """(label, RNNSpec keywords, precision) of each matrix row to run: every row (the first two with
    `quick`), or those whose label contains one of `rows`, in `precisions` (all four by default)."""
    chosen = ROWS[:2] if quick else ROWS
    if rows:
        chosen = [(label, kw) for label, kw in ROWS if any(text in label for text in rows)]
        if not chosen:
            raise ValueError(f"no benchmark row's label contains {' or '.join(map(repr, rows))}; the rows are "
                             + ", ".join(label for label, _ in ROWS))
    wrong = sorted(set(precisions or ()) - set(PRECISIONS))
    if wrong:
        raise ValueError(f"precisions {wrong} unknown; they are {', '.join(PRECISIONS)}")
    return [(label, kw, p) for label, kw in chosen for p in PRECISIONS if not precisions or p in precisions]


def main(quick: bool = False, out: str | None = None, repeats: int = 30, rows: list[str] | None = None,
         precisions: list[str] | None = None) -> None:
    """The matrix (`selected`'s rows); the ablation too unless rows are picked by label."""
    todo = selected(quick, rows, precisions)  # (named before anything is imported or built)
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"rnnplan bench needs PyTorch with CUDA (and CuPy): {e}") from None
    if not torch.cuda.is_available():
        raise RuntimeError("rnnplan bench needs a CUDA GPU visible to PyTorch")
    repeats = 10 if quick else repeats
    import rnnplan.compiled_calls as compiled_calls

    print("building the compiled call path (once per machine) ...", flush=True)
    compiled_calls.load()  # (else the compiled module's repeat calls take the Python path: said in the env)
    env = {**environment(torch), "compiled_call_path": compiled_calls.why_not() or "loaded"}
    print(json.dumps(env), flush=True)
    abl = [] if rows else ablation(torch, repeats)
    results = []
    for done, (label, kw, precision) in enumerate(todo, 1):
        r = bench_row(torch, label, kw, precision, repeats)
        results.append(r)
        persistent = "-" if r["persistent_ms"] is None else f"{r['persistent_ms']:8.3f}"
        print(f"  [{done}/{len(todo)}] {label:<30} {precision}  graph {r['rnnplan_ms']:8.3f}  persistent {persistent}  "
              f"compiled {r['compiled_ms']:8.3f} ({r['compiled_choice']})  cuDNN eager {r['cudnn_eager_ms']:8.3f}  "
              f"graph {r['cudnn_graph_ms']:8.3f}  compiled x{r['compiled_vs_cudnn_graph']:.2f} vs cuDNN graph  "
              f"err {r['rel_err']:.1e}", flush=True)
    text = _markdown(env, abl, results)
    print(text)
    if out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps(dict(environment=env, ablation=abl, rows=results), indent=1))
        (d / "results.md").write_text(text)
        if abl:
            _chart(abl, d / "ablation.png")
