"""The pass registry and pass manager.

`PASSES` lists the pass names in canonical order; `apply_passes` runs a subset of them, in that
order, each as a pure function `(Graph, PlanOptions) -> Graph`, verifying the graph after each.
"""

from __future__ import annotations

from collections.abc import Callable

from rnnplan.ir import Graph, verify
from rnnplan.spec import PlanOptions

Pass = Callable[[Graph, PlanOptions], Graph]

REGISTRY: dict[str, Pass] = {}

PASSES: tuple[str, ...] = tuple(REGISTRY)


def apply_passes(graph: Graph, options: PlanOptions, check: bool = True) -> Graph:
    names = PASSES if options.passes is None else options.passes
    for name in names:
        graph = REGISTRY[name](graph, options)
        if check:
            verify(graph)
    return graph
