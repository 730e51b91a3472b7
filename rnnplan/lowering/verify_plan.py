"""`verify_plan(plan)`: prove a plan safe to run on concurrent streams.

Checks, and the error each raises (all collected into one PlanError):
- structure: buffer ids, views inside their buffers, streams in range, every event recorded by
  exactly one step and waited on only after that step was issued, deps pointing backwards;
- shapes: per step kind (`_SHAPE_RULES`), and the plan's inputs/outputs against the spec;
- ordering: every dependency happens-before its consumer (stream order or an event chain);
- memory: two accesses to overlapping memory, one of them a write, are ordered by happens-before
  the same way as issue order (so no unsafe reuse and no race); what a step reads from device-
  written memory was written by its deps, and nothing is read before it is written; steps never
  write input, state or param buffers.
"""

from __future__ import annotations

import json
from collections import defaultdict

from pydantic import ValidationError

from rnnplan.ir.cells import CELLS
from rnnplan.ir.ops import POINTWISE_OPS
from rnnplan.ir.recurrence import operand_shapes
from rnnplan.ir.verify import expression_faults
from rnnplan.lowering.clocks import Clocks
from rnnplan.lowering.plan import HOST_WRITTEN, SCHEMA_VERSION, BufferView, Plan, Step


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
    T, B, H, LD = sp.seq_len, sp.batch, sp.hidden_size, sp.num_layers * sp.directions
    states = CELLS[sp.cell].states
    want_in = {"x": (T * B, sp.input_size)} | {f"{s}0": (LD * B, H) for s in states}
    want_out = {"out": [(T * B, sp.directions * H)]} | {f"{s}_n": [(B, H)] * LD for s in states}
    errs = []
    got_in = {k: (v.rows, v.cols) for k, v in plan.inputs.items()}
    if got_in != want_in:
        errs.append(f"plan inputs {got_in} do not match the spec's {want_in}")
    got_out = {k: [(v.rows, v.cols) for v in vs] for k, vs in plan.outputs.items()}
    if got_out != want_out:
        errs.append(f"plan outputs {got_out} do not match the spec's {want_out}")
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


def load_plan(text: str | bytes) -> Plan:
    """A plan from its JSON (`Plan.to_json`); malformed JSON, another schema version or an
    inconsistent plan raise PlanError."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(f"plan JSON is malformed: {e}") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise PlanError(f"plan schema_version is {version!r}; this rnnplan reads version {SCHEMA_VERSION}")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as e:
        raise PlanError(f"plan JSON does not match the schema:\n{e}") from None
    return verify_plan(plan)
