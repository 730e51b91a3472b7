"""Repeating a planned time step: the graph of a long sequence from the graph of a three-step one.

The step-local passes (`STEP_LOCAL`: combine_gates, pretranspose, fuse_pointwise) rewrite the nodes
of each time step the same way, whatever the step: what they do to a step depends only on that
step's nodes and the params. So `build_plan` runs them on the graph of a three-step sequence
(times 0, 1, 2: the first step, a middle one, the last) and `repeat_middle_step` makes the long
sequence's graph from it: time 0 as it is, times 1..T-2 from time 1, time T-1 from time 2, renamed
and moved down the sequence. Planning then costs per node one rename instead of a build and three
rewrites (LSTM 8 x 1000 bidirectional: 470,000 naive nodes never exist).

Needs: `build(spec with seq_len 3, time_slots=True)` after any subset of the step-local passes (its
names hold times as format slots `{0}`, `{1}`, `{2}`: `ir/names.py`); `spec.seq_len >= 3`.
Guarantees: the graph that the same passes give on `build(spec)`, node for node and in the same node
order (tests/test_repeat_steps.py checks every pass subset on every cell, 1-3 layers, both
directions), with the passes recorded as applied.
Does not: repeat graphs that `batch_input_gemms` or `wavefront_streams` rewrote (their result for a
step depends on its neighbours: run them on the repeated graph), or check step-locality of a pass
(a pass is step-local by its record, `Pass.step_local`, which it gets only with the equality tests).

A node belongs to a time step when its `time` is set (cell-step nodes, per-step input views); the
names it mentions hold slots for its own time and the neighbouring ones (the recurrence reads h of
t-1, or t+1 in the reverse direction), which `str.format` fills for each copy. Every other node is
static: sources, params and their views, initial states, outputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import rnnplan.ir.names as names
from rnnplan.ir.build import sequence_storages, source_nodes
from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Node, Region, Value
from rnnplan.spec import RNNSpec

SHORT_STEPS = 3  # first, middle, last


def _moves(name: str) -> bool:
    """Does a template name mention a time (hold a format slot)?"""
    return "{" in name


class _Repeater:
    def __init__(self, short: Graph, spec: RNNSpec):
        self.spec, self.B = spec, spec.batch
        self.width = names.time_width(spec.seq_len)
        self.sequences = {"x", "mask"} | set(short.storages)  # storages whose rows follow time
        # Times -1 .. T, as names print them (a step names its neighbours; -1 and T occur in no name).
        self.padded = [names.time_label(t, self.width) for t in range(-1, spec.seq_len + 1)]

    def times(self, slice_time: int, t: int) -> list[str]:
        """The names of the short times 0, 1, 2 seen from the copy of `slice_time` placed at `t`."""
        return self.padded[t - slice_time + 1:t - slice_time + 1 + SHORT_STEPS]

    def copies(self, run: list[Node], slice_time: int, ts: Iterable[int]) -> Iterable[Node]:
        """The run of one time step's nodes (in node order), placed at each time in `ts`."""
        T, sequences = self.spec.seq_len, self.sequences
        # Every name the run mentions (node and value names, inputs, region storages) gets a slot:
        # a name that moves with time is formatted once per copy, one that does not (params, their
        # views, initial states) is kept. A value's name, its node's name and every reader's copy
        # of it are then one string object: a fifth less memory for the graph (182 against 225 MB
        # at 8 x 1000), and later lookups by name compare pointers. Nodes are assembled
        # positionally: this loop makes every node of a long sequence's graph.
        mentioned = list(dict.fromkeys(name for n in run for name in (
            n.name, *n.inputs, *(v.name for v in n.outputs),
            *(v.region.storage for v in n.outputs if v.region is not None and v.region.storage not in sequences))))
        moving = [name for name in mentioned if _moves(name)]
        fixed = [name for name in mentioned if not _moves(name)]
        slot = {name: i for i, name in enumerate(moving + fixed)}
        recipes = []
        for n in run:
            outs = [(slot[v.name], v.shape, v.region, v.region is not None and v.region.storage in sequences,
                     None if v.region is None or v.region.storage in sequences else slot[v.region.storage])
                    for v in n.outputs]
            recipes.append((slot[n.name], n.kind, [slot[v] for v in n.inputs], outs, n[4:12],
                            n.layer, n.direction, n.step is not None, n[16:]))
        new = tuple.__new__  # NamedTuples made without their Python-level __new__: half the cost
        for t in ts:
            labels = self.times(slice_time, t)
            shift = (t - slice_time) * self.B
            strs = [m.format(*labels) for m in moving] + fixed
            for name, kind, inputs, outs, middle, layer, direction, stepped, tail in recipes:
                outputs = tuple([
                    new(Value, (strs[o], shape, None if r is None else
                                new(Region, (r.storage, (r.rows[0] + shift, r.rows[1] + shift), r.cols)) if moves
                                else new(Region, (strs[storage], r.rows, r.cols))))
                    for o, shape, r, moves, storage in outs])
                step = (t if direction == 0 else T - 1 - t) if stepped else None
                yield new(Node, (strs[name], kind, tuple([strs[i] for i in inputs]), outputs,
                                 *middle, layer, direction, step, t, *tail))

    def static(self, n: Node, sources: dict[str, Node]) -> Node:
        """A node outside the time steps; the ones that read or cover the whole sequence are
        stretched to it (the output view of the last layer's sequence, the output nodes)."""
        if n.name in sources:
            return sources[n.name]
        if not any(_moves(v) for v in n.inputs) and not any(
                v.region is not None and v.region.storage in self.sequences for v in n.outputs):
            return n
        T, short_rows = self.spec.seq_len, SHORT_STEPS * self.B
        edges = (names.time_label(0, self.width), "", names.time_label(T - 1, self.width))  # first, last
        inputs: list[str] = []
        middle: list[str] = []  # a run of inputs from the middle step: one copy per time 1..T-2
        for v in n.inputs + ("",):
            if "{1}" in v:  # the middle step's
                middle.append(v)
                continue
            for t in range(1, T - 1):
                labels = self.times(1, t)
                inputs += [m.format(*labels) for m in middle]
            middle = []
            if v:
                inputs.append(v.format(*edges) if _moves(v) else v)
        outputs = []
        for v in n.outputs:
            r = v.region
            if r is not None and r.storage in self.sequences:
                if r.rows != (0, short_rows):
                    raise ValueError(f"repeat_middle_step: {n.name} covers rows {r.rows} of {r.storage}, "
                                     "neither one step nor the whole sequence")
                r = Region(r.storage, (0, T * self.B), r.cols)
                v = Value(v.name, r.shape, r)
            outputs.append(v)
        return n._replace(inputs=tuple(inputs), outputs=tuple(outputs))


