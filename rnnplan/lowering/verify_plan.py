"""`verify_plan(plan)`: prove a plan safe to run on concurrent streams.

Checks, and the error each raises (all collected into one PlanError):
- structure: buffer ids, views inside their buffers, streams in range, every event recorded by
  exactly one step and waited on only after that step was issued, deps pointing backwards;
- shapes: per step kind (`_SHAPE_RULES`), and the plan's inputs/outputs against the spec;
- bindings: inputs bound to buffers of their role, outputs to device-written buffers, every param
  buffer to a tensor of the spec with its shape and transform, recurrent steps to the spec's
  network (`_bindings`); every element of every declared output written by some step;
- ordering: every dependency happens-before its consumer (stream order or an event chain);
- memory: two accesses to overlapping memory, one of them a write, are ordered by happens-before
  the same way as issue order (so no unsafe reuse and no race); what a step reads from device-
  written memory was written by its deps, and nothing is read before it is written; steps never
  write input, state or param buffers.
"""

from __future__ import annotations

from collections import defaultdict

from rnnplan.ir.build import param_shapes
from rnnplan.ir.cells import CELLS
from rnnplan.ir.ops import POINTWISE_OPS
from rnnplan.ir.recurrence import network_of, operand_shapes
from rnnplan.ir.verify import expression_faults
from rnnplan.lowering.clocks import Clocks
from rnnplan.lowering.plan import HOST_WRITTEN, BufferView, Plan, Step


class PlanError(ValueError):
    """A plan is malformed, inconsistent or unsafe; the message lists what is wrong."""


def _rect(v: BufferView) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) in the buffer seen with row stride v.ld, or None if the view wraps."""
    r0, c0 = divmod(v.offset, v.ld)
    return None if c0 + v.cols > v.ld else (r0, r0 + v.rows, c0, c0 + v.cols)


def covers(w: BufferView, a: BufferView) -> bool:
    """Does writing w overwrite every element a touches?"""
    contiguous = w.cols == w.ld or w.rows == 1
    if contiguous and w.offset <= a.offset and a.end <= w.end:
        return True
    rw, ra = _rect(w), _rect(a)
    return (w.ld == a.ld and rw is not None and ra is not None and rw[0] <= ra[0] and ra[1] <= rw[1]
            and rw[2] <= ra[2] and ra[3] <= rw[3])


def _broadcast_ok(v: BufferView, out: BufferView) -> bool:
    return v.rows in (1, out.rows) and v.cols in (1, out.cols)


def _gemm(s: Step) -> list[str]:
    if s.gemm is None or len(s.inputs) != 2 or len(s.outputs) != 1:
        return ["a gemm step needs gemm params, two inputs and one output"]
    g, (a, w), c = s.gemm, s.inputs, s.outputs[0]
    want_w = (g.n, g.k) if g.weight_layout == "nk" else (g.k, g.n)
    errs = [f"A is {a.rows}x{a.cols}, wants {g.m}x{g.k}"] if (a.rows, a.cols) != (g.m, g.k) else []
    errs += [f"W is {w.rows}x{w.cols}, wants {want_w}"] if (w.rows, w.cols) != want_w else []
    errs += [f"C is {c.rows}x{c.cols}, wants {g.m}x{g.n}"] if (c.rows, c.cols) != (g.m, g.n) else []
    return errs


def _pointwise(s: Step) -> list[str]:
    op = POINTWISE_OPS.get(s.op or "")
    if op is None or len(s.inputs) != op.arity or len(s.outputs) != 1:
        return [f"pointwise op {s.op!r} with {len(s.inputs)} inputs"]
    return [f"input {i} does not broadcast" for i, v in enumerate(s.inputs)
            if not _broadcast_ok(v, s.outputs[0])]


def _fused(s: Step) -> list[str]:
    faults, undefined = expression_faults(len(s.inputs), s.expr, s.expr_outputs)
    errs = [f"bad instruction {ins.out}={ins.op}{ins.args}" for ins, _, _ in faults]
    out = s.outputs[0] if s.outputs else None
    if out is None or len(s.outputs) != len(s.expr_outputs) or undefined:
        errs.append("outputs do not match the expression's outputs")
    elif any((o.rows, o.cols) != (out.rows, out.cols) for o in s.outputs):
        errs.append("outputs differ in shape")
    else:  # _broadcast_ok written out: this runs for every operand of every fused step
        rows, cols = out.rows, out.cols
        errs += [f"input {i} does not broadcast" for i, (_, _, r, c, _) in enumerate(s.inputs)
                 if (r != rows and r != 1) or (c != cols and c != 1)]
    return errs


def _recurrent(s: Step) -> list[str]:
    if s.recurrence is None:
        return ["a recurrent step needs its recurrence parameters"]
    ins, outs = operand_shapes(s.recurrence)
    got_in = [(v.rows, v.cols) for v in s.inputs]
    got_out = [(v.rows, v.cols) for v in s.outputs]
    return [] if (got_in, got_out) == (ins, outs) else [f"operands {got_in} -> {got_out}, needs {ins} -> {outs}"]


_SHAPE_RULES = {"gemm": _gemm, "pointwise": _pointwise, "fused": _fused, "recurrent": _recurrent}


def _interface(plan: Plan) -> list[str]:
    """The plan's inputs and outputs have the shapes the spec implies."""
    sp = plan.spec
    T, B, LD = sp.seq_len, sp.batch, sp.num_layers * sp.directions
    states = CELLS[sp.cell].states
    want_in = {"x": (T * B, sp.input_size)} | ({"mask": (T * B, 1)} if sp.variable_lengths else {}) | \
        {f"{s}0": (LD * B, sp.state_size(s)) for s in states}
    want_out = {"out": [(T * B, sp.directions * sp.output_size)]} | \
        {f"{s}_n": [(B, sp.state_size(s))] * LD for s in states}
    errs = []
    got_in = {k: (v.rows, v.cols) for k, v in plan.inputs.items()}
    if got_in != want_in:
        errs.append(f"plan inputs {got_in} do not match the spec's {want_in}")
    got_out = {k: [(v.rows, v.cols) for v in vs] for k, vs in plan.outputs.items()}
    if got_out != want_out:
        errs.append(f"plan outputs {got_out} do not match the spec's {want_out}")
    return errs


