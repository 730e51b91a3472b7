"""The public planning entry points, where the machine meets the planner: `build_plan` and
`build_graph` describe the local GPU (when there is one, and the options name none) and hand it to
the hardware-free planner as data (`PlanOptions.device`)."""

from __future__ import annotations

import rnnplan.lowering.planner as planner
from rnnplan.backends.device import local_device
from rnnplan.ir.graph import Graph
from rnnplan.lowering.plan import Plan
from rnnplan.spec import PlanOptions, RNNSpec


def with_local_device(options: PlanOptions) -> PlanOptions:
    """`options` with `device` set to the local GPU where it is None and a GPU is usable."""
    if options.device is not None:
        return options
    device = local_device()
    return options if device is None else options.model_copy(update={"device": device})


def build_plan(spec: RNNSpec, passes: tuple[str, ...] | list[str] | None = None,
               options: PlanOptions | None = None, progress=None) -> Plan:
    """Plan `spec` for this machine's GPU (or the device the options describe). `passes` (a shortcut
    for `options.passes`) selects passes; `()` is the naive plan. Plans are cached by (spec, options):
    a repeated call returns the same (immutable) Plan. `progress(stage, done, total)`, if given, is
    called as planning moves from stage to stage."""
    options = with_local_device(planner.resolve_options(options, passes))  # validated once, here
    return planner.planned(planner.revalidated(spec, RNNSpec, "spec"), options, progress)


def build_graph(spec: RNNSpec, options: PlanOptions | None = None) -> Graph:
    """The optimized graph that `build_plan` lowers (for inspection and tests)."""
    return planner.build_graph(spec, with_local_device(options or PlanOptions()))
