"""Node names, made in one place from a node's attributes, so that they are deterministic and read
`L{layer}.{fwd|rev}.t{time}.{role}[.{gate}]`.

Times print zero-padded to the width of the sequence's last index. A graph may instead carry time
*slots* (`Graph.time_slots`): every name that mentions a time then holds the format slot `{k}` for
time k, and `str.format` places a copy of the step at any time. `passes.repeat_steps` builds the long
graph that way from a three-step one; nothing ever parses a time back out of a name (code that needs a
time reads the node's `time` attribute).
"""

from __future__ import annotations

DIRECTIONS = ("fwd", "rev")


def time_width(seq_len: int) -> int:
    return len(str(seq_len - 1))


def time_label(t: int, width: int, slots: bool = False) -> str:
    """How time t prints in names: padded to `width`, or as the format slot `{t}`."""
    return "{" + str(t) + "}" if slots else f"{t:0{width}d}"


def chain(layer: int, direction: int) -> str:
    return f"L{layer}.{DIRECTIONS[direction]}"


def cell_step(layer: int, direction: int, time: str, role: str, gate: str | None = None) -> str:
    """A node of one cell-step (`time` as `time_label` prints it)."""
    return f"{chain(layer, direction)}.t{time}.{role}" + (f".{gate}" if gate else "")


def chunk(layer: int, direction: int, first: str, last: str, role: str, gate: str | None = None) -> str:
    """A node over the time steps first..last of one layer-direction (a batched input GEMM)."""
    return f"{chain(layer, direction)}.t{first}-{last}.{role}" + (f".{gate}" if gate else "")


def layer_input(layer: int, time: str) -> str:
    """The view of layer `layer`'s input at one time: `x` rows for layer 0, `y{layer-1}` rows above."""
    return f"L0.x.t{time}" if layer == 0 else f"L{layer}.in.t{time}"
