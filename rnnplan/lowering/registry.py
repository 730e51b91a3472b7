"""The plans known to compute their spec's function, by identity: every plan the planner returned,
plans derived from one by swapping in another kernel for the same network (`with_recurrence`), and
plans `integrity.check_plan` proved equal to the planner's (or a caller explicitly allowed). An
executor runs these without checking them again; any copy or edit is another object, checked afresh.
Weak references: a plan leaves the registry when nothing else holds it."""

from __future__ import annotations

import weakref

from rnnplan.lowering.plan import Plan

_KNOWN: weakref.WeakValueDictionary[int, Plan] = weakref.WeakValueDictionary()


def register(plan: Plan) -> Plan:
    _KNOWN[id(plan)] = plan
    return plan


def is_registered(plan: Plan) -> bool:
    return _KNOWN.get(id(plan)) is plan
