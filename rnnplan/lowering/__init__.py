"""Lowering: an optimized graph becomes a Plan (steps, streams, events, buffers), by the graph
lowering (`lower.py`: one kernel per GEMM and cell-step) or the persistent lowering (`recurrent.py`:
the recurrence as one kernel); `verify_plan.py` proves a plan safe and bound to its spec,
`integrity.py` that a plan of anyone else's making computes its spec's function; `planner.py` runs
the whole pipeline from a spec (passes, lowering, checks) with a plan cache, hardware-free."""

from rnnplan.lowering.integrity import check_plan, load_plan, plan_differences
from rnnplan.lowering.plan import Buffer, BufferView, Plan, PlanStats, Step
from rnnplan.lowering.planner import PLAN_CACHE, PlanCache, build_graph, build_plan
from rnnplan.lowering.verify_plan import PlanError, verify_plan

__all__ = ["PLAN_CACHE", "Buffer", "BufferView", "Plan", "PlanCache", "PlanError", "PlanStats", "Step", "build_graph",
           "build_plan", "check_plan", "load_plan", "plan_differences", "verify_plan"]
