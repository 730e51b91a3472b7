"""What a pass is, as data the pass manager checks: `Pass(name, run, step_local, after)`.

Every pass module ends with its record. `run` is a pure function `(Graph, PlanOptions) -> Graph`
(the input graph is not mutated); `after` names the passes that must have run before it whenever
both run; `step_local` says that it rewrites every time step's nodes alike, whatever the step (what
it does to a step depends only on that step's nodes and the params), so that `build_plan` may run it
on a graph of three steps and repeat the middle one (`passes/repeat_steps.py`). A pass joins the
step-local ones only with the equality tests in tests/test_repeat_steps.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rnnplan.ir.graph import Graph
from rnnplan.spec import PlanOptions


@dataclass(frozen=True, slots=True)
class Pass:
    name: str
    run: Callable[[Graph, PlanOptions | None], Graph]
    step_local: bool = False
    after: tuple[str, ...] = ()
