"""Lowering: an optimized graph becomes a Plan (steps, streams, events, buffers), by the graph
lowering (`lower.py`: one kernel per GEMM and cell-step) or the persistent lowering (`recurrent.py`:
the recurrence as one kernel); `verify_plan.py` proves a plan safe; `planner.py` runs the whole
pipeline from a spec (passes, lowering, checks) with a plan cache, hardware-free."""

from rnnplan.lowering.plan import Buffer, BufferView, Plan, PlanStats, Step
from rnnplan.lowering.planner import build_graph, build_plan
from rnnplan.lowering.verify_plan import PlanError, load_plan, verify_plan

__all__ = ["Buffer", "BufferView", "Plan", "PlanError", "PlanStats", "Step", "build_graph", "build_plan", "load_plan",
           "verify_plan"]
