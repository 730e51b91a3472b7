"""`Graph`: the unrolled network as nodes over values, wrapping a `networkx.DiGraph` of dependencies.

A graph is immutable in practice: passes call `rewrite` to get a new graph and never touch the old
one. The networkx view, the value maps and the topological order are derived lazily and cached,
because most passes need few of them and large graphs (10^5 nodes and more) are common.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from itertools import chain

import networkx as nx

import rnnplan.ir.names as names
from rnnplan.ir.cells import CELLS
from rnnplan.ir.node import KERNEL_KINDS, Node, Region, Value
from rnnplan.spec import RNNSpec


def output_names(spec: RNNSpec) -> tuple[str, ...]:
    """The graph's output nodes: the sequence `out` and each final state (`h_n`, `c_n` for LSTM)."""
    return ("out",) + tuple(f"{s}_n" for s in CELLS[spec.cell].states)


class Graph:
    """Nodes (in insertion order, names unique) plus the storages that values are written into piecewise.

    `storages` maps the name of each piecewise-written storage (a layer's output sequence `y{l}`) to
    its shape; every other storage is a value that owns itself (`Value.region is None`).
    `passes` records the passes applied so far, in order. With `time_slots`, names mention times as
    format slots (`{k}` for time k, see `ir/names.py`): the template of a few steps that
    `passes/repeat_steps.py` repeats down a long sequence.
    """

    def __init__(self, spec: RNNSpec, nodes: Mapping[str, Node] | Iterable[Node],
                 storages: Mapping[str, tuple[int, int]], passes: tuple[str, ...] = (),
                 time_slots: bool = False):
        self.spec, self.time_slots = spec, time_slots
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

    def time_label(self, t: int) -> str:
        """How time t prints in this graph's names (`ir.names.time_label`)."""
        return names.time_label(t, names.time_width(self.spec.seq_len), self.time_slots)

    # ---- derived maps ---------------------------------------------------------------------------

    @cached_property
    def values(self) -> dict[str, Value]:
        """value name -> Value."""
        return {v.name: v for n in self.nodes.values() for v in n.outputs}

    @cached_property
    def producer(self) -> dict[str, str]:
        """value name -> name of the node that defines it."""
        return {v.name: name for name, n in self.nodes.items() for v in n.outputs}

    @cached_property
    def consumers(self) -> dict[str, list[str]]:
        """value name -> names of the nodes that read it, in node order (every defined value, read
        or not, and any value read without being defined). Planning itself asks for it only on small
        graphs: a dict of lists over a long sequence's graph costs more than most passes."""
        consumers: dict[str, list[str]] = {v: [] for v in self.producer}
        for name, n in self.nodes.items():
            for v in n.inputs:
                readers = consumers.get(v)
                if readers is None:
                    consumers[v] = [name]
                elif not readers or readers[-1] != name:  # a node reading v twice is one reader
                    readers.append(name)
        return consumers

    def defining_node(self, value: str) -> Node | None:
        """The node that defines `value` (None if none does). Most nodes define a value of their own
        name, so this looks there first and builds the producer map only for the others: passes
        that ask about a few values of a long sequence's graph need not build it."""
        n = self.nodes.get(value)
        if n is not None and any(v.name == value for v in n.outputs):
            return n
        name = self.producer.get(value)
        return None if name is None else self.nodes[name]

    def value(self, name: str) -> Value:
        """The Value called `name` (KeyError if no node defines it), found as `defining_node` does."""
        n = self.defining_node(name)
        if n is None:
            raise KeyError(name)
        return next(v for v in n.outputs if v.name == name)

    def read_counts(self) -> Counter[str]:
        """value name -> how many operands read it (a node reading a value twice counts twice)."""
        return Counter(chain.from_iterable([n.inputs for n in self.nodes.values()]))

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
    def in_node_order(self) -> bool:
        """Is the node order itself a topological order? It is for `ir.build`'s graphs and for
        rewrites that insert new nodes where the nodes they replace were. Checking costs one walk
        over the inputs; sorting would first build the networkx DiGraph of the whole graph."""
        defined: set[str] = set()
        add, covers = defined.add, defined.issuperset
        for n in self.nodes.values():
            if not covers(n.inputs):
                return False
            for v in n.outputs:
                add(v.name)
        return True

    @cached_property
    def order(self) -> list[str]:
        """A deterministic topological order: the node order itself when it is one, otherwise
        networkx's topological sort (which raises on a cycle)."""
        return list(self.nodes) if self.in_node_order else list(nx.topological_sort(self.nx))

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
        get = through.get
        for n in self.topo_nodes():
            kernel = n.kind in KERNEL_KINDS
            found: tuple[str, ...] = ()
            if kernel or n.kind == "view":
                ins = n.inputs
                found = get(ins[0], ()) if len(ins) == 1 else tuple(dict.fromkeys(
                    [k for v in ins for k in get(v, ())]))
                if kernel:
                    deps[n.name], found = found, (n.name,)
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

    @cached_property
    def kernel_generation(self) -> dict[str, int]:
        """kernel node -> its generation in `kernel_dag` (networkx topological generations): the
        longest chain of kernels before it, i.e. its wavefront level."""
        return {k: lvl for lvl, gen in enumerate(nx.topological_generations(self.kernel_dag)) for k in gen}

    def topo_nodes(self) -> Iterator[Node]:
        """The nodes in topological order: the node dict as it is when its order is one (no
        lookup by name per node: on a long sequence's graph every lookup is a cache miss)."""
        return iter(self.nodes.values()) if self.in_node_order else map(self.nodes.__getitem__, self.order)

    def kernels(self) -> list[Node]:
        return [n for n in self.topo_nodes() if n.is_kernel]

    @cached_property
    def root_regions(self) -> dict[str, Region]:
        """value name -> where it lives, in the coordinates of the storage that owns its memory (a
        temporary owns itself; a view's region moves into its storage's owner). One walk in
        topological order: a region's storage is a sequence or a value defined before it."""
        roots: dict[str, Region] = {}
        storages, new = self.storages, tuple.__new__  # Regions made without NamedTuple's Python __new__
        for n in self.topo_nodes():
            for v in n.outputs:
                r = v.region
                if r is None:
                    roots[v.name] = new(Region, (v.name, (0, v.shape[0]), (0, v.shape[1])))
                elif r.storage in storages:
                    roots[v.name] = r
                else:  # r moved into its storage's owner, in place: this runs for every value
                    outer = roots[r.storage]
                    dr, dc = outer.rows[0], outer.cols[0]
                    if outer.storage == r.storage and dr == 0 and dc == 0:  # a window into a temporary
                        roots[v.name] = r
                    else:
                        (r0, r1), (c0, c1) = r.rows, r.cols
                        roots[v.name] = new(Region, (outer.storage, (r0 + dr, r1 + dr), (c0 + dc, c1 + dc)))
        return roots

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
        go too. The new graph derives its value maps afresh when first asked: two comprehensions
        over the nodes, cheaper on a long sequence's graph than carrying the old maps over by the
        change (which copied them, and most rewrites change a quarter of the nodes or more).
        """
        removed, add = set(remove), list(add)
        swapped = {n.name: n for n in replace}
        unknown = [k for k in swapped if k not in self.nodes]
        if unknown:
            raise ValueError(f"{pass_name}: cannot replace unknown node(s) {unknown[:3]}")
        groups: dict[str, list[Node]] = defaultdict(list)
        for anchor, group in insert:
            groups[anchor].extend(group)
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
        g = Graph(self.spec, nodes, self.storages, self.passes + (pass_name,), self.time_slots)
        if not prune:
            return g
        gone = [self.nodes[k] for k in removed] + [self.nodes[k] for k in swapped]
        # A value that went with its node (and no new node defines) has nothing left to prune:
        # leaving it out spares looking for its producer in the whole new graph.
        dropped = {v.name for k in removed for v in self.nodes[k].outputs}
        dropped -= {v.name for n in chain(swapped.values(), add, *groups.values()) for v in n.outputs}
        return g._prune({v for n in gone for v in n.inputs} - dropped)

    def _prune(self, candidates: set[str]) -> Graph:
        """Drop nodes that nothing reads any more, starting from the producers of `candidates`
        (the values that removed nodes used to read)."""
        counts = self.read_counts()
        dead: set[str] = set()
        work = [n for n in map(self.defining_node, dict.fromkeys(candidates)) if n is not None]
        while work:
            n = work.pop()
            if n.name in dead or n.kind == "output" or not n.outputs:
                continue
            if all(counts[o.name] == 0 for o in n.outputs):
                dead.add(n.name)
                for v in n.inputs:
                    counts[v] -= 1
                    if counts[v] == 0 and (source := self.defining_node(v)) is not None:
                        work.append(source)
        if not dead:
            return self
        return Graph(self.spec, {k: n for k, n in self.nodes.items() if k not in dead}, self.storages,
                     self.passes, self.time_slots)

    def with_nodes(self, pass_name: str, nodes: Mapping[str, Node]) -> Graph:
        """A new graph with every node replaced by the node of its name in `nodes`, which keeps the
        node's name, inputs and outputs and changes only attributes (level, stream ...). The
        structure is the same, so the new graph inherits every derived map this one has computed."""
        g = Graph(self.spec, {k: nodes[k] for k in self.nodes}, self.storages, self.passes + (pass_name,),
                  self.time_slots)
        for key in ("values", "producer", "consumers", "nx", "in_node_order", "order", "kernel_deps", "kernel_dag",
                    "kernel_generation", "root_regions"):
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

