"""`verify(graph)`: the invariants every graph satisfies, before and after every pass.

- names: node keys match node names; value names are unique; every input names a defined value;
- acyclic;
- shapes chain along every edge, by the per-kind rules in `SHAPE_RULES`;
- regions lie inside their storage, views are exactly covered by their inputs, and no two values
  write overlapping rectangles of a piecewise storage (each element is written once);
- every node is reachable from the graph's inputs (input, state and param nodes) and every value
  is read (no dead code);
- every output the cell needs (`out`, `h_n`, and `c_n` for LSTM) is present exactly once.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from itertools import chain

import networkx as nx

from rnnplan.ir.graph import Graph, output_names
from rnnplan.ir.node import Instr, Node, Region
from rnnplan.ir.ops import POINTWISE_OPS
from rnnplan.ir.recurrence import operand_shapes

SOURCE_KINDS = ("input", "state", "param")


class GraphError(ValueError):
    """A graph breaks an invariant; the message lists every problem found (up to a limit)."""


def _broadcasts(shape: tuple[int, int], out: tuple[int, int]) -> bool:
    return all(s in (1, o) for s, o in zip(shape, out))


def _gemm(g: Graph, n: Node) -> list[str]:
    if n.gemm is None or len(n.inputs) != 2 or len(n.outputs) != 1:
        return [f"{n.name}: a gemm needs gemm params, inputs (A, W) and one output"]
    a, w = (g.values[v].shape for v in n.inputs)
    m, nn, k = n.gemm.m, n.gemm.n, n.gemm.k
    want_w = (nn, k) if n.gemm.weight_layout == "nk" else (k, nn)
    errs = []
    if a != (m, k):
        errs.append(f"{n.name}: operand A {n.inputs[0]} has shape {a}, gemm wants {(m, k)}")
    if w != want_w:
        errs.append(f"{n.name}: weight {n.inputs[1]} has shape {w}, gemm ({n.gemm.weight_layout}) "
                    f"wants {want_w}")
    if n.outputs[0].shape != (m, nn):
        errs.append(f"{n.name}: output shape {n.outputs[0].shape} != {(m, nn)}")
    return errs


def _pointwise(g: Graph, n: Node) -> list[str]:
    op = POINTWISE_OPS.get(n.op or "")
    if op is None:
        return [f"{n.name}: unknown pointwise op {n.op!r}; known: {sorted(POINTWISE_OPS)}"]
    if len(n.inputs) != op.arity or len(n.outputs) != 1:
        return [f"{n.name}: {n.op} takes {op.arity} input(s) and gives one output"]
    out = n.outputs[0].shape
    return [f"{n.name}: input {v} of shape {g.values[v].shape} does not broadcast to {out}"
            for v in n.inputs if not _broadcasts(g.values[v].shape, out)]


@lru_cache(maxsize=256)
def expression_faults(inputs: int, expr: tuple[Instr, ...], outputs: tuple[str, ...]) -> tuple[
        tuple[tuple[Instr, bool, tuple[str, ...]], ...], tuple[int, ...]]:
    """What is wrong with a fused expression over `inputs` operands (`in0` ...): per faulty
    instruction, (it, whether its op is unknown or takes another number of args, the args it reads
    before anything defines them); and the positions of the outputs it never defines. Shared by
    `verify` and `verify_plan`, and cached: every cell-step of a layer carries the same expression."""
    known = {f"in{i}" for i in range(inputs)}
    faults = []
    for ins in expr:
        op = POINTWISE_OPS.get(ins.op)
        bad = op is None or len(ins.args) != op.arity
        missing = tuple(a for a in ins.args if a not in known)
        if bad or missing:
            faults.append((ins, bad, missing))
        known.add(ins.out)
    return tuple(faults), tuple(i for i, e in enumerate(outputs) if e not in known)


def _fused(g: Graph, n: Node) -> list[str]:
    faults, undefined = expression_faults(len(n.inputs), n.expr, n.expr_outputs)
    errs = []
    for ins, bad, missing in faults:
        errs += [f"{n.name}: bad instruction {ins}"] if bad else []
        errs += [f"{n.name}: instruction {ins.out} reads undefined {list(missing)}"] if missing else []
    errs += [f"{n.name}: output {n.outputs[i].name} maps to undefined {n.expr_outputs[i]!r}"
             for i in undefined if i < len(n.outputs)]
    if len(n.outputs) != len(n.expr_outputs):
        errs.append(f"{n.name}: {len(n.outputs)} outputs but {len(n.expr_outputs)} expression outputs")
    out_shape = n.outputs[0].shape if n.outputs else (0, 0)
    if any(v.shape != out_shape for v in n.outputs):
        errs.append(f"{n.name}: outputs differ in shape")
    return errs


def _recurrent(g: Graph, n: Node) -> list[str]:
    if n.recurrence is None:
        return [f"{n.name}: a recurrent node needs its recurrence parameters"]
    ins, outs = operand_shapes(n.recurrence)
    got_in = [g.values[v].shape for v in n.inputs]
    got_out = [v.shape for v in n.outputs]
    if got_in != ins or got_out != outs:
        return [f"{n.name}: operand shapes {got_in} -> {got_out}, the recurrence needs {ins} -> {outs}"]
    return []


def _view(g: Graph, n: Node) -> list[str]:
    if not n.outputs or not n.inputs or any(v.region is None for v in n.outputs):
        return [f"{n.name}: a view has inputs and outputs with regions"]
    storages = {v.region.storage for v in n.outputs}
    if len(storages) == 1 and n.inputs == tuple(storages):
        return []  # windows into the one value it reads (a GEMM's gate columns); _regions checks bounds
    values = g.values
    for v in n.inputs:
        vr = values[v].region
        if v not in storages and (vr is None or vr.storage not in storages):
            return [f"{n.name}: input {v} does not live in storage {' or '.join(sorted(storages))}"]
    errs = []
    for out in n.outputs:  # each rectangle it exposes is covered exactly by the inputs in its storage
        region = out.region
        storage, (r0, r1), (c0, c1) = region
        size = (r1 - r0) * (c1 - c0)
        covered = 0
        for v in n.inputs:
            vr = values[v].region
            if v == storage:  # a window into the value itself
                covered = size
            elif vr is not None and vr.storage == storage:
                (a0, a1), (b0, b1) = vr.rows, vr.cols
                rows = (a1 if a1 < r1 else r1) - (a0 if a0 > r0 else r0)  # min/max written out: every view
                cols = (b1 if b1 < c1 else c1) - (b0 if b0 > c0 else c0)
                covered += rows * cols if rows > 0 and cols > 0 else 0
        if covered != size:
            errs.append(f"{n.name}: inputs cover {covered} of the {size} elements of {region}")
    return errs


def _source(g: Graph, n: Node) -> list[str]:
    if n.inputs or len(n.outputs) != 1 or n.outputs[0].region is not None or not n.source:
        return [f"{n.name}: a {n.kind} node has no inputs, a source and one self-owned output"]
    return []


def _output(g: Graph, n: Node) -> list[str]:
    return [] if n.inputs and not n.outputs else [f"{n.name}: an output node reads values, defines none"]


SHAPE_RULES = {"gemm": _gemm, "pointwise": _pointwise, "fused": _fused, "recurrent": _recurrent, "view": _view,
               "input": _source, "state": _source, "param": _source, "output": _output}


def _regions(g: Graph) -> list[str]:
    errs = []
    writes: dict[str, list[tuple[Region, str]]] = defaultdict(list)
    values, storages = g.values, g.storages
    for n, v in ((n, v) for n in g.nodes.values() for v in n.outputs):
        r = v.region
        if r is None:
            continue
        (r0, r1), (c0, c1) = r.rows, r.cols
        if (r1 - r0, c1 - c0) != v.shape:
            errs.append(f"{v.name}: region {r} has shape {r.shape}, value has {v.shape}")
        shape = storages.get(r.storage)
        if shape is None:
            owner = values.get(r.storage)
            shape = None if owner is None else owner.shape
        if shape is None:
            errs.append(f"{v.name}: region in unknown storage {r.storage}")
            continue
        rows, cols = shape
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
            errs.append(f"{v.name}: region {r} is outside storage of shape {(rows, cols)}")
        if r.storage in storages and n.kind != "view":
            writes[r.storage].append((r, v.name))
    for storage, rects in writes.items():  # sweep over rows: compare only rectangles whose rows meet
        rects.sort(key=lambda rv: (rv[0].rows, rv[0].cols))
        active: list[tuple[Region, str]] = []
        for b, bn in rects:
            active = [(a, an) for a, an in active if a.rows[1] > b.rows[0]]
            errs += [f"{an} and {bn} both write {storage} at {a} / {b}" for a, an in active
                     if a.cols[0] < b.cols[1] and b.cols[0] < a.cols[1]]
            active.append((b, bn))
    return errs


def verify(graph: Graph, limit: int = 20) -> Graph:
    """Check every invariant; raise GraphError listing the problems, else return the graph."""
    errs: list[str] = []
    values = graph.values  # (not the producer map: planning never builds that for the final graph)
    defined = set(values)
    errs += [f"node stored under {key!r} is named {n.name!r}" for key, n in graph.nodes.items() if key != n.name]
    if sum(len(n.outputs) for n in graph.nodes.values()) != len(values):  # some name defined twice
        seen_values: set[str] = set()
        errs += [f"value {v.name} is defined twice" for n in graph.nodes.values() for v in n.outputs
                 if v.name in seen_values or seen_values.add(v.name)]
    errs += [f"{n.name}: reads undefined value(s) {[v for v in n.inputs if v not in defined]}"
             for n in graph.nodes.values() if not defined.issuperset(n.inputs)]
    if errs:
        raise GraphError("\n".join(errs[:limit]))
    try:
        graph.order  # a topological sort, which scheduling and lowering reuse: it fails on a cycle
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(graph.nx)
        raise GraphError(f"graph has a cycle: {' -> '.join(u for u, _ in cycle)}") from None
    for n in graph.nodes.values():
        rule = SHAPE_RULES.get(n.kind)
        errs += rule(graph, n) if rule else [f"{n.name}: unknown node kind {n.kind!r}"]
        if not n.inputs and n.kind not in SOURCE_KINDS:
            errs.append(f"{n.name}: a {n.kind} node with no inputs is unreachable from the inputs")
    errs += _regions(graph)
    read = set(chain.from_iterable([n.inputs for n in graph.nodes.values()]))
    errs += [f"value {v} is never read" for v in values if v not in read]
    outputs = [n.name for n in graph.nodes.values() if n.kind == "output"]
    want = output_names(graph.spec)
    if sorted(outputs) != sorted(want):
        errs.append(f"outputs are {sorted(outputs)}, the cell needs {sorted(want)}")
    if errs:
        more = f"\n... and {len(errs) - limit} more" if len(errs) > limit else ""
        raise GraphError("\n".join(errs[:limit]) + more)
    return graph
