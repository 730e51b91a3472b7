"""Timelines as Chrome trace event JSON (one track per stream, complete "X" events), readable in
Perfetto and chrome://tracing. `predicted_trace` uses the cost model; a backend that measures
step times writes the same format through `trace_events`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rnnplan.lowering.cost import CostModel, simulate
from rnnplan.lowering.plan import Plan


def trace_events(plan: Plan, times: Sequence[tuple[float, float]], source: str) -> dict:
    """Trace JSON for `times[i] = (start_us, end_us)` of plan step i."""
    events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": f"rnnplan {source}: {plan.spec.short()}"}}]
    events += [{"name": "thread_name", "ph": "M", "pid": 0, "tid": s, "args": {"name": f"stream {s}"}}
               for s in range(plan.num_streams)]
    for step, (start, end) in zip(plan.steps, times):
        args = {"level": step.level, "waits": list(step.waits), "flops": step.flops}
        if step.record is not None:
            args["records"] = step.record
        events.append({"name": step.name, "cat": step.kind, "ph": "X", "pid": 0, "tid": step.stream,
                       "ts": round(start, 3), "dur": round(max(end - start, 0.001), 3), "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"source": source}}


def predicted_trace(plan: Plan, model: CostModel | None = None) -> dict:
    return trace_events(plan, simulate(plan, model), "predicted")


def write_trace(trace: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(trace))
    return path
