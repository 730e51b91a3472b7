"""The wavefront picture: the layer x step grid of a plan, each cell coloured by the wavefront level
of its cell-step (left) and by the stream it runs on (right). Needs matplotlib (extra `viz`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnplan.ir.names import DIRECTIONS
from rnnplan.ir.recurrence import wavefront
from rnnplan.lowering.plan import Plan


def _grid(plan: Plan) -> tuple[np.ndarray, np.ndarray, list[str]]:
    spec = plan.spec
    rows = spec.num_layers * spec.directions
    level = np.full((rows, spec.seq_len), np.nan)
    stream = np.full((rows, spec.seq_len), np.nan)
    recurrent = next((s for s in plan.steps if s.recurrence is not None), None)
    if recurrent is not None:  # persistent lowering: the rounds inside the kernel; "stream" = block group
        for (layer, d, step), lvl in wavefront(recurrent.recurrence).items():
            level[layer * spec.directions + d, step] = lvl
            stream[layer * spec.directions + d, step] = layer * spec.directions + d
    for s in plan.steps:
        if s.step is None:
            continue
        r = s.layer * spec.directions + s.direction
        # A cell-step's level is the level of its last kernel: when its new state exists.
        if np.isnan(level[r, s.step]) or s.level > level[r, s.step]:
            level[r, s.step], stream[r, s.step] = s.level, s.stream
    labels = [f"L{l} {DIRECTIONS[d]}" for l in range(spec.num_layers) for d in range(spec.directions)]
    return level, stream, labels


def save_wavefront_png(plan: Plan, path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the wavefront picture needs matplotlib: pip install 'rnnplan[viz]'") from None
    level, stream, labels = _grid(plan)
    fig, axes = plt.subplots(1, 2, figsize=(14, 1.6 + 0.45 * len(labels)), constrained_layout=True)
    for ax, data, title, cmap in ((axes[0], level, "wavefront level of each cell-step", "viridis"),
                                  (axes[1], stream, "stream of each cell-step", "tab10")):
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("step (processing order)")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.05)
    persistent = any(st.recurrence is not None for st in plan.steps)
    if persistent:
        axes[0].set_title("round of each cell-step inside the persistent kernel")
        axes[1].set_title("block group (layer-direction) of each cell-step")
    fig.suptitle(f"{plan.spec.short()}  |  {plan.lowering} lowering  |  critical path {plan.stats.critical_path} kernels\n"
                 f"passes: {', '.join(plan.passes) or 'none'}", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
