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
