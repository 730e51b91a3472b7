"""Pass `combine_gates` (paper §3.1 "combining GEMMs"): per-gate GEMMs of one cell-step that read the
same operand and adjacent row blocks of one weight tensor become one GEMM over the stacked weights.

Needs: GEMMs whose weight operand is a row view of a param in PyTorch's (N, K) layout ("nk"),
as `ir.build` makes them; so it runs before `pretranspose`. Step-local.
Guarantees: per cell-step and operand, one GEMM of width gates*H (LSTM 8 -> 2 GEMMs, GRU 6 -> 2,
Elman unchanged); each old per-gate result survives, under its old name, as a column view of the
combined result (all of them outputs of one view node, `<gemm>.gates`), so no consumer changes;
orphaned per-gate weight views are removed.
Does not: combine GEMMs of different cell-steps (that is `batch_input_gemms`) or of different
directions that share an input (both read x in layer 0; cuDNN does that, we do not yet).
"""

from __future__ import annotations

from collections import defaultdict

import rnnplan.ir.names as names
from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Gemm, Node, Region, Value
from rnnplan.passes.record import Pass


def _weight_rows(graph: Graph, gemm: Node) -> tuple[str, tuple[int, int]] | None:
    """(param, rows) when the GEMM reads a row block of a param in (N, K) layout, else None."""
    if gemm.gemm.weight_layout != "nk":
        return None
    w = graph.values[gemm.inputs[1]]
    param, rows = (w.name, (0, w.shape[0])) if w.region is None else (w.region.storage, w.region.rows)
    is_param = param in graph.producer and graph.nodes[graph.producer[param]].kind == "param"
    return (param, rows) if is_param else None


def combine_gates(graph: Graph, options=None) -> Graph:
    groups: dict[tuple, list[tuple[tuple[int, int], Node]]] = defaultdict(list)
    for n in graph.nodes.values():
        if n.kind == "gemm" and n.cell_step is not None:
            where = _weight_rows(graph, n)
            if where is not None:
                groups[(n.cell_step, n.role, n.inputs[0], where[0])].append((where[1], n))
    remove, insert = [], []
    for (_, role, a, param), members in groups.items():
        anchor = members[0][1].name  # the first in node order: the new nodes go where it was
        members.sort(key=lambda rm: rm[0])
        contiguous = all(r0[1] == r1[0] for (r0, _), (r1, _) in zip(members, members[1:]))
        if len(members) < 2 or not contiguous:
            continue
        first = members[0][1]
        rows = (members[0][0][0], members[-1][0][1])
        name = names.cell_step(first.layer, first.direction, graph.time_label(first.time), role)  # L0.fwd.t3.gemm_ih
        n_total = rows[1] - rows[0]
        weight = param
        add = []
        if rows != (0, graph.values[param].shape[0]):  # a sub-block of the param: view it
            weight = f"{name}.w"
            add.append(Node(weight, "view", (param,),
                            (Value(weight, (n_total, first.gemm.k), Region(param, rows, (0, first.gemm.k))),),
                            role="view", layer=first.layer, direction=first.direction))
        g = Gemm(first.gemm.m, n_total, first.gemm.k)
        add.append(Node(name, "gemm", (a, weight), (Value(name, (g.m, g.n)),), gemm=g, role=role,
                        layer=first.layer, direction=first.direction, step=first.step, time=first.time))
        # One view node exposes every gate's columns: the values are the old ones, and a node per
        # gate would be four (LSTM) nodes per cell-step that every later phase walks.
        gates = []
        for (r, old) in members:
            cols = (r[0] - rows[0], r[1] - rows[0])
            out = old.outputs[0]
            remove.append(old.name)
            gates.append(Value(out.name, out.shape, Region(name, (0, g.m), cols)))
        add.append(Node(f"{name}.gates", "view", (name,), tuple(gates), role="view", layer=first.layer,
                        direction=first.direction, step=first.step, time=first.time))
        insert.append((anchor, add))
    if not remove:
        return graph.rewrite("combine_gates")
    return graph.rewrite("combine_gates", remove=remove, insert=insert, prune=True)


PASS = Pass("combine_gates", combine_gates, step_local=True)
