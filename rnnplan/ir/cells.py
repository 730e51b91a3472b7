"""Each recurrent cell, defined once: its gates, its states and its equations, with PyTorch's semantics.

A cell's equations are pointwise operations (`rnnplan.ir.ops`) over named symbols:
- `xp.<gate>`: the input projection W_ih x of that gate's rows, with b_ih added when there is a bias;
- `hp.<gate>`: the recurrent projection W_hh h_prev, with b_hh added likewise;
- `h_prev`, `c_prev`: the previous state; `mask` (masked cells, for variable lengths): 1 where the
  step lies inside a sequence, 0 past its end; and the results of earlier equations, each named
  `<role>` or `<role>.<gate>`.
`outputs` names the result that becomes each new state, `emits` the one the layer outputs (the new h,
unless the cell is masked: `Cell.masked`). Everything else is derived from this one
definition: the naive graph's pointwise nodes (`ir.build`, one node per equation, named by role and
gate, biases as their own nodes), the reference semantics (`Cell.step`, NumPy, used by the recurrent
node's interpreter) and the persistent kernels' cell update (`Cell.c_statements`, from each op's C
form). Adding a cell is a new entry in `CELLS` (and its name in `rnnplan.spec.Cell`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rnnplan.ir.ops import POINTWISE_OPS


@dataclass(frozen=True, slots=True)
class Eq:
    """`<role>[.<gate>] = op(*args)`."""

    role: str
    op: str
    args: tuple[str, ...]
    gate: str | None = None

    @property
    def result(self) -> str:
        return self.role if self.gate is None else f"{self.role}.{self.gate}"


@dataclass(frozen=True, slots=True)
class Cell:
    name: str
    gates: tuple[str, ...]  # PyTorch's row order of weight_ih / weight_hh
    states: tuple[str, ...]  # ("h", "c") for LSTM, ("h",) otherwise; h is the layer's output
    equations: tuple[Eq, ...]
    outputs: tuple[tuple[str, str], ...]  # (state, the result that becomes it)
    emits: str | None = None  # the result written to the layer's output sequence (None: the new h)

    def output(self, state: str) -> str:
        return dict(self.outputs)[state]

    @property
    def emitted(self) -> str:
        """The result the layer outputs at this step: the new h, or (masked) what `emits` names."""
        return self.emits or self.output("h")

    def masked(self) -> Cell:
        """The cell for variable lengths, with the symbol `mask` (1 inside a sequence, 0 past its end):
        past the end every state keeps its previous value (so the reverse direction starts from its
        initial state at each sequence's own end, and h_n, c_n are taken at each sequence's last
        step), and the layer's output there is 0, as torch's packed sequences give."""
        eqs = list(self.equations)
        eqs += [Eq(f"{state}_keep", "select", ("mask", result, f"{state}_prev")) for state, result in self.outputs]
        eqs.append(Eq("y", "masked", ("mask", self.output("h"))))
        return Cell(self.name, self.gates, self.states, tuple(eqs),
                    tuple((state, f"{state}_keep") for state, _ in self.outputs), emits="y")

    @property
    def reads_h_prev(self) -> bool:
        """Does the update read the previous h itself (not only through W_hh h)?"""
        return any("h_prev" in eq.args for eq in self.equations)

    @property
    def sums_only(self) -> bool:
        """Are the projections read only as `add(xp.g, hp.g)` of one gate? Then a kernel may add the
        input and recurrent parts before anything else reads them (the GRU reads them apart)."""
        for eq in self.equations:
            projections = [a for a in eq.args if a.startswith(("xp.", "hp."))]
            gates = {a.split(".", 1)[1] for a in projections}
            if projections and (eq.op != "add" or len(projections) != 2 or len(gates) != 1):
                return False
        return True

    def step(self, xp: Mapping[str, np.ndarray], hp: Mapping[str, np.ndarray], h_prev: np.ndarray,
             c_prev: np.ndarray | None, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The reference semantics: the new states from each gate's projections (biases added) and the
        previous state (and, for a masked cell, the mask), float32 NumPy arrays, by the ops' NumPy
        forms."""
        env: dict[str, np.ndarray | None] = {"h_prev": h_prev, "c_prev": c_prev, "mask": mask}
        env |= {f"xp.{g}": xp[g] for g in self.gates} | {f"hp.{g}": hp[g] for g in self.gates}
        for eq in self.equations:
            env[eq.result] = POINTWISE_OPS[eq.op].numpy(*(env[a] for a in eq.args))
        return {s: env[r] for s, r in self.outputs}

    def c_statements(self, gx: str = "GX", gh: str = "GH") -> list[str]:
        """The update as C statements, by the ops' C forms: gate g's projections are `GX(i)` and
        `GH(i)` (i its index), the previous state `hprev` and `c` (and a masked cell's `mval`); the
        statements declare `h` (and a masked cell's output `yout`) and assign the new `c`."""
        index = {g: i for i, g in enumerate(self.gates)}
        names = {"h_prev": "hprev", "c_prev": "c", "mask": "mval"}
        names |= {f"xp.{g}": f"{gx}({i})" for g, i in index.items()}
        names |= {f"hp.{g}": f"{gh}({i})" for g, i in index.items()}
        lines = []
        for eq in self.equations:
            names[eq.result] = "v_" + eq.result.replace(".", "_")
            lines.append(f"const float {names[eq.result]} = "
                         f"{POINTWISE_OPS[eq.op].c_expr(*(names[a] for a in eq.args))};")
        lines += [f"c = {names[r]};" for s, r in self.outputs if s == "c"]
        lines.append(f"const float h = {names[self.output('h')]};")
        if self.emits:  # a masked cell: what the layer outputs differs from the state kept
            lines.append(f"const float yout = {names[self.emits]};")
        return lines


