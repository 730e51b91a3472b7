"""`Graph`: the unrolled network as nodes over values, wrapping a `networkx.DiGraph` of dependencies.

A graph is immutable in practice: passes call `rewrite` to get a new graph and never touch the old
one. The networkx view, the producer/consumer maps and the topological order are derived lazily and
cached, because most passes only need the maps and large graphs (10^5..10^6 nodes) are common.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property

import networkx as nx

from rnnplan.ir.node import Node, Region, Value
from rnnplan.spec import RNNSpec

OUTPUT_NAMES = {"lstm": ("out", "h_n", "c_n"), "gru": ("out", "h_n"),
                "rnn_tanh": ("out", "h_n"), "rnn_relu": ("out", "h_n")}


class Graph:
    """Nodes (in insertion order, names unique) plus the storages that values are written into piecewise.

    `storages` maps the name of each piecewise-written storage (a layer's output sequence `y{l}`) to
    its shape; every other storage is a value that owns itself (`Value.region is None`).
    `passes` records the passes applied so far, in order.
    """

    def __init__(self, spec: RNNSpec, nodes: Mapping[str, Node] | Iterable[Node],
                 storages: Mapping[str, tuple[int, int]], passes: tuple[str, ...] = ()):
        self.spec = spec
        if isinstance(nodes, Mapping):
            self.nodes: dict[str, Node] = dict(nodes)
        else:
            self.nodes = {}
            for n in nodes:
                if n.name in self.nodes:
                    raise ValueError(f"duplicate node name {n.name!r}")
                self.nodes[n.name] = n
        self.storages = dict(storages)
        self.passes = passes

    # ---- derived maps ---------------------------------------------------------------------------

    @cached_property
    def values(self) -> dict[str, Value]:
        """value name -> Value."""
        return self._value_maps()[0]

    @cached_property
    def producer(self) -> dict[str, str]:
        """value name -> name of the node that defines it."""
        return self._value_maps()[1]

    @cached_property
    def consumers(self) -> dict[str, list[str]]:
        """value name -> names of the nodes that read it, in node order."""
        return self._value_maps()[2]

    def _value_maps(self) -> tuple[dict, dict, dict]:
        """The three value maps together, from one walk over the outputs and one over the inputs
        (comprehensions where they can be: planning large graphs is bound by memory accesses)."""
        defined = [(v, name) for name, n in self.nodes.items() for v in n.outputs]
        values: dict[str, Value] = {v.name: v for v, _ in defined}
        producer: dict[str, str] = {v.name: name for v, name in defined}
        consumers: dict[str, list[str]] = {v: [] for v in producer}  # every defined value, read or not
        for name, n in self.nodes.items():
            for v in n.inputs:
                readers = consumers.get(v)
                if readers is None:  # a read of an undefined value (verify reports it)
                    consumers[v] = [name]
                elif not readers or readers[-1] != name:  # a node reading v twice is one reader
                    readers.append(name)
        self.__dict__.update(values=values, producer=producer, consumers=consumers)
        return values, producer, consumers

    @cached_property
    def nx(self) -> nx.DiGraph:
        """Dependency DiGraph over node names (an edge per producer -> consumer pair)."""
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        producer = self.producer
        g.add_edges_from((producer[v], n.name) for n in self.nodes.values() for v in n.inputs
                         if v in producer)
        return g

    @cached_property
    def order(self) -> list[str]:
        """A deterministic topological order: the node order itself when it is one, as `ir.build` and
        rewrites that insert new nodes where the nodes they replace were keep it; otherwise
        networkx's topological sort (which raises on a cycle). Checking costs one walk over the
        inputs; sorting would first build the networkx DiGraph of the whole graph."""
        defined: set[str] = set()
        for n in self.nodes.values():
            if not all(map(defined.__contains__, n.inputs)):
                return list(nx.topological_sort(self.nx))
            defined.update(v.name for v in n.outputs)
        return list(self.nodes)

    def readable_order(self) -> list[str]:
        """The topological order used for dumps: among ready nodes, by (layer, direction, step),
        then insertion order, so that even rewritten graphs read cell-step by cell-step."""
        key = {name: (-1 if n.layer is None else n.layer, n.direction or 0,
                      -1 if n.step is None else n.step, i)
               for i, (name, n) in enumerate(self.nodes.items())}
        return list(nx.lexicographical_topological_sort(self.nx, key=key.__getitem__))

    @cached_property
    def kernel_deps(self) -> dict[str, tuple[str, ...]]:
        """kernel node -> the kernel nodes whose outputs it reads, looking through views.

        Views, inputs, states and params launch nothing, so a kernel depends on the kernels that
        wrote the rectangles its views expose (for a batched input GEMM: every step it covers).
        """
        # One walk in topological order: a value's producing kernels are known before anything reads
        # it. (A recursive closure here kept every graph alive as cyclic garbage until the collector,
        # which planning turns off, ran again.)
        through: dict[str, tuple[str, ...]] = {}  # value -> kernels that produced it
        deps: dict[str, tuple[str, ...]] = {}
        for n in self.topo_nodes():
            if n.is_kernel:
                deps[n.name] = tuple(dict.fromkeys(k for v in n.inputs for k in through.get(v, ())))
                found: tuple[str, ...] = (n.name,)
            elif n.kind == "view":
                found = tuple(dict.fromkeys(k for v in n.inputs for k in through.get(v, ())))
            else:
                found = ()
            for v in n.outputs:
                through[v.name] = found
        return deps

    @cached_property
    def kernel_dag(self) -> nx.DiGraph:
        """Dependency DiGraph over kernel nodes only (views made transparent)."""
        g = nx.DiGraph()
        g.add_nodes_from(self.kernel_deps)
        g.add_edges_from((d, k) for k, deps in self.kernel_deps.items() for d in deps)
        return g

    def topo_nodes(self) -> Iterator[Node]:
        return (self.nodes[name] for name in self.order)

    def kernels(self) -> list[Node]:
        return [n for n in self.topo_nodes() if n.is_kernel]

    @cached_property
    def _roots(self) -> dict[str, Region]:
        return {}

    def root_region(self, value: str) -> Region:
        """Where a value lives, in the coordinates of the storage that owns its memory."""
        found = self._roots.get(value)
        if found is None:
            v = self.values[value]
            if v.region is None:
                found = Region(v.name, (0, v.shape[0]), (0, v.shape[1]))
            elif v.region.storage in self.storages:
                found = v.region
            else:
                found = v.region.within(self.root_region(v.region.storage))
            self._roots[value] = found
        return found

    def storage_shape(self, storage: str) -> tuple[int, int]:
        return self.storages[storage] if storage in self.storages else self.values[storage].shape

    # ---- rewriting ------------------------------------------------------------------------------

    def rewrite(self, pass_name: str, remove: Iterable[str] = (), add: Iterable[Node] = (),
                replace: Iterable[Node] = (), prune: bool = False,
                insert: Iterable[tuple[str, Iterable[Node]]] = ()) -> Graph:
        """A new graph without `remove`, with `replace` swapped in by name (in place), each `insert`
        group `(anchor, nodes)` placed just before the node named `anchor` (which may be one that is
        removed) and `add` appended.

        Passes insert new nodes where the nodes they stand for were, so that the node order stays a
        topological order and `order` need not sort (a pass that appends still gets a correct,
        sorted order). With `prune`, nodes that the rewrite left unread (orphaned views and params)
        go too. When the change is small, the value maps of the new graph are derived from this
        graph's by the change alone, so a local rewrite of a large graph costs time in proportion to
        the change, plus one dict copy; a large change leaves them to be derived afresh when first
        asked for.
        """
        removed = set(remove)
        swapped = {n.name: n for n in replace}
        unknown = [k for k in swapped if k not in self.nodes]
        if unknown:
            raise ValueError(f"{pass_name}: cannot replace unknown node(s) {unknown[:3]}")
        groups: dict[str, list[Node]] = defaultdict(list)
        for anchor, group in insert:
            groups[anchor].extend(group)
        added = [n for group in groups.values() for n in group] + list(add)
        # Assembled from slices of the old order, by comprehensions: on 10^5 nodes a Python loop
        # with a lookup per node cost 2-4 times as much (planning is bound by memory accesses).
        pairs = list(self.nodes.items())
        where = {name: i for i, (name, _) in enumerate(pairs)}
        cuts = sorted((where[a], a) for a in groups if a in where)
        if len(cuts) != len(groups):
            raise ValueError(f"{pass_name}: insert before unknown node(s) "
                             f"{[a for a in groups if a not in where][:3]}")
        items: list[tuple[str, Node]] = []
        start = 0
        for end, anchor in cuts + [(len(pairs), None)]:
            items += [kv for kv in pairs[start:end] if kv[0] not in removed] if removed else pairs[start:end]
            if anchor is not None:
                items += [(n.name, n) for n in groups[anchor]]
            start = end
        items += [(n.name, n) for n in add]
        nodes = dict(items)
        if len(nodes) != len(items):
            seen: set[str] = set()
            twice = [k for k, _ in items if k in seen or seen.add(k)]
            raise ValueError(f"{pass_name}: node name {twice[0]!r} already exists")
        nodes.update(swapped)  # in place: a dict keeps a key's position when its value changes
        g = Graph(self.spec, nodes, self.storages, self.passes + (pass_name,))
        old = [self.nodes[k] for k in removed] + [self.nodes[k] for k in swapped]
        g._derive_maps(self, old, list(swapped.values()) + added)
        return g._prune(old) if prune else g

    def _derive_maps(self, before: Graph, gone: list[Node], new: list[Node]) -> None:
        """Carry `before`'s value maps over by the change alone, when the change is small; a large
        change (fusing most of a graph) is cheaper to derive afresh, lazily, from the new nodes."""
        if ({"values", "producer", "consumers"} <= before.__dict__.keys()
                and 4 * (len(gone) + len(new)) < len(self.nodes)):
            self._update_maps(before, gone, new)

    def _update_maps(self, before: Graph, gone: list[Node], new: list[Node]) -> None:
        values, producer = dict(before.values), dict(before.producer)
        consumers = dict(before.consumers)  # lists are replaced, never mutated: `before` shares them
        drop: dict[str, set[str]] = defaultdict(set)
        gain: dict[str, list[str]] = defaultdict(list)
        for n in gone:
            for v in n.outputs:
                del values[v.name], producer[v.name]
            for v in n.inputs:
                drop[v].add(n.name)
            for v in n.outputs:
                drop[v.name]  # revisited below: dropped if nothing defines it any more
        for n in new:
            for v in n.outputs:
                values[v.name], producer[v.name] = v, n.name
                gain[v.name]
            for v in dict.fromkeys(n.inputs):
                gain[v].append(n.name)
        for v in drop.keys() | gain.keys():
            if v not in producer:  # e.g. a fused cell's internal values: gone with their readers
                consumers.pop(v, None)
                continue
            gone_readers = drop.get(v)
            old = consumers.get(v, ())
            kept = [u for u in old if u not in gone_readers] if gone_readers else list(old)
            consumers[v] = kept + gain.get(v, [])
        self.__dict__.update(values=values, producer=producer, consumers=consumers)

    def _prune(self, gone: list[Node]) -> Graph:
        """Drop nodes that nothing reads any more, starting from what `gone` used to read."""
        users = self.consumers
        counts: dict[str, int] = {}
        dead: list[Node] = []
        dead_names: set[str] = set()
        work = list(dict.fromkeys(self.producer[v] for n in gone for v in n.inputs if v in self.producer))
        while work:
            name = work.pop()
            n = self.nodes.get(name)
            if n is None or name in dead_names or n.kind == "output" or not n.outputs:
                continue
            if all(counts.get(o.name, len(users.get(o.name, ()))) == 0 for o in n.outputs):
                dead_names.add(name)
                dead.append(n)
                for v in dict.fromkeys(n.inputs):
                    counts[v] = counts.get(v, len(users[v])) - 1
                    if counts[v] == 0:
                        work.append(self.producer[v])
        if not dead:
            return self
        nodes = {k: n for k, n in self.nodes.items() if k not in dead_names}
        g = Graph(self.spec, nodes, self.storages, self.passes)
        g._derive_maps(self, dead, [])
        return g

    def map_nodes(self, pass_name: str, fn) -> Graph:
        """A new graph with every node replaced by fn(node), which keeps the node's name, inputs and
        outputs and changes only attributes (level, stream ...). The structure is the same, so the
        new graph inherits every derived map this one has computed."""
        g = Graph(self.spec, {k: fn(n) for k, n in self.nodes.items()}, self.storages,
                  self.passes + (pass_name,))
        for key in ("values", "producer", "consumers", "nx", "order", "kernel_deps", "kernel_dag", "_roots"):
            if key in self.__dict__:
                g.__dict__[key] = self.__dict__[key]
        return g

    # ---- text dump ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        """One deterministic line per node, in topological order."""
        return "\n".join(format_node(self.nodes[name]) for name in self.readable_order())

    def __repr__(self) -> str:
        return f"<Graph {self.spec.short()}: {len(self.nodes)} nodes, passes={list(self.passes)}>"


def _brief(names: tuple[str, ...], keep: int = 3) -> str:
    if len(names) <= keep:
        return ", ".join(names)
    return ", ".join(names[:keep - 1]) + f", ... (+{len(names) - keep + 1}), {names[-1]}"


def format_node(n: Node) -> str:
    what = {"gemm": lambda: f"gemm[{n.gemm.m}x{n.gemm.n}x{n.gemm.k},{n.gemm.weight_layout}]",
            "pointwise": lambda: n.op,
            "fused": lambda: "fused{" + "; ".join(f"{i.out}={i.op}({','.join(i.args)})"
                                                  for i in n.expr) + "}",
            "recurrent": lambda: (f"recurrent[{n.recurrence.cell} {n.recurrence.num_layers}x{n.recurrence.hidden}"
                                  f" x{n.recurrence.directions} T={n.recurrence.seq_len},"
                                  f" {n.recurrence.units_per_block} units/block]"),
            }.get(n.kind, lambda: n.kind)()
    outs = ", ".join(f"{v.name}{list(v.shape)}" + (f"@{v.region}" if v.region else "")
                     for v in n.outputs)
    sched = "".join(f" {k}={getattr(n, k)}" for k in ("level", "stream") if getattr(n, k) is not None)
    src = f" src={n.source}{'^T' if n.transform == 'transpose' else ''}" if n.source else ""
    return f"{n.name}: {what}({_brief(n.inputs)}) -> {outs or '-'}{src}{sched}"

