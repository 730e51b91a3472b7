"""`build_plan`: spec -> naive graph -> passes -> lowering -> verified Plan, with a plan cache."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from functools import lru_cache

from rnnplan.ir import build, verify
from rnnplan.scheduler.lower import lower
from rnnplan.scheduler.manager import apply_passes
from rnnplan.scheduler.plan import Plan
from rnnplan.scheduler.verify_plan import verify_plan
from rnnplan.spec import PlanOptions, RNNSpec


def build_plan(spec: RNNSpec, passes: tuple[str, ...] | list[str] | None = None,
               options: PlanOptions | None = None) -> Plan:
    """Plan `spec`. `passes` (a shortcut for `options.passes`) selects passes; `()` is the naive plan.

    Plans are cached by (spec, options): a repeated call returns the same (immutable) Plan.
    """
    options = options or PlanOptions()
    if passes is not None:
        if options.passes is not None and tuple(options.passes) != tuple(passes):
            raise ValueError("passes given twice (argument and options.passes) with different values")
        options = PlanOptions(**{**options.model_dump(exclude={"passes"}), "passes": tuple(passes)})
    options.check_against(spec)
    return _cached_plan(spec, options)


@contextmanager
def _no_cyclic_gc():
    """Planning allocates millions of small acyclic objects; the cyclic collector would rescan them
    all again and again (30-40% of planning time on large graphs) and find nothing to free."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@lru_cache(maxsize=32)
def _cached_plan(spec: RNNSpec, options: PlanOptions) -> Plan:
    # The final graph and the plan are always verified; verifying after every pass is the tests' job
    # (apply_passes(check=True)), as it would double planning time for large graphs.
    with _no_cyclic_gc():
        graph = verify(apply_passes(build(spec), options, check=False))
        return verify_plan(lower(graph, options))


def build_graph(spec: RNNSpec, options: PlanOptions | None = None):
    """The optimized graph that `build_plan` lowers (for inspection and tests)."""
    options = options or PlanOptions()
    options.check_against(spec)
    return verify(apply_passes(build(spec), options, check=False))
