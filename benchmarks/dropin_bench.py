"""The drop-in on a GPU: what `rnnplan.compile` costs where a server feels it, against cuDNN in the
same run. Correctness first (each row compares with the module in strict fp32), then:

- first call at a new length (planning, executor, CUDA-graph capture) and the repeat call; the same
  with `build="background"` (the first call on torch's module while the executor builds);
- a packed batch against the padded batch of the same longest length;
- host time per call (Python until the call returns, with the GPU kept busy ahead so that no launch
  waits for it: `rnnplan.timing.host_us`) at one step, batch 1, on the compiled call path
  (`rnnplan.compiled_calls`, built first) and on the Python path;
- per-chunk latency for chunks of 1, 4 and 16 steps at batch 1, streaming the state, against cuDNN
  eager and cuDNN captured in a CUDA graph.

    python3 benchmarks/dropin_bench.py [--out FILE.json] [--cpu] [--only set-up background packed host chunk]

`--cpu`: only the set-up at new shapes on CPU tensors (the NumPy backend), wall time of the first call
less the median of three repeats.

Timing: CUDA events on torch's current stream, 3 warm-ups, median of 30 (host time: the median
wall time of 1000 calls, 40 at a time behind a sleep kernel). Needs CuPy, torch with CUDA and a GPU.
"""

import argparse
import json
import statistics
import time

import torch

import rnnplan as rp
from rnnplan.bench import captured_call, median_ms
from rnnplan.timing import host_us


def rel_err(got, want) -> float:  # of torch tensors (rnnplan.bench's takes arrays)
    return float((got.float() - want.float()).norm() / want.float().norm())


def lstm(layers: int, hidden: int, dtype=torch.float32, batch_first: bool = False):
    torch.manual_seed(0)
    return torch.nn.LSTM(hidden, hidden, num_layers=layers, batch_first=batch_first).cuda().eval().to(dtype)


