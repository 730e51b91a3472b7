"""Where a drop-in call's host time goes (issue 17, item 4), on the device machine: the median wall
time of pieces of a call of `rnnplan.compile` at LSTM 2x256, batch 1, one step (persistent lowering,
by pointers), timed by `rnnplan.timing.host_us` (the GPU kept busy ahead of the calls, so that none
waits for it), on the compiled call path (`rnnplan.compiled_calls`, built first) and on the Python
path (`fast_call=False`), and a cProfile of many calls on the Python path. Then, for whole
sequences, what the host adds to a call's time on the GPU: the call timed from an idle GPU
(`median_ms`, as the benchmarks time it) against the same call queued behind a sleep kernel (its
launches all issued before the GPU reaches them), for each candidate of `rnnplan.compile` and for
cuDNN in a CUDA graph.

    python3 benchmarks/host_profile.py [--no-pieces]
"""

import argparse
import cProfile
import pstats
import statistics

import torch

import rnnplan as rp
import rnnplan.compiled_calls as compiled_calls
from rnnplan.autotune import CudnnGraph
from rnnplan.timing import host_us, median_ms
from rnnplan.torch_calls import raw_stream


def pieces() -> None:
    torch.manual_seed(0)
    m = torch.nn.LSTM(256, 256, num_layers=2).cuda().eval()
    compiled = rp.compile(m, autotune=False)
    fast = rp.compile(m, autotune=False, fast_call=False)
    x = torch.randn(1, 1, 256, device="cuda")
    with torch.no_grad():
        compiled(x)
        assert compiled._fast is not None, compiled_calls.why_not()
        out, state = fast(x)
        h, c = state
        (choice,) = fast._executors.values()
        run = choice.chosen.run
        out2, h2, c2 = run(x, h, c, None)
        outs = (out2.data_ptr(), h2.data_ptr(), c2.data_ptr())
        timed = {
            "whole call, compiled call path": lambda: compiled(x, state),
            "whole call, compiled path, no state": lambda: compiled(x),
            "whole call fast(x, state), Python path": lambda: fast(x, state),
            "forward (no nn.Module.__call__)": lambda: fast.forward(x, state),
            "CompiledRNN.run (below forward)": lambda: fast.run(x, h, c, None),
            "the candidate's run (pointers)": lambda: run(x, h, c, None),
            "the candidate's call (PointerCall)": lambda: run.call(raw_stream(x.device), x.data_ptr(),
                                                                  (h.data_ptr(), c.data_ptr()), outs, False),
            "its copy-in launch (KernelCall)": lambda: run.call.copy_in(raw_stream(x.device), x.data_ptr(), 0, 0, 0),
            "its plan launch (the driver's)": lambda: run.call._launch_graph(raw_stream(x.device)),
            "raw_stream(dev)": lambda: raw_stream(x.device),
            "x.new_empty": lambda: x.new_empty((1, 1, 256)),
            "torch.cuda.is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
            "torch.cuda.current_device": torch.cuda.current_device,
            "cuDNN eager m(x, state)": lambda: m(x, state),
        }
        if run.call.one_launch is not None:
            timed["its whole call, one launch (GraphWithKernels)"] = lambda: run.call.whole(
                raw_stream(x.device), x.data_ptr(), (h.data_ptr(), c.data_ptr()), outs)
            timed["its outputs made ahead (OutputsAhead.refill)"] = lambda: run.ahead.refill(x, raw_stream(x.device))
        for name, fn in timed.items():
            print(f"{name:<40} {host_us(fn):7.2f} us", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3000):
            fast(x, state)
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def queued_ms(fn, repeats: int = 30) -> float:
    """Median ms of `fn()` between CUDA events, each call issued behind a sleep kernel: the GPU's own
    time of the call, with no wait for the host between its launches."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        torch.cuda._sleep(2_000_000)  # about 1 ms: longer than a call takes to issue
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gaps() -> None:
    rows = [("lstm", 512, 1, 8, torch.bfloat16), ("lstm", 512, 1, 8, torch.float16), ("lstm", 1024, 1, 8, torch.bfloat16)]
    for cell, hidden, layers, batch, dtype in rows:
        torch.manual_seed(0)
        m = torch.nn.LSTM(hidden, hidden, num_layers=layers).cuda().eval().to(dtype)
        x = torch.randn(100, batch, hidden, device="cuda", dtype=dtype)
        name = f"LSTM {layers}x{hidden} B{batch} T100 {str(dtype)[6:]}"
        with torch.no_grad():
            for lowering, fast_call in (("persistent", False), ("persistent", True), ("graph", False),
                                        ("autotuned", False), ("autotuned", True)):
                fast = rp.compile(m, autotune=lowering == "autotuned", fast_call=fast_call,
                                  lowering="auto" if lowering == "autotuned" else lowering)
                call = lambda: fast(x)  # noqa: E731
                call()
                path = "compiled" if fast._fast is not None else "Python"
                choice = next(iter(fast._executors.values())).chosen.name
                print(f"{name} {lowering:<10} ({choice}, {path} path) idle {median_ms(lambda i: call(), 30):.3f} ms, "
                      f"queued {queued_ms(call):.3f} ms", flush=True)
            graph = CudnnGraph(m, x, True, layers, hidden)
            call = lambda: graph(x, None, None, None)  # noqa: E731
            print(f"{name} {'cudnn':<10} idle {median_ms(lambda i: call(), 30):.3f} ms, "
                  f"queued {queued_ms(call):.3f} ms (compiled's cuDNN candidate)", flush=True)
            g = torch.cuda.CUDAGraph()
            m(x)
            torch.cuda.synchronize()
            with torch.cuda.graph(g):
                m(x)
            print(f"{name} {'cuDNN graph':<10} idle {median_ms(lambda i: g.replay(), 30):.3f} ms, "
                  f"queued {queued_ms(g.replay):.3f} ms (torch's replay alone)", flush=True)


def main() -> None:
    if compiled_calls.load() is None:
        raise SystemExit(compiled_calls.why_not())
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-pieces", action="store_true")
    if not ap.parse_args().no_pieces:
        pieces()
    gaps()


if __name__ == "__main__":
    main()