def _bindings(plan: Plan) -> list[str]:
    """What the plan's names are bound to is what the spec says: inputs to buffers of their role,
    outputs to device-written buffers (`out` to the output buffer), every param buffer to a tensor of
    the spec with that tensor's shape (after its transform), a recurrent step to the spec's network."""
    spec, buffers, errs = plan.spec, plan.buffers, []
    for name, v in plan.inputs.items():
        want = "input" if name in ("x", "mask") else "state"
        if buffers[v.buffer].role != want:
            errs.append(f"input {name} is bound to buffer {v.buffer} ({buffers[v.buffer].name}) of role "
                        f"{buffers[v.buffer].role}, not {want}")
    for name, views in plan.outputs.items():
        for k, v in enumerate(views):
            role = buffers[v.buffer].role
            if role in HOST_WRITTEN or (name == "out" and role != "output"):
                errs.append(f"output {name}[{k}] is bound to buffer {v.buffer} ({buffers[v.buffer].name}) of role "
                            f"{role}")
    tensors = param_shapes(spec)
    for b in buffers:
        if b.role != "param":
            allowed = {"input": ("x", "mask"), "state": ("h0", "c0")}.get(b.role, (None,))
            if b.source not in allowed or b.transform != "none":
                errs.append(f"buffer {b.id} ({b.name}): a {b.role} buffer with source {b.source!r} and transform "
                            f"{b.transform!r}")
            continue
        if b.source not in tensors:
            why = " (the spec has bias=False)" if (b.source or "").startswith("bias") and not spec.bias else ""
            errs.append(f"buffer {b.id} ({b.name}): source {b.source!r} is no tensor of {spec.short()}{why}; its "
                        f"tensors are {', '.join(tensors)}")
            continue
        shape = tensors[b.source] if len(tensors[b.source]) == 2 else (1, tensors[b.source][0])
        want = shape[::-1] if b.transform == "transpose" else shape
        if tuple(b.shape) != want:
            errs.append(f"buffer {b.id} ({b.name}): shape {tuple(b.shape)} is not {b.source}'s {shape} with "
                        f"transform {b.transform!r} ({want})")
    network = network_of(spec)
    for s in plan.steps:
        if s.recurrence is not None:
            errs += [f"{s.name}: recurrence.{k} is {getattr(s.recurrence, k)!r}, the spec's is {v!r}"
                     for k, v in network.items() if getattr(s.recurrence, k) != v]
    return errs


