"""Pass `wavefront_streams` (paper §3.3 "multiple streams" and the multi-layer wavefront): give every
node a wavefront level and every kernel a stream, so that independent work (layer l at step t and
layer l+1 at step t-1; the two directions of a layer) runs concurrently.

Needs: any graph (it reads only the kernel dependency DAG and the layer/direction/step tags), after
every pass that adds or replaces kernels (their new nodes would have no level or stream).
Guarantees:
- `level` of a kernel is its generation in the kernel DAG (`networkx.topological_generations`,
  i.e. the longest chain of kernels before it); a view/param/input node gets the level of the
  latest kernel it depends on (-1 when none);
- each layer-direction's chain of cell-step kernels stays on one stream, `(layer*D + d) % S`, so the
  recurrence needs no events; kernels off the chains (batched input GEMMs) go to spare streams
  round-robin when `num_streams` exceeds the number of chains, else to their chain's stream;
- the lowering then issues kernels by (level, stream) and turns each cross-stream dependency into an
  event, keeping only the waits that stream order and other waits do not already imply.
Does not: balance streams by cost (every chain gets one stream) or assign devices.
"""

from __future__ import annotations

from rnnplan.ir.graph import Graph
from rnnplan.ir.node import KERNEL_KINDS, Node
from rnnplan.passes.record import Pass
from rnnplan.spec import PlanOptions


def wavefront_streams(graph: Graph, options: PlanOptions | None = None) -> Graph:
    spec = graph.spec
    chains = spec.num_layers * spec.directions
    streams = (options.num_streams if options is not None and options.num_streams else None) or chains
    kernel_level = graph.kernel_generation
    level: dict[str, int] = {}  # value -> level of the node that defines it
    scheduled: dict[str, Node] = {}
    spare = 0
    for n in graph.topo_nodes():
        if n.kind in KERNEL_KINDS:
            lvl = kernel_level[n.name]
            chain = n.layer * spec.directions + (n.direction or 0)
            if n.cell_step is None and streams > chains:
                stream: int | None = chains + spare % (streams - chains)
                spare += 1
            else:
                stream = chain % streams
        else:
            ins = n.inputs
            lvl = level[ins[0]] if len(ins) == 1 else max([level[v] for v in ins], default=-1)
            stream = None
        for v in n.outputs:
            level[v.name] = lvl
        scheduled[n.name] = n.scheduled(lvl, stream)
    return graph.with_nodes("wavefront_streams", scheduled)


# Last: it schedules the final DAG, and nodes made after it would have no level or stream.
PASS = Pass("wavefront_streams", wavefront_streams,
            after=("combine_gates", "pretranspose", "batch_input_gemms", "fuse_pointwise"))
