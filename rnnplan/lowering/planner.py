"""The planner: spec -> naive graph -> passes -> lowering -> verified Plan, with a plan cache.

Hardware-free: the GPU to plan for arrives as data (`PlanOptions.device`; `rnnplan.build_plan`
fills in the local one). The naive graph of a long sequence is never built: the step-local passes
run on three steps and `passes/repeat_steps.py` repeats the middle one (the graph lowering), or the
passes run on one step and the recurrence is built for the whole sequence (the persistent lowering).
Both give the graph that the passes give on the whole naive graph (tests/test_repeat_steps.py,
tests/test_persistent.py). With the input chunk fixed, a graph-lowering plan of a longer sequence
is made from a shorter one in the cache by inserting whole periods of its steady state
(`lowering/extend.py`): the same plan (tests/test_extend.py), in a step per new step."""

from __future__ import annotations

import gc
from collections import OrderedDict
from contextlib import contextmanager
from typing import NamedTuple

from rnnplan.ir import Graph, build, verify
from rnnplan.lowering.extend import extended
from rnnplan.lowering.lower import lower
from rnnplan.lowering.plan import Plan
from rnnplan.lowering.recurrent import persistent_recurrence
from rnnplan.lowering.registry import register
from rnnplan.lowering.verify_plan import verify_plan
from rnnplan.passes.manager import REGISTRY
from rnnplan.passes.repeat_steps import SHORT_STEPS, repeat_middle_step
from rnnplan.persistent.select import choose_lowering
from rnnplan.spec import PASSES, PlanOptions, RNNSpec


def revalidated(model, cls, name: str):
    """`model`, an instance of the pydantic model `cls`, validated again: `model_copy(update=...)`
    skips validation, so what planning is handed is checked here (a ValidationError names the field)."""
    if not isinstance(model, cls):
        raise TypeError(f"{name} must be an rnnplan.{cls.__name__}, got {type(model).__name__}")
    return cls.model_validate(model.model_dump())


def resolve_options(options: PlanOptions | None, passes) -> PlanOptions:
    """`options` (validated again) with `passes` (a shortcut for `options.passes`: pass names, "all"
    or "none") folded in."""
    options = PlanOptions() if options is None else revalidated(options, PlanOptions, "options")
    if passes is not None:
        given = PlanOptions(passes=passes).passes
        if options.passes is not None and options.passes != given:
            raise ValueError(f"passes given twice with different values: {list(given or PASSES)} as the argument, "
                             f"{list(options.passes)} in options.passes")
        options = options.model_copy(update={"passes": given})
    return options


def build_plan(spec: RNNSpec, passes: tuple[str, ...] | list[str] | None = None,
               options: PlanOptions | None = None, progress=None) -> Plan:
    """Plan `spec` for the device `options.device` describes, or none (no local GPU is looked for:
    `rnnplan.build_plan` does that). `passes` (a shortcut for `options.passes`) selects passes; `()`
    is the naive plan. Plans are cached by (spec, options) in `PLAN_CACHE`: a repeated call returns
    the same (immutable) Plan. `progress(stage, done, total)`, if given, is called as planning moves from
    stage to stage."""
    return planned(revalidated(spec, RNNSpec, "spec"), resolve_options(options, passes), progress)


def planned(spec: RNNSpec, options: PlanOptions, progress=None) -> Plan:
    """`build_plan` for a spec and options already validated (by `revalidated`, `resolve_options`)."""
    options.check_against(spec)
    key = (spec, options)
    found = PLAN_CACHE.get(key)
    if found is None:
        progress = progress or (lambda *a: None)
        found = PLAN_CACHE.put(key, _extended_from_cache(spec, options, progress) or _plan(spec, options, progress))
    return found


def _extended_from_cache(spec: RNNSpec, options: PlanOptions, progress) -> Plan | None:
    """With the input chunk fixed, a graph-lowering plan of a shorter sequence of the same network
    and options in the cache, extended by whole periods (`lowering/extend.py`: the same plan, in
    a step per new step); None where none extends."""
    if options.input_chunk is None:
        return None
    shorter = PLAN_CACHE.shorter(spec, options)
    if not shorter or choose_lowering(spec, options) != (shorter[0].lowering, shorter[0].lowering_reason):
        return None
    names = tuple(PASSES if options.passes is None else options.passes)
    with _no_cyclic_gc():
        for plan in shorter:
            progress("extend", 0, 1)
            try:
                found = extended(plan, spec.seq_len, lambda s: len(passed_graph(s, names, options)))
            except ValueError:  # not a whole number of periods longer, no steady state, ...
                continue
            progress("done", 1, 1)
            return found
    return None


class CacheInfo(NamedTuple):
    plans: int
    max_plans: int
    steps: int  # steps of the plans held: a plan holds about 2 KB of Python objects a step
    hits: int
    misses: int