def _run(start: int, end: int, ld: int) -> list[tuple[int, int, int, int]]:
    """The elements start..end-1 of a buffer as rectangles (r0, r1, c0, c1) of rows `ld` long."""
    (r0, c0), (r1, c1) = divmod(start, ld), divmod(end, ld)
    if r0 == r1:
        return [(r0, r0 + 1, c0, c1)] if c1 > c0 else []
    middle = [(r0 + 1, r1, 0, ld)] if r1 > r0 + 1 else []
    return [(r0, r0 + 1, c0, ld)] + middle + ([(r1, r1 + 1, 0, c1)] if c1 else [])


def _rects(v: BufferView, ld: int) -> list[tuple[int, int, int, int]] | None:
    """The elements a view touches, as rectangles of a buffer seen with rows `ld` long (None: too many
    pieces to list, for a view with another row stride that is no contiguous run)."""
    rect = _rect(v) if v.ld == ld else None
    if rect is not None:
        return [rect]
    if v.cols == v.ld or v.rows == 1:
        return _run(v.offset, v.offset + (v.rows - 1) * v.ld + v.cols, ld)
    if v.rows > 4096:
        return None
    return [r for i in range(v.rows) for r in _run(v.offset + i * v.ld, v.offset + i * v.ld + v.cols, ld)]


def _covered(target: tuple[int, int, int, int], rects: list[tuple[int, int, int, int]]) -> int:
    """How many elements of the rectangle `target` the union of `rects` covers (a sweep over rows:
    between two row boundaries, the merged column intervals of the rectangles spanning them)."""
    t0, t1, u0, u1 = target
    clipped = [(max(a, t0), min(b, t1), max(c, u0), min(d, u1)) for a, b, c, d in rects]
    clipped = [r for r in clipped if r[0] < r[1] and r[2] < r[3]]
    bounds = sorted({r for a, b, _, _ in clipped for r in (a, b)})
    starts = sorted(clipped)
    total, active, nxt = 0, [], 0
    for lo, hi in zip(bounds, bounds[1:]):
        while nxt < len(starts) and starts[nxt][0] <= lo:
            active.append(starts[nxt])
            nxt += 1
        active = [r for r in active if r[1] > lo]
        width, reach = 0, None
        for _, _, c, d in sorted(active, key=lambda r: r[2]):
            if reach is None or c > reach:
                width, reach = width + d - c, d
            elif d > reach:
                width, reach = width + d - reach, d
        total += width * (hi - lo)
    return total


def _outputs_written(plan: Plan) -> list[str]:
    """Every element of every declared output is written by some step (else a run would return what
    the buffer held before: NaN on the NumPy backend, an earlier call's values on a GPU). Which write
    is last is no race: `_memory` orders every write after the accesses it overwrites. Counted by
    rectangles, not elements: outputs can be far larger than what checking them may allocate."""
    writes: dict[int, list[BufferView]] = defaultdict(list)
    wanted = {v.buffer for vs in plan.outputs.values() for v in vs}
    for s in plan.steps:
        for v in s.outputs:
            if v.buffer in wanted:
                writes[v.buffer].append(v)
    errs = []
    for name, views in plan.outputs.items():
        for k, v in enumerate(views):
            target, pieces = _rects(v, v.ld), [_rects(w, v.ld) for w in writes[v.buffer]]
            where = f"output {name}[{k}] (buffer {v.buffer}, {plan.buffers[v.buffer].name})"
            if target is None or len(target) != 1 or any(p is None for p in pieces):
                errs.append(f"{where}: its view or the writes to it are too irregular to prove it written")
                continue
            missing = v.rows * v.cols - _covered(target[0], [r for p in pieces for r in p])
            if missing:
                errs.append(f"{where}: {missing} of its {v.rows * v.cols} elements are written by no step")
    return errs


