"""The pass registry and pass manager.

`PASSES` lists the pass names in canonical order; `apply_passes` runs a subset of them, in that
order, each as a pure function `(Graph, PlanOptions) -> Graph`, verifying the graph after each.
"""

from __future__ import annotations

from collections.abc import Callable

from rnnplan.ir import Graph, verify
from rnnplan.scheduler.batch_input_gemms import batch_input_gemms
from rnnplan.scheduler.combine_gates import combine_gates
from rnnplan.scheduler.fuse_pointwise import fuse_pointwise
from rnnplan.scheduler.pretranspose import pretranspose
from rnnplan.scheduler.wavefront_streams import wavefront_streams
from rnnplan.spec import PlanOptions

Pass = Callable[[Graph, PlanOptions], Graph]

# Canonical order: combine before pretranspose (it merges PyTorch-layout row blocks), batching after
# both (it merges whatever GEMMs exist), fusion after the GEMM passes, streams last (they read the
# final DAG).
REGISTRY: dict[str, Pass] = {
    "combine_gates": combine_gates,
    "pretranspose": pretranspose,
    "batch_input_gemms": batch_input_gemms,
    "fuse_pointwise": fuse_pointwise,
    "wavefront_streams": wavefront_streams,
}

PASSES: tuple[str, ...] = tuple(REGISTRY)


def apply_passes(graph: Graph, options: PlanOptions, check: bool = True) -> Graph:
    names = PASSES if options.passes is None else options.passes
    for name in names:
        graph = REGISTRY[name](graph, options)
        if check:
            verify(graph)
    return graph