def repeat_middle_step(short: Graph, spec: RNNSpec) -> Graph:
    """The graph of `spec` (seq_len T) from `short`, the same network's graph over three steps, with
    time slots in its names."""
    if short.spec != spec.model_copy(update={"seq_len": SHORT_STEPS}) or spec.seq_len < SHORT_STEPS \
            or not short.time_slots:
        raise ValueError(f"repeat_middle_step needs the {SHORT_STEPS}-step graph of the spec, with time "
                         f"slots in its names, and seq_len >= {SHORT_STEPS}")
    T = spec.seq_len
    rep = _Repeater(short, spec)
    sources = {n.name: n for n in source_nodes(spec)}
    # Runs of consecutive nodes of one time step (layer, direction, time); ir.build emits each step's
    # nodes together and the step-local passes insert where the nodes they replace were.
    runs: list[tuple[tuple, list[Node]]] = []
    for n in short.nodes.values():
        key = None if n.time is None else (n.layer, n.direction, n.time)
        if runs and key is not None and runs[-1][0] == key:
            runs[-1][1].append(n)
        else:
            runs.append((key, [n]))
    seen = [k for k, _ in runs if k is not None]
    if len(seen) != len(set(seen)):
        raise ValueError("repeat_middle_step: a time step's nodes are not contiguous in node order")
    nodes: list[Node] = []
    for key, run in runs:
        if key is None:
            nodes += [rep.static(n, sources) for n in run]
            continue
        _, direction, time = key
        if time == 0:
            ts: Iterable[int] = (0,)
        elif time == SHORT_STEPS - 1:
            ts = (T - 1,)
        else:  # the middle step, repeated in processing order (the reverse direction counts down)
            ts = range(T - 2, 0, -1) if direction == 1 else range(1, T - 1)
        nodes += rep.copies(run, time, ts)
    table = {n.name: n for n in nodes}
    if len(table) != len(nodes):
        raise ValueError("repeat_middle_step: repeated node names collide")
    return Graph(spec, table, sequence_storages(spec), short.passes)