def _joined(reads: list[BufferView]) -> list[BufferView]:
    """One step's reads with side-by-side column blocks of one buffer (a cell's gate columns of a
    GEMM's output) joined into the rectangle they make up: the same elements, fewer accesses to
    replay. Repeated and overlapping views stay as they are."""
    reads = sorted(reads)  # by buffer, then offset
    out = [reads[0]]
    for v in reads[1:]:
        buf, offset, rows, cols, ld = out[-1]
        if v[0] == buf and v[1] == offset + cols and v[2] == rows and v[4] == ld \
                and offset % ld + cols + v[3] <= ld:  # the next columns, within the same rows
            out[-1] = tuple.__new__(BufferView, (buf, offset, rows, cols + v[3], ld))
        else:
            out.append(v)
    return out


def _memory(plan: Plan, clocks: Clocks, errs: list[str]) -> None:
    """Replay the steps' accesses in issue order, keeping the live accesses of each buffer page.

    An access is [step, view, write, alive, rect, first, end]: `rect` is the view's rectangle (or
    None when it wraps rows) and first/end its element range, kept because every later access to
    the page compares against them. A write retires the accesses it fully overwrites. Pages of one
    time step's rows keep the live lists short for sequence-long buffers. A step's reads of host-
    written buffers (inputs, params) need no replay, and its reads of side-by-side columns are one
    access (`_joined`). One function, its helpers inlined: it runs for every operand of every step
    (10^5 and more for long sequences)."""
    batch, steps = plan.spec.batch, plan.steps
    page = {b.id: b.shape[1] * batch if b.shape[0] % batch == 0 else b.size for b in plan.buffers}
    live: dict[tuple[int, int], list[list]] = defaultdict(list)
    host = {b.id for b in plan.buffers if b.role in HOST_WRITTEN}
    happens_before = clocks.happens_before
    for i, s in enumerate(steps):
        reads = [v for v in s.inputs if v[0] not in host]  # host-written memory is never written here
        for write, views in ((False, _joined(reads) if len(reads) > 2 else reads), (True, s.outputs)):
            for v in views:
                buf, offset, rows, cols, ld = v
                if write and buf in host:
                    errs.append(f"{s.name} writes buffer {buf}, which holds an input, state or param")
                    continue
                end = offset + (rows - 1) * ld + cols
                p = page[buf]
                first, last = offset // p, (end - 1) // p
                if first == last:
                    buckets: list[list[list]] = [live[(buf, first)]]
                    candidates = buckets[0]
                else:  # an access spanning pages is listed in each: look at it once
                    buckets = [live[(buf, k)] for k in range(first, last + 1)]
                    candidates = list({id(a): a for bucket in buckets for a in bucket}.values())
                r0, c0 = divmod(offset, ld)
                rect = None if c0 + cols > ld else (r0, r0 + rows, c0, c0 + cols)
                size = rows * cols
                covered, stale, dead = 0, [], False
                for a in candidates:
                    if not a[3]:
                        dead = True
                        continue
                    if a[6] <= offset or end <= a[5] or (not write and not a[2]):
                        continue
                    w, ra = a[1], a[4]
                    if w is v or w == v:
                        shared = size
                    elif ra is not None and rect is not None and w.ld == ld:  # min/max written out
                        a0, a1, a2, a3 = ra
                        b0, b1, b2, b3 = rect
                        nr = (a1 if a1 < b1 else b1) - (a0 if a0 > b0 else b0)
                        nc = (a3 if a3 < b3 else b3) - (a2 if a2 > b2 else b2)
                        shared = nr * nc if nr > 0 and nc > 0 else 0
                    else:  # an upper bound: strides differ or a view wraps
                        shared = min(a[6], end) - max(a[5], offset)
                    if not shared:
                        continue
                    if not write:  # a write v overlaps: it must be a dep, and the writes must cover v
                        covered += shared
                        if a[0] not in s.deps:
                            stale.append(steps[a[0]].name)
                    elif a[0] != i:  # an access v overwrites: it must be complete, and is retired if covered
                        if not happens_before(a[0], i):
                            kind = "write" if a[2] else "read"
                            errs.append(f"{s.name} (stream {s.stream}) overwrites buffer {buf} while the "
                                        f"{kind} by {steps[a[0]].name} (stream {steps[a[0]].stream}) "
                                        f"may still be running: unsafe reuse")
                        if w is v or w == v or covers(v, w):
                            a[3], dead = False, True
                if stale:
                    errs.append(f"{s.name} reads buffer {buf} last written by {stale}, not by its deps")
                if not write and covered < size:
                    errs.append(f"{s.name} reads elements of buffer {buf} that nothing wrote before it")
                acc = [i, v, write, True, rect, offset, end]
                for bucket in buckets:
                    if dead:
                        bucket[:] = [a for a in bucket if a[3]]
                    bucket.append(acc)


