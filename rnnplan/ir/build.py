"""`build(spec)`: unroll a stacked RNN into the paper's naive DAG.

Per cell-step: one GEMM per gate per operand (LSTM 8, GRU 6, Elman 2), then separate pointwise nodes
for the bias adds, the pre-activation sum, each activation and each state-update operation: one
pointwise node per equation of the cell (`ir/cells.py`, PyTorch's semantics). Layer l's output at
time t is written into rows t*B:(t+1)*B and columns d*H:(d+1)*H of storage `y{l}` (d = direction),
so layer l+1 reads one row block per step and the final output is `y{L-1}` as it stands. The reverse direction processes
t = T-1 ... 0; its step index counts in processing order, its `time` attribute is the sequence index.

With variable lengths the cell is masked (`Cell.masked`): each cell-step reads its rows of the `mask`
input, keeps its states past a sequence's end, and writes its masked output (not its h state) into
`y{l}`, so that the recurrence carries the state in a value of its own.

With a projection (`proj_size`, LSTM), each cell-step ends in a GEMM by `weight_hr` (`projected`):
h and what the layer outputs are the projected h, c stays of hidden size.

Node names read `L{layer}.{fwd|rev}.t{time}.{role}.{gate}` (`ir/names.py`); they are deterministic.
`build(spec, time_slots=True)` writes times as format slots instead (`passes/repeat_steps.py`).
"""

from __future__ import annotations

import rnnplan.ir.names as names
from rnnplan.ir.cells import CELLS, Cell, cell_of
from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Gemm, Node, Region, Value
from rnnplan.spec import RNNSpec

SUFFIX = ("", "_reverse")


def param_names(spec: RNNSpec, layer: int, direction: int) -> dict[str, str]:
    """PyTorch's parameter names of one layer-direction, by role."""
    s = f"_l{layer}{SUFFIX[direction]}"
    tensors = {"w_ih": "weight_ih" + s, "w_hh": "weight_hh" + s}
    if spec.bias:
        tensors |= {"b_ih": "bias_ih" + s, "b_hh": "bias_hh" + s}
    if spec.proj_size:
        tensors["w_hr"] = "weight_hr" + s
    return tensors


