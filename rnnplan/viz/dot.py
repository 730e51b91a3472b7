"""Graphviz views of a plan, written as DOT text by hand (no pygraphviz or pydot needed).

`view="op"`: one node per kernel, one cluster per stream, wavefront levels as ranks; data
dependencies are solid grey edges, event waits dashed red edges (an event edge replaces the data
edge it orders). `view="cell"`: one node per cell-step (its kernels summed), one cluster per
layer-direction, for plans too large to draw kernel by kernel. `max_steps` keeps the first steps.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from rnnplan.ir.names import DIRECTIONS
from rnnplan.lowering.plan import Plan

KIND_COLOURS = {"gemm": "#9ecae1", "pointwise": "#fdd0a2", "fused": "#fdae6b", "recurrent": "#e6550d",
                "cell": "#c7e9c0", "chunk": "#bcbddc"}
NL = "\\n"  # a line break inside a DOT label
INSTALL_HINT = ("Graphviz's `dot` program is not installed: install it with `apt-get install graphviz` "
                "(Debian/Ubuntu), `brew install graphviz` (macOS) or `conda install graphviz`, or render "
                "the text of rnnplan.viz.to_dot(plan) elsewhere")


def _q(s: str) -> str:
    return '"' + s.replace('"', r"\"") + '"'


def _kept(plan: Plan, max_steps: int | None) -> list[int]:
    if max_steps is None:
        return list(range(len(plan.steps)))
    keep = [i for i, s in enumerate(plan.steps) if s.step is not None and s.step < max_steps]
    horizon = max((plan.steps[i].level for i in keep), default=-1)
    return sorted(set(keep) | {i for i, s in enumerate(plan.steps) if s.step is None and s.level <= horizon})


def _edges(plan: Plan, kept: set[int]) -> list[tuple[int, int, bool]]:
    """(producer, consumer, is_event) for every dependency between kept steps."""
    recorder = {s.record: i for i, s in enumerate(plan.steps) if s.record is not None}
    out = []
    for i in sorted(kept):
        s = plan.steps[i]
        waited = {recorder[e] for e in s.waits}
        out += [(d, i, d in waited) for d in s.deps if d in kept]
        out += [(w, i, True) for w in waited if w in kept and w not in s.deps]
    return out


def _header(plan: Plan, view: str) -> list[str]:
    title = f"{plan.spec.short()} | {', '.join(plan.passes) or 'naive'} | {view} view"
    lowering = f"{plan.lowering} lowering" + (f": {plan.lowering_reason}" if plan.lowering_reason else "")
    return ["digraph plan {", f"  label={_q(title + NL + lowering)};",
            "  labelloc=t; rankdir=LR; newrank=true; fontname=Helvetica;",
            "  node [shape=box, style=filled, fontname=Helvetica, fontsize=10];",
            "  edge [color=\"#999999\"];"]


def _op_view(plan: Plan, kept: list[int]) -> list[str]:
    lines = _header(plan, "op")
    by_stream = defaultdict(list)
    for i in kept:
        by_stream[plan.steps[i].stream].append(i)
    for stream in sorted(by_stream):
        lines += [f"  subgraph cluster_stream{stream} {{", f"    label=\"stream {stream}\"; color=\"#cccccc\";"]
        for i in by_stream[stream]:
            s = plan.steps[i]
            r = s.recurrence
            what = (f"{s.gemm.m}x{s.gemm.n}x{s.gemm.k}" if s.gemm else
                    f"{r.cell}, {len(r.chains)} chains x {r.seq_len} steps, {r.units_per_block} units/block" if r else
                    s.op or f"{len(s.expr)} ops")
            label = _q(NL.join((s.name, f"{s.kind} {what}", f"level {s.level}")))
            lines.append(f"    s{i} [label={label}, fillcolor=\"{KIND_COLOURS[s.kind]}\"];")
        lines.append("  }")
    by_level = defaultdict(list)
    for i in kept:
        by_level[plan.steps[i].level].append(i)
    lines += ["  { rank=same; " + " ".join(f"s{i};" for i in ids) + " }" for _, ids in sorted(by_level.items())]
    for u, v, event in _edges(plan, set(kept)):
        lines.append(f"  s{u} -> s{v}" + (" [color=\"#d62728\", style=dashed, penwidth=1.5];" if event else ";"))
    lines.append("}")
    return lines


def _cell_view(plan: Plan, kept: list[int]) -> list[str]:
    lines = _header(plan, "cell")
    group_of, members = {}, defaultdict(list)
    for i in kept:
        s = plan.steps[i]
        key = (s.layer, s.direction, s.step) if s.step is not None else ("chunk", s.name)
        group_of[i] = key
        members[key].append(i)
    ids = {key: f"c{n}" for n, key in enumerate(members)}
    chains = defaultdict(list)
    for key in members:
        first = plan.steps[members[key][0]]
        # A step of no layer (the persistent kernel, which runs them all) gets a cluster of its own.
        chains[(-1 if first.layer is None else first.layer, first.direction or 0)].append(key)
    for (layer, d), keys in sorted(chains.items()):
        title = "whole network" if layer < 0 else f"layer {layer} {DIRECTIONS[d]}"
        lines += [f"  subgraph cluster_L{layer}_{d} {{".replace("L-1", "all"),
                  f"    label=\"{title}\"; color=\"#cccccc\";"]
        for key in keys:
            steps = [plan.steps[i] for i in members[key]]
            if key[0] == "chunk":
                label, colour = NL.join((steps[0].name, f"level {steps[0].level}")), KIND_COLOURS["chunk"]
            else:
                label = NL.join((f"L{layer} {DIRECTIONS[d]} step {key[2]}",
                                 f"{len(steps)} kernels, streams {sorted({s.stream for s in steps})}",
                                 f"levels {min(s.level for s in steps)}-{max(s.level for s in steps)}"))
                colour = KIND_COLOURS["cell"]
            lines.append(f"    {ids[key]} [label={_q(label)}, fillcolor=\"{colour}\"];")
        lines.append("  }")
    seen = {}
    for u, v, event in _edges(plan, set(kept)):
        a, b = group_of[u], group_of[v]
        if a != b:
            seen[(a, b)] = seen.get((a, b), False) or event
    for (a, b), event in seen.items():
        lines.append(f"  {ids[a]} -> {ids[b]}" + (" [color=\"#d62728\", style=dashed];" if event else ";"))
    lines.append("}")
    return lines


def to_dot(plan: Plan, view: str = "op", max_steps: int | None = None) -> str:
    if view not in ("op", "cell"):
        raise ValueError(f"view must be 'op' or 'cell', got {view!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    kept = _kept(plan, max_steps)
    return "\n".join((_op_view if view == "op" else _cell_view)(plan, kept)) + "\n"


def render(dot_text: str, path: str | Path) -> Path:
    """Write SVG or PNG (by the file's suffix) with Graphviz's `dot`."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("svg", "png"):
        raise ValueError(f"render writes .svg or .png, got {path.name!r}")
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(INSTALL_HINT)
    result = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot_text, text=True,
                            capture_output=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"dot failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return path
