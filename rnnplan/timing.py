"""Timing on the GPU the one way this project does it: CUDA events on torch's current stream around
each call, after warm-ups, the median (METHOD.md). Used by the benchmarks and by the drop-in's
autotuning; imports torch only when called."""

from __future__ import annotations

import statistics


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median ms of `fn(i)` over `repeats` calls, between CUDA events on torch's current stream, after
    `warmup` calls. rnnplan's executors order their work after the caller's stream and make it wait
    for their results, so the events bracket a whole call."""
    import torch

    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(repeats):
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_us(fn, calls: int = 40, rounds: int = 25, warmup: int = 50) -> float:
    """Median microseconds of Python a call of `fn()` takes with the GPU kept busy ahead of it (a
    sleep kernel queued before each round of `calls`), so that no launch waits for the GPU: the
    host's own cost of a call, whatever the GPU's."""
    import time

    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        torch.cuda._sleep(20_000_000)  # about 10 ms: longer than a round's calls take to issue
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn()
            times.append(time.perf_counter_ns() - t0)
        torch.cuda.synchronize()
    return statistics.median(times) / 1e3
