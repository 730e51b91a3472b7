"""Pass `fuse_pointwise` (paper §3.1 "fusing point-wise operations"): the connected pointwise nodes
of one cell-step (bias adds, pre-activation sums, activations, the state update) become one fused
node that carries them as a small expression, so a backend launches one kernel per cell-step and
intermediate gate values never touch memory.

Needs: pointwise nodes tagged with their cell-step (layer, direction, step), as `ir.build` makes;
no other pass (it commutes with the GEMM passes). Step-local.
Guarantees: per cell-step, each connected component of two or more pointwise nodes is one `fused`
node; its inputs are the values the component reads from outside (`in0`, `in1`, ... in first-use
order), its outputs the values read outside it (the new h, with its region in `y{l}`, and c),
under their old names; the expression lists the component's operations in topological order.
For the cells we build, that is exactly one fused node per cell-step.
Does not: fuse across cell-steps, or fuse pointwise work into GEMM epilogues.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx

import rnnplan.ir.names as names
from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Instr, Node
from rnnplan.passes.record import Pass


def _fuse(graph: Graph, members: list[Node], name: str) -> Node:
    inside = {v.name for n in members for v in n.outputs}
    local: dict[str, str] = {}
    inputs: list[str] = []
    expr = []
    for n in members:  # in topological order
        args = []
        for v in n.inputs:
            if v not in inside and v not in local:
                local[v] = f"in{len(inputs)}"
                inputs.append(v)
            args.append(local[v])
        out = n.outputs[0]
        local[out.name] = f"t{len(expr)}"
        expr.append(Instr(local[out.name], n.op, tuple(args)))
    member_names = {n.name for n in members}
    outputs = [v for n in members for v in n.outputs
               if any(u not in member_names for u in graph.consumers[v.name])]
    first = members[0]
    return Node(name, "fused", tuple(inputs), tuple(outputs), expr=tuple(expr),
                expr_outputs=tuple(local[v.name] for v in outputs), role="cell", layer=first.layer,
                direction=first.direction, step=first.step, time=first.time)


def fuse_pointwise(graph: Graph, options=None) -> Graph:
    by_step: dict[tuple, list[Node]] = defaultdict(list)
    for n in graph.nodes.values():
        if n.kind == "pointwise" and n.cell_step is not None:
            by_step[n.cell_step].append(n)
    producer, nodes = graph.producer, graph.nodes
    remove, insert = [], []
    for (layer, d, _), members in by_step.items():
        member_names = {n.name for n in members}
        # Connected components through the values that flow between this cell-step's pointwise nodes.
        parts = nx.utils.UnionFind(member_names)
        for n in members:
            for v in n.inputs:
                if producer[v] in member_names:
                    parts.union(producer[v], n.name)
        # Node order is a topological order within a cell-step: ir.build emits each node after its
        # inputs, and rewrites keep the relative order of the nodes they do not touch.
        position = {n.name: i for i, n in enumerate(members)}
        components = sorted((sorted(c, key=position.__getitem__) for c in parts.to_sets() if len(c) > 1),
                            key=lambda c: position[c[0]])
        prefix = names.cell_step(layer, d, graph.time_label(members[0].time), "cell")
        for k, comp in enumerate(components):
            group = [nodes[name] for name in comp]
            remove += comp
            insert.append((comp[0], [_fuse(graph, group, prefix if len(components) == 1 else f"{prefix}{k}")]))
    return graph.rewrite("fuse_pointwise", remove=remove, insert=insert)


PASS = Pass("fuse_pointwise", fuse_pointwise, step_local=True)
