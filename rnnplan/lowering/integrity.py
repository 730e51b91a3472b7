"""A plan that runs computes its spec's function: the proof for plans the planner did not hand out.

`verify_plan` proves a plan safe and bound to its spec, but a plan that passes it can still compute
something else (a `sigmoid` edited to `tanh`, two same-shaped weights swapped). The planner is
deterministic, so a plan of someone else's making is checked by planning its spec and options
again and comparing, field by field: `check_plan` (what `Executor` and `load_plan` call) raises a
PlanError that names the first steps, buffers or fields that differ, unless the caller passes
`allow_edits=True` (research on hand-edited plans: verify_plan's checks still apply). Plans the
planner returned, and plans once checked or allowed, are known by identity (`lowering/registry.py`), so
checking them again costs nothing; any copy is checked afresh.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

import rnnplan.lowering.planner as planner
from rnnplan.lowering.plan import SCHEMA_VERSION, Plan
from rnnplan.lowering.registry import is_registered, register
from rnnplan.lowering.verify_plan import PlanError, verify_plan


def _brief(value, width: int = 90) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _field_difference(name: str, got, want) -> str:
    """How one field differs, at its first differing element when both are sequences."""
    if isinstance(got, tuple) and isinstance(want, tuple):
        if len(got) != len(want):
            return f"{name} has {len(got)} entries, rnnplan plans {len(want)}"
        i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        return f"{name}[{i}] is {_brief(got[i])}, rnnplan plans {_brief(want[i])}"
    return f"{name} is {_brief(got)}, rnnplan plans {_brief(want)}"


def _item_differences(kind: str, got, want, label) -> list[str]:
    fields = type(got).model_fields
    return [f"{kind} {label}: {_field_difference(f, getattr(got, f), getattr(want, f))}"
            for f in fields if getattr(got, f) != getattr(want, f)]


def plan_differences(plan: Plan, expected: Plan, limit: int = 6) -> list[str]:
    """Where `plan` differs from `expected`, in words: top-level fields, then buffers and steps one by
    one (by index and name), at most `limit` lines."""
    diffs: list[str] = []
    for f in Plan.model_fields:
        if f in ("buffers", "steps"):
            continue
        if getattr(plan, f) != getattr(expected, f):
            diffs.append(f"field {_field_difference(f, getattr(plan, f), getattr(expected, f))}")
    for kind, got, want in (("buffer", plan.buffers, expected.buffers), ("step", plan.steps, expected.steps)):
        if len(got) != len(want):
            diffs.append(f"the plan has {len(got)} {kind}s, rnnplan plans {len(want)}")
        for i, (a, b) in enumerate(zip(got, want)):
            if len(diffs) >= limit:
                break
            if a != b:
                diffs += _item_differences(kind, a, b, f"{i} ({b.name})")
    return diffs[:limit]


def check_plan(plan: Plan, allow_edits: bool = False) -> Plan:
    """`plan`, proved to compute its spec's function (or, with `allow_edits`, at least safe to run);
    PlanError otherwise."""
    if not isinstance(plan, Plan):
        raise TypeError(f"expected an rnnplan.Plan, got {type(plan).__name__}")
    if is_registered(plan):
        return plan
    verify_plan(plan)
    try:
        expected = planner.build_plan(plan.spec, options=plan.options)
    except (ValueError, TypeError) as e:
        raise PlanError(f"the plan's spec and options cannot be planned ({' '.join(str(e).split())}), so the "
                        "plan cannot be shown to compute its spec's function") from None
    diffs = [] if plan == expected else plan_differences(plan, expected)
    if diffs and not allow_edits:
        raise PlanError("this plan is not the one rnnplan makes for its spec and options, so it may compute "
                        "something else:\n  " + "\n  ".join(diffs) +
                        "\nTo run an edited plan anyway, pass allow_edits=True (its safety checks still apply).")
    return register(plan)


def load_plan(text: str | bytes, allow_edits: bool = False) -> Plan:
    """A plan from its JSON (`Plan.to_json`), checked by `check_plan`: malformed JSON, another schema
    version, an inconsistent plan or (unless `allow_edits`) an edited one raise PlanError."""
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
    return check_plan(plan, allow_edits)