def param_shapes(spec: RNNSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter PyTorch's module has for this spec, with PyTorch's shape (biases 1-D)."""
    gh = len(CELLS[spec.cell].gates) * spec.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(spec.num_layers):
        for d in range(spec.directions):
            n = param_names(spec, layer, d)
            shapes[n["w_ih"]] = (gh, spec.layer_input_size(layer))
            shapes[n["w_hh"]] = (gh, spec.output_size)
            if spec.bias:
                shapes[n["b_ih"]] = (gh,)
                shapes[n["b_hh"]] = (gh,)
            if spec.proj_size:
                shapes[n["w_hr"]] = (spec.proj_size, spec.hidden_size)
    return shapes


class _CellStep:
    """Emits the nodes of one cell-step: its GEMMs, and a pointwise node per equation of the cell
    (`ir/cells.py`), with a bias add in front of each projection where the spec has biases."""

    def __init__(self, b: _Builder, layer: int, d: int, step: int, time: int):
        self.b, self.layer, self.d, self.step, self.time = b, layer, d, step, time
        self.label = b.label(time)

    def tags(self, gate: str | None = None) -> dict:
        return dict(layer=self.layer, direction=self.d, step=self.step, time=self.time, gate=gate)

    def name(self, role: str, gate: str | None = None) -> str:
        return names.cell_step(self.layer, self.d, self.label, role, gate)

    def pw(self, role: str, op: str, *args: str, gate: str | None = None,
           region: Region | None = None, width: int | None = None) -> str:
        name = self.name(role, gate)
        shape = (self.b.spec.batch, width or self.b.spec.hidden_size)
        self.b.add(Node(name, "pointwise", args, (Value(name, shape, region),), op=op, role=role, **self.tags(gate)))
        return name

    def gemm(self, operand: str, a: str, w: str, gate: str, k: int) -> str:
        spec = self.b.spec
        name = self.name(f"gemm_{operand}", gate)
        g = Gemm(spec.batch, spec.hidden_size, k)
        self.b.add(Node(name, "gemm", (a, w), (Value(name, (g.m, g.n)),), gemm=g,
                        role=f"gemm_{operand}", **self.tags(gate)))
        return name

    def biased(self, operand: str, gemm_out: str, gate: str) -> str:
        bias = self.b.weight_views[(self.layer, self.d)].get(f"b_{operand}")
        return self.pw(f"bias_{operand}", "add", gemm_out, bias[gate], gate=gate) if bias else gemm_out

    def mask(self) -> str:
        """This step's rows of the mask (1 inside a sequence, 0 past its end), a (B, 1) view."""
        B, t = self.b.spec.batch, self.time
        name = self.name("mask")
        self.b.add(Node(name, "view", ("mask",), (Value(name, (B, 1), Region("mask", (t * B, (t + 1) * B), (0, 1))),),
                        role="view", **self.tags()))
        return name

    def cell(self, cell: Cell, xp: dict, hp: dict, state: dict, out: Region | None) -> tuple[dict, str]:
        """The cell's equations as pointwise nodes, in order; what the layer outputs is written into
        `out`. Returns the new state values by name ("h", and "c" for LSTM) and the output's value."""
        env = {"h_prev": state["h"], "c_prev": state.get("c")}
        for eq in cell.equations:
            if "mask" in eq.args and "mask" not in env:
                env["mask"] = self.mask()
            args = [self.biased("ih", xp[a[3:]], a[3:]) if a.startswith("xp.") else
                    self.biased("hh", hp[a[3:]], a[3:]) if a.startswith("hp.") else env[a] for a in eq.args]
            env[eq.result] = self.pw(eq.role, eq.op, *args, gate=eq.gate,
                                     region=out if eq.result == cell.emitted else None)
        return {s: env[r] for s, r in cell.outputs}, env[cell.emitted]

    def projected(self, xp: dict, hp: dict, state: dict, out: Region, masked: bool) -> tuple[dict, str]:
        """An LSTM cell-step with a projection (torch's proj_size): the cell's equations give c and
        the full h, then one GEMM h @ W_hr^T gives the projected h, the new state and the layer's
        output (written into `out`). Masked, c is kept past a sequence's end before the GEMM, and h
        after it: `h_keep = select(mask, h_proj, h_prev)`, `y = masked(mask, h_keep)` (0 past the end)."""
        spec, base = self.b.spec, CELLS[self.b.spec.cell]
        new, _ = self.cell(base, xp, hp, state, None)
        c = new["c"]
        if masked:
            c = self.pw("c_keep", "select", self.mask(), new["c"], state["c"])
        name = self.name("gemm_hr")
        g = Gemm(spec.batch, spec.proj_size, spec.hidden_size)
        w = self.b.weight_views[(self.layer, self.d)]["w_hr"][None]
        self.b.add(Node(name, "gemm", (new["h"], w), (Value(name, (g.m, g.n), None if masked else out),), gemm=g,
                        role="gemm_hr", **self.tags()))
        if not masked:
            return {"h": name, "c": c}, name
        mask = self.name("mask")
        h = self.pw("h_keep", "select", mask, name, state["h"], width=spec.proj_size)
        return {"h": h, "c": c}, self.pw("y", "masked", mask, h, region=out, width=spec.proj_size)


class _Builder:
    def __init__(self, spec: RNNSpec, time_slots: bool = False):
        self.spec, self.time_slots = spec, time_slots
        self.width = names.time_width(spec.seq_len)
        self.nodes: list[Node] = []
        self.weight_views: dict[tuple[int, int], dict[str, dict[str, str]]] = {}

    def label(self, t: int) -> str:
        return names.time_label(t, self.width, self.time_slots)

    def add(self, node: Node) -> None:
        self.nodes.append(node)

    def view(self, name: str, inputs: tuple[str, ...], region: Region, **tags) -> str:
        self.add(Node(name, "view", inputs, (Value(name, region.shape, region),), role="view", **tags))
        return name

    def params(self, layer: int, d: int) -> None:
        """Param nodes with PyTorch's tensors, and per-gate views of their rows (weights) or columns (biases)."""
        spec, h = self.spec, self.spec.hidden_size
        views: dict[str, dict[str, str]] = {}
        shapes = param_shapes(spec)
        for role, tensor in param_names(spec, layer, d).items():
            shape = shapes[tensor] if role.startswith("w") else (1, shapes[tensor][0])
            self.add(Node(tensor, "param", (), (Value(tensor, shape),), source=tensor, role=role,
                          layer=layer, direction=d))
            views[role] = {}
            if role == "w_hr":  # one matrix, no gates: the projection GEMM reads the param itself
                views[role][None] = tensor
                continue
            for gi, g in enumerate(CELLS[spec.cell].gates):
                gate_rows = (gi * h, (gi + 1) * h)
                region = (Region(tensor, gate_rows, (0, shape[1])) if role.startswith("w")
                          else Region(tensor, (0, 1), gate_rows))
                views[role][g] = self.view(f"{names.chain(layer, d)}.{role}.{g}", (tensor,), region,
                                           layer=layer, direction=d, gate=g)
        self.weight_views[(layer, d)] = views

    def initial_state(self, layer: int, d: int) -> dict[str, str]:
        spec = self.spec
        row = (layer * spec.directions + d) * spec.batch
        return {s: self.view(f"{names.chain(layer, d)}.{s}_init", (f"{s}0",),
                             Region(f"{s}0", (row, row + spec.batch), (0, spec.state_size(s))),
                             layer=layer, direction=d)
                for s in CELLS[spec.cell].states}


def source_nodes(spec: RNNSpec) -> list[Node]:
    """The graph's input `x` (T*B, input), with variable lengths the `mask` (T*B, 1: 1 where step t of
    sequence b lies inside it), and the initial states `h0` (and `c0`), (L*D*B, H; h: proj with a
    projection)."""
    T, B, LD = spec.seq_len, spec.batch, spec.num_layers * spec.directions
    mask = [Node("mask", "input", (), (Value("mask", (T * B, 1)),), source="mask", role="input")]
    return [Node("x", "input", (), (Value("x", (T * B, spec.input_size)),), source="x", role="input")] + \
        (mask if spec.variable_lengths else []) + [
        Node(f"{s}0", "state", (), (Value(f"{s}0", (LD * B, spec.state_size(s))),), source=f"{s}0", role="state")
        for s in CELLS[spec.cell].states]


def sequence_storages(spec: RNNSpec) -> dict[str, tuple[int, int]]:
    """Each layer's output sequence `y{l}`, (T*B, D*H; D*proj with a projection), written piecewise
    by the cell-steps."""
    rows, cols = spec.seq_len * spec.batch, spec.directions * spec.output_size
    return {f"y{layer}": (rows, cols) for layer in range(spec.num_layers)}


def build(spec: RNNSpec, time_slots: bool = False) -> Graph:
    """The naive unrolled graph of `spec` (no pass applied); with `time_slots`, names hold times as
    format slots (`Graph.time_slots`)."""
    b = _Builder(spec, time_slots)
    cell = cell_of(spec)
    T, B, D, L = spec.seq_len, spec.batch, spec.directions, spec.num_layers
    H = spec.output_size  # the width of h, of what W_hh multiplies and of each direction's output
    for n in source_nodes(spec):
        b.add(n)
    storages = sequence_storages(spec)
    h_at: dict[tuple[int, int, int], str] = {}  # (layer, direction, time) -> value of h
    final: dict[str, list[str]] = {s: [] for s in cell.states}
    for layer in range(L):
        k_in = spec.layer_input_size(layer)
        inputs = {}
        for t in range(T):
            rows = (t * B, (t + 1) * B)
            if layer == 0:
                inputs[t] = b.view(names.layer_input(0, b.label(t)), ("x",), Region("x", rows, (0, k_in)),
                                   layer=0, time=t)
            else:
                inputs[t] = b.view(names.layer_input(layer, b.label(t)),
                                   tuple(h_at[(layer - 1, d, t)] for d in range(D)),
                                   Region(f"y{layer - 1}", rows, (0, k_in)), layer=layer, time=t)
        for d in range(D):
            b.params(layer, d)
            w = b.weight_views[(layer, d)]
            state = b.initial_state(layer, d)
            for step in range(T):
                t = step if d == 0 else T - 1 - step
                cs = _CellStep(b, layer, d, step, t)
                xp = {g: cs.gemm("ih", inputs[t], w["w_ih"][g], g, k_in) for g in cell.gates}
                hp = {g: cs.gemm("hh", state["h"], w["w_hh"][g], g, H) for g in cell.gates}
                out = Region(f"y{layer}", (t * B, (t + 1) * B), (d * H, (d + 1) * H))
                if spec.proj_size:
                    state, h_at[(layer, d, t)] = cs.projected(xp, hp, state, out, spec.variable_lengths)
                else:
                    state, h_at[(layer, d, t)] = cs.cell(cell, xp, hp, state, out)
            for s in cell.states:
                final[s].append(state[s])
    last = L - 1
    seq = b.view("out.seq", tuple(h_at[(last, d, t)] for t in range(T) for d in range(D)),
                 Region(f"y{last}", (0, T * B), (0, D * H)), layer=last)
    b.add(Node("out", "output", (seq,), role="out"))
    for s in cell.states:
        b.add(Node(f"{s}_n", "output", tuple(final[s]), role=f"{s}_n"))
    return Graph(spec, b.nodes, storages, time_slots=time_slots)