def _synced_ms(fn) -> float:
    """Wall milliseconds of `fn()` (no grad) between two device synchronizations: what a caller waits."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def first_calls(results: list) -> None:
    """Paper configuration: the first call at T 100, the repeat, a new length T 101, a new batch; in
    tf32 (graph lowering: fp32 weights do not fit on-chip) and fp16 (persistent), without autotuning
    (rnnplan's own set-up) and with it (torch's default: at a new batch every candidate planned, built
    and timed; at a new length within 2x of a timed one, that one's choice alone built)."""
    for precision, dtype, autotune in (("tf32", torch.float32, False), ("fp16", torch.float16, False),
                                       ("tf32", torch.float32, True), ("fp16", torch.float16, True)):
        m = lstm(4, 512, dtype)
        fast = rp.compile(m, autotune=autotune)
        for label, shape in (("first call T100 B64", (100, 64)), ("repeat T100 B64", (100, 64)),
                             ("new length T101 B64", (101, 64)), ("new length T57 B64", (57, 64)),
                             ("new batch T100 B32", (100, 32))):
            x = torch.randn(*shape, 512, device="cuda", dtype=dtype)
            ms = _synced_ms(lambda: fast(x))
            what = list(fast._executors.values())[-1].describe()
            row = f"{label} {precision}{' autotuned' if autotune else ''}"
            results.append(dict(kind="set-up", row=row, ms=ms, runs=what))
            print(f"  set-up   {row:<40} {ms:9.1f} ms  {what[:90]}", flush=True)


def background_set_up(results: list) -> None:
    """`build="background"`, paper configuration: the first call at a new length (T 101 after T 100) or
    a new batch (B 32: the persistent kernel is compiled for it), back-to-back calls at that shape
    while its executor builds on the worker (each synchronized: the latency a caller sees), how long
    until the executor is installed, the installing call (with autotune: the candidates' timing), and
    the repeat call then, against torch's own call (the stand-in) at that shape."""
    for precision, dtype, autotune in (("tf32", torch.float32, False), ("fp16", torch.float16, False),
                                       ("tf32", torch.float32, True)):
        m = lstm(4, 512, dtype)
        fast = rp.compile(m, autotune=autotune, build="background")
        x100 = torch.randn(100, 64, 512, device="cuda", dtype=dtype)
        fast(x100)
        fast.wait()
        fast(x100)  # installed (timed, with autotune)
        for label, shape in (("new length T101 B64", (101, 64)), ("new batch T100 B32", (100, 32))):
            x = torch.randn(*shape, 512, device="cuda", dtype=dtype)
            torch_ms = statistics.median(_synced_ms(lambda: m(x)) for _ in range(10))  # the stand-in's work
            t0 = time.perf_counter()
            first = _synced_ms(lambda: fast(x))
            during = []
            while fast.cache_info().building:
                during.append(_synced_ms(lambda: fast(x)))
            ready_ms = (time.perf_counter() - t0) * 1e3
            installing = during.pop() if during else float("nan")  # the call that found the build done
            repeat = median_ms(lambda i: fast(x), 30)
            what = list(fast._executors.values())[-1].describe()
            row = f"{label} {precision}{' autotuned' if autotune else ''}"
            during.sort()
            rec = dict(kind="background", row=row, first_call_ms=first, torch_call_ms=torch_ms, calls_during=len(during),
                       during_median_ms=statistics.median(during) if during else None,
                       during_max_ms=during[-1] if during else None, ready_after_ms=ready_ms,
                       installing_call_ms=installing, repeat_ms=repeat, runs=what)
            results.append(rec)
            print(f"  background {row:<32} first {first:7.1f} ms (torch {torch_ms:.2f}); {len(during)} calls while "
                  f"building, median {rec['during_median_ms'] or 0:.2f} max {rec['during_max_ms'] or 0:.1f} ms; "
                  f"ready after {ready_ms:.0f} ms; installing call {installing:.1f} ms; repeat {repeat:.3f} ms; "
                  f"{what[:70]}", flush=True)


def cpu_set_up(results: list) -> None:
    """The paper configuration on CPU tensors (NumPy backend): the set-up at each new shape, timed
    alone (planning and the executor) and as the first call's wall time less the median of three
    repeats at that shape (which adds the first touch of new memory, and the host's noise)."""
    torch.manual_seed(0)
    m = torch.nn.LSTM(512, 512, num_layers=4).eval()
    fast = rp.compile(m)
    for label, shape in (("first call T100 B64", (100, 64)), ("new length T101 B64", (101, 64)),
                         ("new length T57 B64", (57, 64)), ("new batch T100 B32", (100, 32)),
                         ("new length, new bucket T120 B64", (120, 64))):
        x = torch.randn(*shape, 512)
        walls = []
        t0 = time.perf_counter()
        fast.executor(*shape, False, x.device)  # planning and the executor alone (the call below finds it)
        built = (time.perf_counter() - t0) * 1e3
        with torch.no_grad():
            for _ in range(4):
                t0 = time.perf_counter()
                fast(x)
                walls.append((time.perf_counter() - t0) * 1e3)
        repeat = statistics.median(walls[1:])
        what = list(fast._executors.values())[-1].describe()
        results.append(dict(kind="cpu set-up", row=label, first_ms=walls[0], repeat_ms=repeat, ms=walls[0] - repeat,
                            plan_and_executor_ms=built, runs=what))
        print(f"  cpu      {label:<34} plan+executor {built:6.1f} ms; first call {walls[0]:7.1f} ms, repeat "
              f"{repeat:7.1f} ms: set-up {walls[0] - repeat:6.1f} ms  {what[:40]}", flush=True)


def packed_against_padded(results: list) -> None:
    for precision, dtype in (("tf32", torch.float32), ("fp16", torch.float16)):
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        m = lstm(4, 512, dtype)
        fast = rp.compile(m, autotune=False)  # rnnplan's own lowerings, padded against packed
        x = torch.randn(100, 64, 512, device="cuda", dtype=dtype)
        lengths = torch.randint(50, 101, (64,))
        lengths[0] = 100
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        with torch.no_grad():
            torch.backends.cudnn.allow_tf32 = False  # the reference: strict fp32 on the same weights
            want = m.float()(packed.to(torch.float32))[0].data
            m.to(dtype)
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
            err = rel_err(fast(packed)[0].data, want)
            padded_ms = median_ms(lambda i: fast(x), 30)
            packed_ms = median_ms(lambda i: fast(packed), 30)
            python_path = rp.compile(m, autotune=False, fast_call=False)
            python_ms = median_ms(lambda i: python_path(packed), 30)  # (its warm-up builds the shape)
            cudnn_packed = median_ms(lambda i: m(packed), 30)
            # the plans alone, their CUDA graphs replayed: the masked kernels' own cost
            plan_ms = {varlen: _graph_ms(fast.executor(100, 64, varlen, x.device)) for varlen in (False, True)}
            pad_ms = median_ms(lambda i: torch.nn.utils.rnn.pad_packed_sequence(packed), 30)
        row = dict(kind="packed", row=f"LSTM 4x512 B64 T100 {precision}", padded_ms=padded_ms, packed_ms=packed_ms,
                   cudnn_packed_ms=cudnn_packed, rel_err=err, explain=fast.explain(), plan_padded_ms=plan_ms[False],
                   plan_masked_ms=plan_ms[True], pad_packed_ms=pad_ms, packed_python_path_ms=python_ms,
                   compiled_path=fast._fast is not None)
        results.append(row)
        print(f"  packed   {row['row']:<24} padded {padded_ms:7.3f}  packed {packed_ms:7.3f} "
              f"({packed_ms / padded_ms - 1:+.0%}; Python path {python_ms:7.3f})  cuDNN packed {cudnn_packed:7.3f}  "
              f"err {err:.1e}; plans alone: "
              f"padded {plan_ms[False]:7.3f} masked {plan_ms[True]:7.3f} ({plan_ms[True] / plan_ms[False] - 1:+.0%}); "
              f"pad_packed_sequence {pad_ms:7.3f}", flush=True)
    torch.backends.cudnn.allow_tf32 = True


def _graph_ms(ex) -> float:
    """GPU time of an executor's CUDA graph alone, replayed on torch's current stream."""
    import cupy

    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    return median_ms(lambda i: ex.impl.graph.launch(stream=stream), 30)


def host_time(results: list) -> None:
    m = lstm(2, 256)
    fast, tuned = rp.compile(m, autotune=False), rp.compile(m)
    python_path = rp.compile(m, autotune=False, fast_call=False)
    m_bf = lstm(2, 256, batch_first=True)
    batch_first = rp.compile(m_bf, autotune=False)  # (B, T, I): transposed in the call
    batch_first_python = rp.compile(m_bf, autotune=False, fast_call=False)
    x = torch.randn(1, 1, 256, device="cuda")
    x_bf = torch.randn(2, 2, 256, device="cuda")  # (B2 T2: made time-major by a copy, not a view)
    with torch.no_grad():
        out, state = fast(x)
        tuned(x, state)
        python_path(x, state)
        for _ in range(2):
            batch_first(x_bf)
            batch_first_python(x_bf)
        bf_path = "compiled call path" if batch_first._fast is not None else "Python path"
        ex = fast.executor(1, 1, False, x.device)
        choice = list(tuned._executors.values())[-1].chosen.name
        path = "compiled call path" if fast._fast is not None else "Python path"
        for label, call in ((f"rnnplan.compile call ({path})", lambda: fast(x, state)),
                            ("rnnplan.compile call (Python path)", lambda: python_path(x, state)),
                            (f"compiled, autotuned ({choice})", lambda: tuned(x, state)),
                            (f"batch-first B2 T2 ({bf_path})", lambda: batch_first(x_bf)),
                            ("batch-first B2 T2 (Python path)", lambda: batch_first_python(x_bf)),
                            ("Executor.run", lambda: ex.run(x, state)),
                            ("cuDNN eager", lambda: m(x, state))):
            us = host_us(call)
            results.append(dict(kind="host", row=f"LSTM 2x256 B1 T1 {label}", us=us, lowering=ex.plan.lowering))
            print(f"  host     {label:<32} {us:7.1f} us a call (host), {ex.plan.lowering} lowering", flush=True)


def chunk_latency(results: list) -> None:
    for layers, hidden in ((2, 256), (4, 512)):
        m = lstm(layers, hidden)
        fast, tuned = rp.compile(m, autotune=False), rp.compile(m)
        python_path = rp.compile(m, autotune=False, fast_call=False)
        for chunk in (1, 4, 16):
            x = torch.randn(chunk, 1, hidden, device="cuda")
            h0 = torch.zeros(layers, 1, hidden, device="cuda")
            state = (h0, torch.zeros_like(h0))
            with torch.no_grad():
                err = rel_err(fast(x, state)[0], m(x, state)[0])
                ours = median_ms(lambda i: fast(x, state), 30)
                python_path(x, state)
                python_ms = median_ms(lambda i: python_path(x, state), 30)
                tuned_err = rel_err(tuned(x, state)[0], m(x, state)[0])
                tuned_ms = median_ms(lambda i: tuned(x, state), 30)
                choice = list(tuned._executors.values())[-1].chosen.name
                eager = median_ms(lambda i: m(x, state), 30)
                graph, _ = captured_call(torch, m, x.clone(), state)
                captured = median_ms(lambda i: graph.replay(), 30)
            lowering = fast.executor(chunk, 1, False, x.device).plan.lowering
            row = dict(kind="chunk", row=f"LSTM {layers}x{hidden} B1 chunk {chunk}", rnnplan_ms=ours, cudnn_eager_ms=eager,
                       cudnn_graph_ms=captured, rel_err=err, lowering=lowering, autotuned_ms=tuned_ms,
                       autotuned_choice=choice, autotuned_rel_err=tuned_err, python_path_ms=python_ms,
                       compiled_path=fast._fast is not None)
            results.append(row)
            print(f"  chunk    {row['row']:<24} rnnplan {ours:7.3f} ({lowering}; Python path {python_ms:7.3f})  "
                  f"autotuned {tuned_ms:7.3f} ({choice})  cuDNN eager {eager:7.3f}  cuDNN graph {captured:7.3f}  "
                  f"err {err:.1e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--cpu", action="store_true", help="only the set-up on CPU tensors (no GPU needed)")
    ap.add_argument("--only", nargs="+", choices=["set-up", "background", "packed", "host", "chunk"],
                    help="only these parts")
    args = ap.parse_args()
    results: list = []
    if args.cpu:
        cpu_set_up(results)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
        return
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    import rnnplan.compiled_calls as compiled_calls

    compiled_calls.load()
    print(f"compiled call path: {compiled_calls.why_not() or 'loaded'}", flush=True)
    parts = {"set-up": first_calls, "background": background_set_up, "packed": packed_against_padded, "host": host_time, "chunk": chunk_latency}
    for name, part in parts.items():
        if args.only is None or name in args.only:
            part(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
