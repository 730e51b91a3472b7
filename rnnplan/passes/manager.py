"""The pass registry and pass manager.

`REGISTRY` maps each name of `rnnplan.spec.PASSES` (the one list of pass names, in canonical order)
to the record its module declares (`passes/record.py`); at import it checks that every name has a
record and that the canonical order keeps every pass after the ones it must follow. `run_passes`
runs passes in the order given, refusing an order that breaks a pass's `after`; `apply_passes` runs
the options' subset in canonical order. Either verifies the graph after each pass when asked.
"""

from __future__ import annotations

from collections.abc import Iterable

from rnnplan.ir.graph import Graph
from rnnplan.ir.verify import verify
from rnnplan.passes.batch_input_gemms import PASS as BATCH_INPUT_GEMMS
from rnnplan.passes.combine_gates import PASS as COMBINE_GATES
from rnnplan.passes.fuse_pointwise import PASS as FUSE_POINTWISE
from rnnplan.passes.pretranspose import PASS as PRETRANSPOSE
from rnnplan.passes.record import Pass
from rnnplan.passes.wavefront_streams import PASS as WAVEFRONT_STREAMS
from rnnplan.spec import PASSES, PlanOptions, check_pass_names

_RECORDS = {p.name: p for p in (BATCH_INPUT_GEMMS, COMBINE_GATES, FUSE_POINTWISE, PRETRANSPOSE, WAVEFRONT_STREAMS)}
if set(_RECORDS) != set(PASSES):
    raise ImportError(f"pass records {sorted(_RECORDS)} do not match rnnplan.spec.PASSES {list(PASSES)}")
REGISTRY: dict[str, Pass] = {name: _RECORDS[name] for name in PASSES}
STEP_LOCAL: tuple[str, ...] = tuple(name for name, p in REGISTRY.items() if p.step_local)


def check_order(names: Iterable[str]) -> tuple[str, ...]:
    """`names` as a tuple, if every one is a known pass, none repeats, and each comes after the
    passes it must follow (those of them that are present); else ValueError naming the first fault."""
    names = tuple(names)
    check_pass_names(names)  # REGISTRY has exactly the names of PASSES (checked above)
    for i, name in enumerate(names):
        late = [a for a in REGISTRY[name].after if a in names[i + 1:]]
        if late:
            raise ValueError(f"pass {name} must run after {late}, which come(s) later in {list(names)}")
    return names


check_order(PASSES)  # the canonical order keeps every constraint


def run_passes(graph: Graph, names: Iterable[str], options: PlanOptions | None = None,
               check: bool = True) -> Graph:
    """Run the passes `names`, in that order (checked by `check_order`), each verified when `check`."""
    options = options or PlanOptions()
    for name in check_order(names):
        graph = REGISTRY[name].run(graph, options)
        if check:
            verify(graph)
    return graph


def apply_passes(graph: Graph, options: PlanOptions, check: bool = True) -> Graph:
    """Run the options' passes (every pass when `options.passes` is None) in canonical order."""
    return run_passes(graph, PASSES if options.passes is None else options.passes, options, check)
