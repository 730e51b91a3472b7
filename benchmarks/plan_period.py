"""Is a graph-lowering plan periodic in its steady state? The evidence for deriving a new length's plan
from a cached one (issue 17, item 2: blocking mode's new length costs the graph lowering's planning).

With the input chunk c fixed (`PlanOptions.input_chunk`), it plans T and T + m c (m = 1, 2, 4: the
temporaries' ring of two buffers needs an even number of steps a period, so an odd c needs m = 2)
and looks for a cut p such that plan(T + m c) = plan(T)[:p] + one period + plan(T)[p:] shifted by
that period. A step is compared by kind, stream, level, deps, waits, record, operand views, layer
and step. Shifted means levels + 2 m c, steps + m c, step indices + the period's length, events +
the period's events, and rows of the T-long buffers (input, sequences, layer 0's input GEMM) + m c B.
It prints the cut, the period and where in plan(T) the inserted period comes from. Names are left
out: their time labels change width with T (t05 against t005).

    python benchmarks/plan_period.py [--layers 4] [--hidden 512] [--batch 64] [--steps 100] [--chunk 10] [--cell lstm]
        [--time 110 200 ...]

With --time, it also times `build_plan` of those lengths both ways, medians of five in this process:
from scratch, and extended from the cached plan of --steps (`lowering/extend.py`, as the planner
does where the chunk is fixed), and checks that the two plans are the same.
"""

from __future__ import annotations

import argparse

import rnnplan as rp


def signature(step, t_rows: set[int], rows: int, levels: int, steps: int, index: int, events: int) -> tuple:
    """A step as compared, moved by the given shifts (rows: elements a T-long buffer's views move)."""
    def view(v):
        return (v.buffer, v.offset + (rows * v.ld if v.buffer in t_rows else 0), v.rows, v.cols, v.ld)
    return (step.kind, step.stream, step.level + levels, tuple(d + index if d > 0 else d for d in step.deps),
            tuple(w + events for w in step.waits), None if step.record is None else step.record + events,
            tuple(map(view, step.inputs)) if step.step is not None else (),
            tuple(map(view, step.outputs)) if step.step is not None else (),
            step.layer, None if step.step is None else step.step + steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    for name, default in (("layers", 4), ("hidden", 512), ("batch", 64), ("steps", 100), ("chunk", 10)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--time", type=int, nargs="*", default=[], metavar="T")
    a = ap.parse_args()
    spec = dict(cell=a.cell, input_size=a.hidden, hidden_size=a.hidden, num_layers=a.layers, batch=a.batch)
    options = rp.PlanOptions(lowering="graph", input_chunk=a.chunk)
    short = rp.build_plan(rp.RNNSpec(**spec, seq_len=a.steps), options=options)
    for m in (1, 2, 4):
        if found(short, rp.build_plan(rp.RNNSpec(**spec, seq_len=a.steps + m * a.chunk), options=options),
                 a.steps, m * a.chunk, a.batch):
            break
    else:
        print("no cut found: not periodic in the steady state at these lengths")
    for t in a.time:
        timed(rp.RNNSpec(**spec, seq_len=a.steps), t, options)


def timed(short: rp.RNNSpec, steps: int, options: rp.PlanOptions) -> None:
    import statistics
    import time

    longer = short.model_copy(update={"seq_len": steps})
    ms, plans = {"from scratch": [], "extended": []}, {}
    for _ in range(5):
        for how in ms:
            rp.plan_cache.clear()
            if how == "extended":
                rp.build_plan(short, options=options)
            t0 = time.perf_counter()
            plans[how] = rp.build_plan(longer, options=options)
            ms[how].append((time.perf_counter() - t0) * 1e3)
    same = plans["from scratch"].to_json() == plans["extended"].to_json()
    print(f"  build_plan at T{steps}: from scratch {statistics.median(ms['from scratch']):.1f} ms, extended from "
          f"T{short.seq_len} {statistics.median(ms['extended']):.1f} ms; the same plan: {same}")


def found(short, long, steps: int, c: int, batch: int) -> bool:
    """Is `long` (c steps longer) `short` with one period inserted? Prints what it finds."""
    A, B = short.steps, long.steps
    period, events = len(B) - len(A), long.num_events - short.num_events
    t_rows = {b.id for b in short.buffers if b.role in ("input", "seq", "output")} | {A[0].outputs[0].buffer}
    rows = c * batch

    def same(p, q, k):  # A[p] moved by k periods is B[q]
        return signature(A[p], t_rows, k * rows, 2 * k * c, k * c, k * period, k * events) == \
            signature(B[q], t_rows, 0, 0, 0, 0, 0)
    prefix = next((i for i in range(1, len(A)) if not same(i, i, 0)), len(A))
    suffix = next((j for j in range(len(A) - 1) if not same(len(A) - 1 - j, len(B) - 1 - j, 1)), len(A) - 1)
    print(f"plan({steps}): {len(A)} steps, {short.num_events} events; plan({steps + c}): {len(B)} steps, "
          f"{long.num_events} events; period {period} steps, {events} events")
    print(f"  equal prefix {prefix} steps (from step 1: step 0 is layer 0's input GEMM over every step), "
          f"equal suffix {suffix} after one period's shift")
    for cut in range(len(A) - suffix, prefix + 1):
        if cut + 2 * period > len(A):
            break
        if all(same(cut + period + r, cut + r, -1) for r in range(period)):
            print(f"  cut at {cut}: plan({steps + c}) = plan({steps})[:{cut}] + plan({steps})"
                  f"[{cut + period}:{cut + 2 * period}] moved back one period + plan({steps})[{cut}:] moved on one")
            return True
    return False


if __name__ == "__main__":
    main()