class PlanCache:
    """The planner's plans by (spec, options), at most `max_plans` of them, the least recently used
    dropped first. `rnnplan.plan_cache` is the one the planner uses: `info()`, `clear()`, and
    `max_plans` to resize it (0 keeps none)."""

    def __init__(self, max_plans: int = 32):
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._max, self.hits, self.misses = 0, 0, 0
        self.max_plans = max_plans

    @property
    def max_plans(self) -> int:
        return self._max

    @max_plans.setter
    def max_plans(self, n: int) -> None:
        if type(n) is not int or n < 0:
            raise ValueError(f"max_plans must be an int >= 0, got {n!r}")
        self._max = n
        while len(self._plans) > n:
            self._plans.popitem(last=False)

    def get(self, key: tuple) -> Plan | None:
        found = self._plans.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
            self._plans.move_to_end(key)
        return found

    def put(self, key: tuple, plan: Plan) -> Plan:
        if self._max:
            self._plans[key] = plan
            self.max_plans = self._max  # evicts down to the limit
        return plan

    def shorter(self, spec: RNNSpec, options: PlanOptions) -> list[Plan]:
        """The cached graph-lowering plans of `spec`'s network with `options` for shorter sequences,
        longest first (what `extended` may make `spec`'s plan from)."""
        found = [plan for (s, o), plan in self._plans.items() if o == options and s.seq_len < spec.seq_len
                 and plan.lowering == "graph" and s.model_copy(update={"seq_len": spec.seq_len}) == spec]
        return sorted(found, key=lambda plan: -plan.spec.seq_len)

    def info(self) -> CacheInfo:
        return CacheInfo(len(self._plans), self._max, sum(len(p.steps) for p in self._plans.values()),
                         self.hits, self.misses)

    def clear(self) -> None:
        self._plans.clear()
        self.hits = self.misses = 0


PLAN_CACHE = PlanCache()


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


def _plan(spec: RNNSpec, options: PlanOptions, progress) -> Plan:
    # The final graph and the plan are always verified; verifying after every pass is the tests' job
    # (apply_passes(check=True)), as it would double planning time for large graphs.
    names = PASSES if options.passes is None else options.passes
    lowering, why = choose_lowering(spec, options)
    total = len(names) + 4 + (lowering == "persistent")
    with _no_cyclic_gc():
        progress("build", 0, total)
        # The persistent lowering replaces every node the passes rewrite and reads only the params they
        # leave (pretranspose's layout of layer 0's W_ih), so it plans from one step of the network:
        # the same graph as from all of it (tests/test_persistent.py), at no cost per step.
        if lowering == "persistent":
            graph = passed_graph(spec.model_copy(update={"seq_len": 1}), names, options, progress, total)
            progress("persistent_recurrence", total - 4, total)
            graph = persistent_recurrence(graph, options, spec)
        else:
            graph = passed_graph(spec, names, options, progress, total)
        progress("verify graph", total - 3, total)
        verify(graph)
        progress("lower", total - 2, total)
        result = lower(graph, options).model_copy(update={"lowering": lowering, "lowering_reason": why})
        progress("verify plan", total - 1, total)
        verify_plan(result)
        # Drop the graph while the collector is still off: freed by reference counting now, it is not
        # among the objects the first collection after planning must scan.
        del graph
        progress("done", total, total)
        return register(result)


def passed_graph(spec: RNNSpec, names: tuple[str, ...], options: PlanOptions, progress=None,
                 total: int = 0) -> Graph:
    """The graph of `spec` after the passes `names` (canonical order): the step-local ones applied to
    three steps and repeated down the sequence (`repeat_steps`), then the others on the whole graph.
    The same graph as `apply_passes(build(spec))` (tests/test_repeat_steps.py), without ever building
    the naive graph of a long sequence."""
    progress = progress or (lambda *a: None)
    local = tuple(name for name in names if REGISTRY[name].step_local)
    if not local or spec.seq_len <= SHORT_STEPS:
        graph, rest = build(spec), names
    else:
        graph = build(spec.model_copy(update={"seq_len": SHORT_STEPS}), time_slots=True)
        for name in local:
            progress(name, names.index(name) + 1, total)
            graph = REGISTRY[name].run(graph, options)
        graph, rest = repeat_middle_step(graph, spec), tuple(n for n in names if n not in local)
    for name in rest:
        progress(name, names.index(name) + 1, total)
        graph = REGISTRY[name].run(graph, options)
    graph.passes = tuple(names)  # in canonical order, as applied to the whole graph
    return graph


def build_graph(spec: RNNSpec, options: PlanOptions | None = None) -> Graph:
    """The optimized graph that `build_plan` lowers (for inspection and tests)."""
    spec, options = revalidated(spec, RNNSpec, "spec"), resolve_options(options, None)
    options.check_against(spec)
    names = PASSES if options.passes is None else options.passes
    graph = passed_graph(spec, tuple(names), options, None, len(names))
    persistent = choose_lowering(spec, options)[0] == "persistent"
    return verify(persistent_recurrence(graph, options) if persistent else graph)
