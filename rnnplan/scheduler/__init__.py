"""Scheduling: the optimization passes, the pass manager, lowering to a Plan, and plan checks."""

from rnnplan.scheduler.manager import PASSES, apply_passes
from rnnplan.scheduler.pipeline import build_graph, build_plan
from rnnplan.scheduler.plan import Buffer, BufferView, Plan, PlanStats, Step
from rnnplan.scheduler.verify_plan import PlanError, verify_plan

__all__ = ["PASSES", "Buffer", "BufferView", "Plan", "PlanError", "PlanStats", "Step", "apply_passes",
           "build_graph", "build_plan", "verify_plan"]
