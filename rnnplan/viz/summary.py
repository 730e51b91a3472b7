"""`summarize(plan)` (`rnnplan.summarize`): a fixed-layout text table of what a plan contains."""

from __future__ import annotations

from collections import Counter

from rnnplan.lowering.cost import predicted_ms
from rnnplan.lowering.plan import Plan
from rnnplan.persistent.kernel import kernel_of


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def summarize(plan: Plan) -> str:
    s, o = plan.stats, plan.options
    per_stream = Counter(step.stream for step in plan.steps)
    rows = [
        ("spec", plan.spec.short()),
        ("passes", ", ".join(plan.passes) or "(none: naive plan)"),
        ("options", f"streams={o.num_streams or 'per layer-direction'} input_chunk="
                    f"{o.input_chunk or 'auto'} math={o.math} lowering={o.lowering}"),
        ("graph nodes", f"{s.nodes:,}"),
        ("kernels", f"{s.kernels:,}"),
        ("  gemm", f"{s.gemms:,}"),
        ("  pointwise", f"{s.pointwise:,}"),
        ("  fused", f"{s.fused:,}"),
        ("streams", f"{s.streams} (" + ", ".join(f"{k}:{per_stream[k]}" for k in sorted(per_stream)) + ")"),
        ("events", f"{s.events:,} recorded, {s.waits:,} waits"),
        ("flops", f"{s.flops:,} ({s.flops / 1e9:,.3f} GFLOP)"),
        ("critical path", f"{s.critical_path:,} dependent kernels"),
        ("predicted", f"{predicted_ms(plan):.3f} ms a call (cost model fitted on an H200, graph replay)"),
        ("peak memory", f"{_human_bytes(s.peak_bytes)} ({_human_bytes(s.bytes_without_reuse)} without reuse)"),
        ("buffers", f"{len(plan.buffers):,}"),
    ]
    rows.insert(3, ("lowering", f"{plan.lowering}: {plan.lowering_reason}" if plan.lowering_reason else plan.lowering))
    rec = next((st for st in plan.steps if st.recurrence is not None), None)
    if rec is not None:
        k = kernel_of(rec.recurrence)
        held = "registers" if k.weights_in_registers else "shared memory"
        kind = f"tensor cores ({k.precision.operands}), batch tiles of {k.batch_tile}" if k.batch_tile else "FFMA"
        rows.append(("persistent", f"1 kernel ({kind}), {k.blocks} blocks of {k.units_per_block} hidden units, "
                                   f"weights held in {held}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
