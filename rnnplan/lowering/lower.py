"""Lowering: an optimized Graph becomes a Plan (ordered steps, streams, events, buffer table).

Needs: a verified graph; `level`/`stream` on kernel nodes if `wavefront_streams` ran (otherwise
every kernel goes on stream 0 in the graph's topological order).
Guarantees:
- issue order is (level, stream, topological index) when streams were assigned, else topological;
- every cross-stream dependency is covered by the fewest event waits (`clocks.reduce_waits`);
- temporaries share buffers by liveness, and a buffer is handed to a new value only when every
  earlier access to it happens-before the new writer (stream order or events), so reuse never
  adds a race and never needs an extra event;
- inputs, initial states, params and layer output sequences (`y{l}`) each get their own buffer.
Does not: reuse the `y{l}` sequences of lower layers, or reorder work within a level for locality.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import chain

import numpy as np

from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Node
from rnnplan.lowering.clocks import Clocks, reduce_waits
from rnnplan.lowering.plan import Buffer, BufferView, GemmParams, Plan, PlanStats, Step
from rnnplan.spec import PlanOptions

ROLE_OF_KIND = {"input": "input", "state": "state", "param": "param"}


def kernel_levels(graph: Graph, kernels: list[Node]) -> list[int]:
    """Wavefront level of each of the graph's `kernels` (in that order): its generation in the
    kernel DAG (longest path from a source). Taken from the nodes when `wavefront_streams` already
    set it."""
    if kernels and all(n.level is not None for n in kernels):
        return [n.level for n in kernels]
    level = graph.kernel_generation
    return [level[n.name] for n in kernels]


class _Buffers:
    """The buffer table, with liveness-based reuse of temporaries."""

    def __init__(self, graph: Graph, clocks: Clocks):
        self.graph, self.clocks = graph, clocks
        self.table: list[dict] = []
        self.of_storage: dict[str, int] = {}
        self.free: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)  # size -> (buf, accessors)
        self.temp_bytes_no_reuse = 0
        self.roots = graph.root_regions

    def _new(self, name: str, role: str, shape: tuple[int, int], **extra) -> int:
        self.table.append(dict(id=len(self.table), name=name, role=role, size=shape[0] * shape[1],
                               shape=shape, **extra))
        return len(self.table) - 1

    def fixed(self, storage: str, role: str, shape: tuple[int, int], node: Node | None = None) -> None:
        extra = dict(source=node.source, transform=node.transform) if node is not None else {}
        self.of_storage[storage] = self._new(storage, role, shape, **extra)

    def temp(self, value: str, shape: tuple[int, int], step: int) -> None:
        """Give a temporary a buffer: a released one whose accesses all happen before `step`, or a new one."""
        size = shape[0] * shape[1]
        self.temp_bytes_no_reuse += size
        pool = self.free[size]
        for i, (buf, accessors) in enumerate(pool):
            if all(self.clocks.happens_before(a, step) for a in accessors):
                del pool[i]
                self.table[buf]["values"] += 1
                self.of_storage[value] = buf
                return
        self.of_storage[value] = self._new(value, "temp", shape, values=1)

    def release(self, storage: str, accessors: list[int]) -> None:
        buf = self.of_storage[storage]
        self.free[self.table[buf]["size"]].append((buf, accessors))

    def placed_views(self) -> dict[str, BufferView]:
        """Where every value lives, once every temporary has its buffer: one walk over the values'
        root regions, one object per distinct view (reused temporaries show the same views step
        after step, and verify_plan then compares them by identity)."""
        shape_of = self.graph.storage_shape
        placed = {storage: (buf, shape_of(storage)[1]) for storage, buf in self.of_storage.items()}
        views: dict[str, BufferView] = {}
        distinct: dict[BufferView, BufferView] = {}
        setdefault, new = distinct.setdefault, tuple.__new__  # new: no NamedTuple Python-level __new__
        for value, (storage, (r0, r1), (c0, c1)) in self.roots.items():
            buf, ld = placed[storage]
            found = new(BufferView, (buf, r0 * ld + c0, r1 - r0, c1 - c0, ld))
            views[value] = setdefault(found, found)
        return views


def _order(kernels: list[Node], levels: list[int]) -> list[int]:
    """Issue order, as positions in `kernels`: (level, stream, topological index) when streams were
    assigned, else topological."""
    if any(k.stream is not None for k in kernels):
        keyed = sorted([(lvl, k.stream or 0, i) for i, (k, lvl) in enumerate(zip(kernels, levels))])
        return [i for _, _, i in keyed]
    return list(range(len(kernels)))


def lower(graph: Graph, options: PlanOptions) -> Plan:
    spec = graph.spec
    kernels = graph.kernels()
    levels = kernel_levels(graph, kernels)
    issue = _order(kernels, levels)
    order, levels = [kernels[i] for i in issue], [levels[i] for i in issue]
    num_streams = max([k.stream or 0 for k in order] + [0]) + 1
    clocks = Clocks(num_streams)
    buffers = _Buffers(graph, clocks)

    # Buffers that never move: graph inputs, states, params, and the layer output sequences.
    for n in graph.nodes.values():
        if n.kind in ROLE_OF_KIND:
            buffers.fixed(n.outputs[0].name, ROLE_OF_KIND[n.kind], n.outputs[0].shape, n)
    for storage, shape in graph.storages.items():
        last = storage == f"y{spec.num_layers - 1}"
        buffers.fixed(storage, "output" if last else "seq", shape)

    # Which temporaries each kernel reads (through views), and which are pinned by graph outputs.
    roots = graph.root_regions  # value -> where it lives in the storage that owns its memory
    temp_roots = {v.name for k in order for v in k.outputs if v.region is None}
    # In operand order, not as sets: the order buffers are released in decides which one a later
    # temporary reuses, and a set's order would change with the process's string-hash seed.
    # (Lists in issue order rather than dicts by kernel name: a long sequence's plan has 10^4..10^5
    # steps, and every lookup by name into a table that size misses the cache.)
    reads = [[r for r in dict.fromkeys([roots[v][0] for v in k.inputs]) if r in temp_roots] for k in order]
    pinned = {roots[v].storage for n in graph.nodes.values() if n.kind == "output" for v in n.inputs}
    readers_left = Counter(chain.from_iterable(reads))
    accessors: dict[str, list[int]] = defaultdict(list)

    index: dict[str, int] = {}
    deps: list[tuple[int, ...]] = []
    records: dict[int, int] = {}  # step -> event id
    waits: list[tuple[int, ...]] = []
    kernel_deps = graph.kernel_deps
    for i, k in enumerate(order):
        stream = k.stream or 0
        deps.append(tuple([index[d] for d in kernel_deps[k.name]]))
        wait_on = reduce_waits(clocks, stream, deps[i])
        for d in wait_on:
            records.setdefault(d, len(records))
        waits.append(tuple(sorted(records[d] for d in wait_on)))
        index[k.name] = clocks.add(stream, wait_on)
        for v in k.outputs:
            if v.region is None:  # a temporary (temp_roots)
                buffers.temp(v.name, v.shape, i)
                accessors[v.name].append(i)
        for r in reads[i]:
            accessors[r].append(i)
            readers_left[r] -= 1
            if readers_left[r] == 0 and r not in pinned:
                buffers.release(r, accessors.pop(r))

    steps: list[Step] = []
    gemms: dict = {}  # one GemmParams per shape: they are immutable, and plans have few shapes
    view = buffers.placed_views()
    for i, k in enumerate(order):
        g = k.gemm
        if g is not None and g not in gemms:
            gemms[g] = GemmParams.model_construct(m=g.m, n=g.n, k=g.k, weight_layout=g.weight_layout)
        fields = dict(
            name=k.name, kind=k.kind, stream=k.stream or 0, level=levels[i],
            inputs=tuple([view[v] for v in k.inputs]), outputs=tuple([view[v.name] for v in k.outputs]),
            deps=deps[i], waits=waits[i], record=records.get(i),
            op=k.op, gemm=gemms.get(g), expr=k.expr, expr_outputs=k.expr_outputs, layer=k.layer,
            direction=k.direction, step=k.step, recurrence=k.recurrence)
        # Every field given, unvalidated either way; copying the first step costs half what
        # model_construct does (it walks the fields), and a long sequence has 10^4..10^5 steps.
        steps.append(steps[0].model_copy(update=fields) if steps else Step.model_construct(**fields))

    inputs = {n.name: view[n.outputs[0].name] for n in graph.nodes.values() if n.kind in ("input", "state")}
    outputs = {n.name: tuple(view[v] for v in n.inputs) for n in graph.nodes.values() if n.kind == "output"}
    table = tuple(Buffer.model_construct(**{"source": None, "transform": "none", **b})
                  for b in buffers.table)
    itemsize = np.dtype(spec.dtype).itemsize
    fixed_bytes = sum(b.size for b in table if b.role != "temp")
    stats = PlanStats(
        nodes=len(graph.nodes), kernels=len(steps),
        gemms=sum(s.kind == "gemm" for s in steps),
        pointwise=sum(s.kind == "pointwise" for s in steps),
        fused=sum(s.kind == "fused" for s in steps),
        events=len(records), waits=sum(len(w) for w in waits),
        streams=len({s.stream for s in steps}), flops=sum(s.flops for s in steps),
        critical_path=max(levels, default=-1) + 1,
        peak_bytes=sum(b.size for b in table) * itemsize,
        bytes_without_reuse=(fixed_bytes + buffers.temp_bytes_no_reuse) * itemsize)
    return Plan.model_construct(
        schema_version=1, spec=spec, options=options, passes=graph.passes, num_streams=num_streams,
        num_events=len(records), buffers=table, steps=tuple(steps), inputs=inputs, outputs=outputs,
        stats=stats)
