"""Pass `batch_input_gemms` (paper §3.2 "batching the input GEMMs over time"): the input-projection
GEMMs (W_ih x_t) of consecutive steps of one layer-direction do not depend on the recurrence, so
they merge into one GEMM over a block of time steps: M = steps * batch rows instead of batch.

Needs: input GEMMs (role `gemm_ih`) whose operand A is a row block of `x` or of the previous
layer's output sequence `y{l-1}` (as `ir.build` makes them), combined per gate or not; after
`combine_gates` and `pretranspose`, which rewrite GEMMs one cell-step at a time. Not step-local: a
chunk spans steps.
Guarantees: layer 0 gets one GEMM over all steps (its input is all there at the start); layers above
get chunks of `input_chunk` steps in processing order (`choose_input_chunk` when the option is
None), so layer l's chunk k waits only for the steps of layer l-1 it reads and layers still overlap
in a wavefront. Each old per-step result survives, under its old name, as a row view of the merged
result, so no consumer changes; or, when only views of it read it (the gate columns that
combine_gates leaves), it goes and those views expose the same rectangles of the merged result
directly. Orphaned per-step input views are removed.
Does not: merge across directions or layers, or pick chunk sizes from a cost model (a later issue).
"""

from __future__ import annotations

import math
from collections import defaultdict

import rnnplan.ir.names as names
from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Gemm, Node, Region, Value
from rnnplan.passes.record import Pass
from rnnplan.spec import RNNSpec


def choose_input_chunk(spec: RNNSpec) -> int:
    """Steps per merged input GEMM above layer 0 when the option leaves it open.

    ceil(sqrt(T)) balances the two costs: the GEMM count per layer (T / chunk) and the delay before
    a layer can start (chunk steps of the layer below). For T = 100 it gives 10, the paper's choice.
    """
    return max(1, min(spec.seq_len, math.ceil(math.sqrt(spec.seq_len))))


def _input_operand(graph: Graph, n: Node) -> tuple[Node, Region] | None:
    """(the view node, its region) of operand A when `n` is a per-step input GEMM reading a row
    block of `x` or of a layer's output sequence, else None."""
    if n.kind != "gemm" or n.role != "gemm_ih" or n.step is None:
        return None
    view = graph.defining_node(n.inputs[0])
    r = next(v.region for v in view.outputs if v.name == n.inputs[0])
    return (view, r) if r is not None and (r.storage == "x" or r.storage in graph.storages) else None


def batch_input_gemms(graph: Graph, options=None) -> Graph:
    spec = graph.spec
    chunk = (options.input_chunk if options is not None and options.input_chunk else None) \
        or choose_input_chunk(spec)
    groups: dict[tuple, list[Node]] = defaultdict(list)
    operand: dict[str, tuple[Node, Region]] = {}  # input GEMM -> (view node, region) of its A
    for n in graph.nodes.values():
        if n.kind == "gemm" and (found := _input_operand(graph, n)) is not None:
            groups[(n.layer, n.direction, n.gate, n.inputs[1], n.gemm)].append(n)
            operand[n.name] = found
    remove, insert, views_made = [], [], set()
    merged: dict[str, tuple[Node, str, int, list[Node]]] = {}  # per-step result -> where it went
    for (layer, d, gate, weight, gemm), members in groups.items():
        arrival = {n.name: i for i, n in enumerate(members)}  # members came in node order
        members.sort(key=lambda n: n.step)
        size = len(members) if layer == 0 else chunk
        for start in range(0, len(members), size):
            block = members[start:start + size]
            if len(block) < 2:
                continue
            add: list[Node] = []  # goes where the block's first GEMM (in node order) was
            insert.append((min((n.name for n in block), key=arrival.__getitem__), add))
            times = [n.time for n in block]
            t0, t1 = min(times), max(times)
            first, last = graph.time_label(t0), graph.time_label(t1)
            a_regions = [operand[n.name][1] for n in block]
            rows = (min(r.rows[0] for r in a_regions), max(r.rows[1] for r in a_regions))
            a_region = Region(a_regions[0].storage, rows, a_regions[0].cols)
            a_name = names.chunk(layer, d, first, last, "in")
            if a_name not in views_made:
                views_made.add(a_name)
                a_inputs = tuple(dict.fromkeys(
                    i for n in block for i in operand[n.name][0].inputs))
                add.append(Node(a_name, "view", a_inputs, (Value(a_name, a_region.shape, a_region),),
                                role="view", layer=layer, direction=d))
            name = names.chunk(layer, d, first, last, "gemm_ih", gate)
            g = Gemm(a_region.shape[0], gemm.n, gemm.k, gemm.weight_layout)
            add.append(Node(name, "gemm", (a_name, weight), (Value(name, (g.m, g.n)),), gemm=g,
                            role="gemm_ih", layer=layer, direction=d, gate=gate))
            for old, r in zip(block, a_regions):
                remove.append(old.name)
                merged[old.outputs[0].name] = (old, name, r.rows[0] - rows[0], add)
    replace = _repoint_views(graph, merged)
    return graph.rewrite("batch_input_gemms", remove=remove, insert=insert, replace=replace, prune=True)


def _repoint_views(graph: Graph, merged: dict[str, tuple[Node, str, int, list[Node]]]) -> list[Node]:
    """Where the merged per-step results go. A result read only by views of it (combine_gates' gate
    columns) disappears: those views are re-pointed at the rows of the merged GEMM's output, a node
    per step fewer for every later phase. Any other result survives, under its old name, as a row
    view of the merged output (appended to the merged GEMM's group, `add`)."""
    readers: dict[str, list[Node]] = defaultdict(list)
    results = merged.keys()
    for n in graph.nodes.values():  # one walk, looking only for the merged results
        if not results.isdisjoint(n.inputs):
            for v in n.inputs:
                if v in merged:
                    readers[v].append(n)
    replace = []
    new = tuple.__new__  # Values and Regions made without NamedTuple's Python-level __new__
    for value, (old, name, row0, add) in merged.items():
        views = readers[value]
        if views and all(n.kind == "view" and n.inputs == (value,) for n in views):
            for n in views:
                replace.append(n._replace(inputs=(name,), outputs=tuple([new(Value, (o.name, o.shape, new(
                    Region, (name, (o.region.rows[0] + row0, o.region.rows[1] + row0), o.region.cols))))
                    for o in n.outputs])))
            continue
        width = old.gemm.n
        region = Region(name, (row0, row0 + old.gemm.m), (0, width))
        add.append(Node(old.name, "view", (name,), (Value(value, region.shape, region),), role="view",
                        layer=old.layer, direction=old.direction, step=old.step, time=old.time, gate=old.gate))
    return replace


# After the GEMM rewrites that work one cell-step at a time: merged GEMMs belong to no cell-step.
PASS = Pass("batch_input_gemms", batch_input_gemms, after=("combine_gates", "pretranspose"))
