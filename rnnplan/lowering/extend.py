"""Extending a graph-lowering plan by whole periods: a longer sequence's plan from a planned one.

With the input chunk fixed (`PlanOptions.input_chunk` = c), the wavefront's steady state repeats:
m c more steps (m = 1, or 2 where the temporaries' ring of two needs an even count of steps) are
one more period of P steps at a cut p, every step after it moved on by one period (levels, time
steps, step indices, event ids, and the rows of the buffers as long as the sequence).
benchmarks/plan_period.py shows it on LSTM, GRU and RNN plans. So `extended(plan, T')` is
plan[:p], then k copies of the period plan[p:p+P] moved on 0..k-1 periods, then plan[p:] moved on
k: a step per new step, instead of the passes, the lowering and the graph.

Needs: a graph-lowering plan of fixed-length, unidirectional sequences with `input_chunk` set, its
steps issued by wavefront level (`wavefront_streams`; in topological order the layers follow each
other, and no one cut moves them all on) and a steady state of at least two periods; T' - T a
multiple of m c. Guarantees: the plan `build_plan` makes for the longer spec, field for field
(tests/test_extend.py), verified and registered as the planner's; a ValueError naming why where
it does not apply (the planner then plans from scratch). Does not: shorten a plan, bidirectional
or masked plans (the reverse chain counts down from the sequence's end; a mask is one more
sequence-long buffer), the persistent lowering (one kernel a sequence: a new length is planned in
milliseconds already), cycles longer than four chunks (spare streams taken in turn, unfused cells'
many temporaries: refused, not guessed).
"""

from __future__ import annotations

import re

import numpy as np

from rnnplan.ir import names
from rnnplan.lowering.plan import Buffer, BufferView, GemmParams, Plan, PlanStats, Step
from rnnplan.lowering.registry import register
from rnnplan.lowering.verify_plan import verify_plan

_TIMES = re.compile(r"\.t(\d+)(?:-(\d+))?\.")


def extended(plan: Plan, seq_len: int, graph_nodes) -> Plan:
    """`plan` (of spec.seq_len T) for `seq_len` steps, T + k m c, by inserting k periods.
    `graph_nodes(spec)`: the node count of the passed graph of `spec` (the planner's `passed_graph`),
    for the plan's stats; called for two short sequences, once per network, options and phase."""
    spec, chunk = plan.spec, plan.options.input_chunk
    why = ("needs the graph lowering" if plan.lowering != "graph" else
           "needs PlanOptions.input_chunk set (the period follows the chunk)" if chunk is None else
           "needs wavefront_streams among the passes (steps issued by level: one cut moves every layer on)"
           if "wavefront_streams" not in plan.passes else
           "does not extend bidirectional plans" if spec.bidirectional else
           "does not extend masked plans (variable_lengths)" if spec.variable_lengths else None)
    if why is not None:
        raise ValueError(f"extended: {why}")
    found = _period(plan, chunk)
    if found is None:
        raise ValueError(f"extended: no steady state of two periods in the plan of {spec.seq_len} steps "
                         f"(chunk {chunk}); plan a longer sequence first")
    cut, period, dt, lv, events = found
    k, rest = divmod(seq_len - spec.seq_len, dt)
    if k < 1 or rest:
        raise ValueError(f"extended: seq_len must be {spec.seq_len} plus a positive multiple of {dt} steps "
                         f"(the period), got {seq_len}")
    return register(verify_plan(_Extension(plan, seq_len, cut, period, dt, lv, events, graph_nodes).plan(k)))