def _lstm() -> Cell:
    activation = {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid"}
    eqs = []
    for g in "ifgo":
        eqs += [Eq("pre", "add", (f"xp.{g}", f"hp.{g}"), g), Eq("act", activation[g], (f"pre.{g}",), g)]
    eqs += [Eq("f_c", "mul", ("act.f", "c_prev")), Eq("i_g", "mul", ("act.i", "act.g")),
            Eq("c", "add", ("f_c", "i_g")), Eq("tanh_c", "tanh", ("c",)), Eq("h", "mul", ("act.o", "tanh_c"))]
    return Cell("lstm", ("i", "f", "g", "o"), ("h", "c"), tuple(eqs), (("h", "h"), ("c", "c")))


def _gru() -> Cell:
    eqs = []
    for g in "rz":
        eqs += [Eq("pre", "add", (f"xp.{g}", f"hp.{g}"), g), Eq("act", "sigmoid", (f"pre.{g}",), g)]
    # PyTorch's GRU applies r to the recurrent projection *with* its bias:
    # n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    eqs += [Eq("r_hn", "mul", ("act.r", "hp.n"), "n"), Eq("pre", "add", ("xp.n", "r_hn.n"), "n"),
            Eq("act", "tanh", ("pre.n",), "n"), Eq("one_minus_z", "one_minus", ("act.z",)),
            Eq("z_h", "mul", ("act.z", "h_prev")), Eq("zn", "mul", ("one_minus_z", "act.n")),
            Eq("h", "add", ("zn", "z_h"))]
    return Cell("gru", ("r", "z", "n"), ("h",), tuple(eqs), (("h", "h"),))


def _elman(name: str, activation: str) -> Cell:
    eqs = (Eq("pre", "add", ("xp.h", "hp.h")), Eq("h", activation, ("pre",)))
    return Cell(name, ("h",), ("h",), eqs, (("h", "h"),))


CELLS: dict[str, Cell] = {c.name: c for c in (_lstm(), _gru(), _elman("rnn_tanh", "tanh"),
                                              _elman("rnn_relu", "relu"))}


def cell_of(spec) -> Cell:
    """The cell an `RNNSpec` runs: its cell, masked when the spec has variable lengths."""
    cell = CELLS[spec.cell]
    return cell.masked() if getattr(spec, "variable_lengths", False) else cell