def verify_plan(plan: Plan, limit: int = 20) -> Plan:
    """Check every invariant; raise PlanError listing the problems, else return the plan."""
    errs: list[str] = []
    for i, b in enumerate(plan.buffers):
        if b.id != i or b.size < b.shape[0] * b.shape[1]:
            errs.append(f"buffer {i} ({b.name}): id {b.id}, size {b.size} for shape {b.shape}")
    views = [v for vs in plan.outputs.values() for v in vs] + list(plan.inputs.values())
    views += [v for s in plan.steps for v in s.inputs + s.outputs]
    sizes = [b.size for b in plan.buffers]
    for v in dict.fromkeys(views):  # each distinct view once, in order: steps share most of them
        buf, offset, rows, cols, ld = v
        if not (0 <= buf < len(sizes)) or offset < 0 or rows < 1 or cols < 1 or cols > ld \
                or offset + (rows - 1) * ld + cols > sizes[buf]:
            errs.append(f"view {v} is outside its buffer")
    errs += _interface(plan)
    if not errs:  # bindings and coverage read views that are known to lie inside their buffers
        errs += _bindings(plan) + _outputs_written(plan)
    recorder: dict[int, int] = {}
    for i, s in enumerate(plan.steps):
        errs += [f"{s.name}: {e}" for e in _SHAPE_RULES[s.kind](s)]
        if not 0 <= s.stream < plan.num_streams:
            errs.append(f"{s.name}: stream {s.stream} not in 0..{plan.num_streams - 1}")
        errs += [f"{s.name}: dep {d} is not an earlier step" for d in s.deps if not 0 <= d < i]
        errs += [f"{s.name}: waits on event {e} before any step recorded it" for e in s.waits
                 if e not in recorder]
        if s.record is not None:
            if s.record in recorder or not 0 <= s.record < plan.num_events:
                errs.append(f"{s.name}: records event {s.record}, already recorded or out of range")
            recorder[s.record] = i
    if errs:
        raise PlanError("\n".join(errs[:limit]))
    clocks = Clocks(plan.num_streams)
    for s in plan.steps:
        clocks.add(s.stream, [recorder[e] for e in s.waits])
    for i, s in enumerate(plan.steps):
        errs += [f"{s.name} (stream {s.stream}) reads {plan.steps[d].name} (stream "
                 f"{plan.steps[d].stream}) with no event or stream order between them"
                 for d in s.deps if not clocks.happens_before(d, i)]
    _memory(plan, clocks, errs)
    if errs:
        more = f"\n... and {len(errs) - limit} more" if len(errs) > limit else ""
        raise PlanError("\n".join(errs[:limit]) + more)
    return plan