def _period(plan: Plan, chunk: int):
    """(cut, steps a period, time steps a period, levels a period, events a period), or None: the
    middle of the plan's longest periodic stretch, for m = 1, 2 or 4 chunks a period."""
    whole = _whole_steps(plan)
    steps, batch, long = plan.steps, plan.spec.batch, _long_buffers(plan, whole)
    middle = next((i for i in range(len(steps) // 2, len(steps)) if steps[i].step is not None), None)
    if middle is None:
        return None
    a = steps[middle]
    role = _TIMES.sub(".t.", a.name)  # what the step does, its times left out
    same = [_key(s, long, batch, whole) for s in steps]
    for m in (1, 2, 4):
        dt = m * chunk
        later = next((j for j in range(middle + 1, len(steps)) if steps[j].step == a.step + dt
                      and _TIMES.sub(".t.", steps[j].name) == role), None)
        if later is None:
            continue
        period, lv = later - middle, steps[later].level - a.level
        events = sum(s.record is not None for s in steps[middle:later])
        # moved[i]: step i moved on one period is step i + period; the longest run of them
        moved = [_key(steps[i], long, batch, whole, period, dt, lv, events) == same[i + period]
                 for i in range(len(steps) - period)]
        best, start = (0, 0), None
        for i, ok in enumerate([*moved, False]):
            if ok and start is None:
                start = i
            elif not ok and start is not None:
                best, start = max(best, (i - start, start)), None
        length, first = best
        if length >= period:  # cuts p with [p, p + period) in the run: the middle one
            return first + (length - period) // 2, period, dt, lv, events
    return None


def _whole_steps(plan: Plan) -> set[int]:
    """The steps over every time step at once: layer 0's input GEMMs (one, or one a gate where
    combine_gates did not run), whose input is all of x. They stay where they are, and grow."""
    x, rows = plan.inputs["x"].buffer, plan.spec.batch * plan.spec.seq_len
    return {i for i, s in enumerate(plan.steps)
            if s.step is None and s.gemm is not None and any(v.buffer == x and v.rows == rows for v in s.inputs)}


def _long_buffers(plan: Plan, whole: set[int]) -> set[int]:
    """The buffers as long as the sequence: input, sequences, the whole-sequence steps' outputs."""
    return {b.id for b in plan.buffers if b.role in ("input", "seq", "output")} | {
        v.buffer for i in whole for v in plan.steps[i].outputs}


def _key(s: Step, long: set[int], batch: int, whole: set[int], period: int = 0, dt: int = 0, lv: int = 0,
         events: int = 0) -> tuple:
    """What of step `s`, moved on by one period (or not: 0s), must equal the step a period on."""
    def view(v):
        return (v.buffer, v.offset + (dt * batch * v.ld if v.buffer in long else 0), v.rows, v.cols, v.ld)
    return (s.kind, s.stream, s.level + lv, tuple(d if d in whole else d + period for d in s.deps),
            tuple(w + events for w in s.waits), None if s.record is None else s.record + events, s.layer,
            None if s.step is None else s.step + dt, tuple(map(view, s.inputs)), tuple(map(view, s.outputs)))


class _Extension:
    def __init__(self, plan: Plan, seq_len: int, cut: int, period: int, dt: int, lv: int, events: int, graph_nodes):
        self.src, self.seq_len, self.cut, self.period, self.dt, self.lv, self.events = (
            plan, seq_len, cut, period, dt, lv, events)
        self.graph_nodes = graph_nodes
        spec = plan.spec
        self.rows_of_t = spec.batch * spec.seq_len  # rows of a whole-sequence view
        self.width = names.time_width(seq_len)
        self.whole = _whole_steps(plan)  # layer 0's input GEMMs over every step: they stay, and grow
        self.long = _long_buffers(plan, self.whole)
        self.whole_out = {v.buffer for i in self.whole for v in plan.steps[i].outputs}
        self.longer_by = (seq_len - spec.seq_len) * spec.batch  # rows the long buffers grow by

    def _view(self, v: BufferView, moves: int) -> BufferView:
        if v.buffer not in self.long:
            return v
        if v.offset == 0 and v.rows == self.rows_of_t:  # a whole-sequence view grows
            return BufferView(v.buffer, 0, v.rows + self.longer_by, v.cols, v.ld)
        return BufferView(v.buffer, v.offset + moves * self.dt * self.src.spec.batch * v.ld, v.rows, v.cols, v.ld)

    def _name(self, name: str, moves: int) -> str:
        """The name with its times moved on and printed at the new width; a whole-sequence range's
        end is the new last step."""
        last = self.src.spec.seq_len - 1

        def label(m):
            t0 = int(m.group(1))
            if m.group(2) is None:
                return f".t{names.time_label(t0 + moves * self.dt, self.width)}."
            t1 = int(m.group(2))
            t0, t1 = (t0, self.seq_len - 1) if (t0, t1) == (0, last) else (t0 + moves * self.dt, t1 + moves * self.dt)
            return f".t{names.time_label(t0, self.width)}-{names.time_label(t1, self.width)}."
        return _TIMES.sub(label, name)

    def _step(self, s: Step, moves: int) -> Step:
        gemm = s.gemm
        if s.outputs and s.outputs[0].buffer in self.whole_out and gemm is not None:
            gemm = GemmParams.model_construct(m=gemm.m + self.longer_by, n=gemm.n, k=gemm.k,
                                              weight_layout=gemm.weight_layout)
        ev = moves * self.events
        return s.model_copy(update=dict(
            name=self._name(s.name, moves), level=s.level + moves * self.lv,
            inputs=tuple(self._view(v, moves) for v in s.inputs), outputs=tuple(self._view(v, moves) for v in s.outputs),
            deps=tuple(d if d in self.whole else d + moves * self.period for d in s.deps),
            waits=tuple(w + ev for w in s.waits),
            record=None if s.record is None else s.record + ev, gemm=gemm,
            step=None if s.step is None else s.step + moves * self.dt))

    def plan(self, k: int) -> Plan:
        src, cut, period = self.src, self.cut, self.period
        steps = [self._step(s, 0) for s in src.steps[:cut]]
        for j in range(k):
            steps += [self._step(s, j) for s in src.steps[cut:cut + period]]
        steps += [self._step(s, k) for s in src.steps[cut:]]
        written: dict[int, int] = {}  # temporaries a period writes to each buffer
        for s in src.steps[cut:cut + period]:
            for v in s.outputs:
                written[v.buffer] = written.get(v.buffer, 0) + 1
        first_written: dict[int, int] = {}  # a temporary buffer is named after its first value
        for i, s in enumerate(src.steps):
            for v in s.outputs:
                first_written.setdefault(v.buffer, i)
        buffers = []
        for b in src.buffers:
            rows, cols = b.shape
            if b.id in self.long:
                rows += self.longer_by
            values = b.values + (k * written.get(b.id, 0) if b.role == "temp" and b.id not in self.whole_out else 0)
            moves = k if b.role == "temp" and first_written.get(b.id, 0) >= cut else 0
            buffers.append(b.model_copy(update=dict(name=self._name(b.name, moves), size=rows * cols,
                                                    shape=(rows, cols), values=values)))
        spec = src.spec.model_copy(update={"seq_len": self.seq_len})
        inputs = {n: self._view(v, k) for n, v in src.inputs.items()}
        outputs = {n: tuple(self._view(v, k) for v in vs) for n, vs in src.outputs.items()}
        return Plan.model_construct(
            schema_version=1, spec=spec, options=src.options, passes=src.passes, lowering=src.lowering,
            lowering_reason=src.lowering_reason, num_streams=src.num_streams,
            num_events=src.num_events + k * self.events, buffers=tuple(buffers), steps=tuple(steps), inputs=inputs,
            outputs=outputs, stats=self._stats(spec, steps, buffers, k))

    def _stats(self, spec, steps: list[Step], buffers: list[Buffer], k: int) -> PlanStats:
        src = self.src.stats
        itemsize = np.dtype(spec.dtype).itemsize
        fixed = sum(b.size for b in buffers if b.role != "temp")
        temp_values = sum(b.size * b.values for b in buffers if b.role == "temp")
        return PlanStats(
            nodes=src.nodes + k * self._nodes_a_period(), kernels=len(steps),
            gemms=sum(s.kind == "gemm" for s in steps), pointwise=sum(s.kind == "pointwise" for s in steps),
            fused=sum(s.kind == "fused" for s in steps), events=self.src.num_events + k * self.events,
            waits=sum(len(s.waits) for s in steps), streams=src.streams, flops=sum(s.flops for s in steps),
            critical_path=max(s.level for s in steps) + 1, peak_bytes=sum(b.size for b in buffers) * itemsize,
            bytes_without_reuse=(fixed + temp_values) * itemsize)

    def _nodes_a_period(self) -> int:
        """The graph's nodes a period adds (the plan holds kernels, not the graph): the passed graphs
        of two short sequences of the same phase, one period apart; kept per network, options and
        phase, as a module extends many lengths from one plan."""
        src = self.src
        short = src.spec.seq_len % self.dt + self.dt
        key = (src.spec.model_copy(update={"seq_len": short}), src.options, self.dt)
        found = _NODES_A_PERIOD.get(key)
        if found is None:
            counts = [self.graph_nodes(src.spec.model_copy(update={"seq_len": t})) for t in (short, short + self.dt)]
            found = _NODES_A_PERIOD[key] = counts[1] - counts[0]
        return found


_NODES_A_PERIOD: dict[tuple, int] = {}  # (the network at a short length, options, steps a period) -> nodes
