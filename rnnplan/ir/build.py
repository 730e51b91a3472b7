"""`build(spec)`: unroll a stacked RNN into the paper's naive DAG.

Per cell-step: one GEMM per gate per operand (LSTM 8, GRU 6, Elman 2), then separate pointwise nodes
for the bias adds, the pre-activation sum, each activation and each state-update operation. The cell
equations are PyTorch's (see `CELL_RULES`). Layer l's output at time t is written into rows
t*B:(t+1)*B and columns d*H:(d+1)*H of storage `y{l}` (d = direction), so layer l+1 reads one row
block per step and the final output is `y{L-1}` as it stands. The reverse direction processes
t = T-1 ... 0; its step index counts in processing order, its `time` attribute is the sequence index.

Node names read `L{layer}.{fwd|rev}.t{time}.{role}.{gate}`; they are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Gemm, Node, Region, Value
from rnnplan.spec import RNNSpec

DIRECTIONS = ("fwd", "rev")
SUFFIX = ("", "_reverse")


def param_names(spec: RNNSpec, layer: int, direction: int) -> dict[str, str]:
    """PyTorch's parameter names of one layer-direction, by role."""
    s = f"_l{layer}{SUFFIX[direction]}"
    names = {"w_ih": "weight_ih" + s, "w_hh": "weight_hh" + s}
    if spec.bias:
        names |= {"b_ih": "bias_ih" + s, "b_hh": "bias_hh" + s}
    return names


def param_shapes(spec: RNNSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter PyTorch's module has for this spec, with PyTorch's shape (biases 1-D)."""
    gh = len(spec.gates) * spec.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(spec.num_layers):
        for d in range(spec.directions):
            n = param_names(spec, layer, d)
            shapes[n["w_ih"]] = (gh, spec.layer_input_size(layer))
            shapes[n["w_hh"]] = (gh, spec.hidden_size)
            if spec.bias:
                shapes[n["b_ih"]] = (gh,)
                shapes[n["b_hh"]] = (gh,)
    return shapes


class _CellStep:
    """Emits the nodes of one cell-step; cell rules call `pw` to add pointwise nodes."""

    def __init__(self, b: _Builder, layer: int, d: int, step: int, time: int):
        self.b, self.layer, self.d, self.step, self.time = b, layer, d, step, time
        self.prefix = f"L{layer}.{DIRECTIONS[d]}.t{time:0{b.tw}d}"

    def tags(self, gate: str | None = None) -> dict:
        return dict(layer=self.layer, direction=self.d, step=self.step, time=self.time, gate=gate)

    def pw(self, role: str, op: str, *args: str, gate: str | None = None,
           region: Region | None = None) -> str:
        name = f"{self.prefix}.{role}" + (f".{gate}" if gate else "")
        self.b.add(Node(name, "pointwise", args, (Value(name, (self.b.spec.batch, self.b.spec.hidden_size),
                                                        region),), op=op, role=role, **self.tags(gate)))
        return name

    def gemm(self, operand: str, a: str, w: str, gate: str, k: int) -> str:
        spec = self.b.spec
        name = f"{self.prefix}.gemm_{operand}.{gate}"
        g = Gemm(spec.batch, spec.hidden_size, k)
        self.b.add(Node(name, "gemm", (a, w), (Value(name, (g.m, g.n)),), gemm=g,
                        role=f"gemm_{operand}", **self.tags(gate)))
        return name

    def biased(self, operand: str, gemm_out: str, gate: str) -> str:
        bias = self.b.weight_views[(self.layer, self.d)].get(f"b_{operand}")
        return self.pw(f"bias_{operand}", "add", gemm_out, bias[gate], gate=gate) if bias else gemm_out


# A cell rule gets the step, the per-gate input and recurrent projections (bias already added where
# the rule allows it), the previous state, and the region the new h must be written to. It returns
# the new state values by name ("h", and "c" for LSTM).
CellRule = Callable[[_CellStep, dict, dict, dict, Region], dict]


def _lstm(cs: _CellStep, xp: dict, hp: dict, state: dict, out: Region) -> dict:
    act = {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid"}
    gate = {}
    for g in "ifgo":
        pre = cs.pw("pre", "add", cs.biased("ih", xp[g], g), cs.biased("hh", hp[g], g), gate=g)
        gate[g] = cs.pw("act", act[g], pre, gate=g)
    fc = cs.pw("f_c", "mul", gate["f"], state["c"])
    ig = cs.pw("i_g", "mul", gate["i"], gate["g"])
    c = cs.pw("c", "add", fc, ig)
    tc = cs.pw("tanh_c", "tanh", c)
    return {"h": cs.pw("h", "mul", gate["o"], tc, region=out), "c": c}


def _gru(cs: _CellStep, xp: dict, hp: dict, state: dict, out: Region) -> dict:
    gate = {}
    for g in "rz":
        pre = cs.pw("pre", "add", cs.biased("ih", xp[g], g), cs.biased("hh", hp[g], g), gate=g)
        gate[g] = cs.pw("act", "sigmoid", pre, gate=g)
    # PyTorch's GRU applies r to the recurrent projection *with* its bias: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)).
    r_hn = cs.pw("r_hn", "mul", gate["r"], cs.biased("hh", hp["n"], "n"), gate="n")
    pre_n = cs.pw("pre", "add", cs.biased("ih", xp["n"], "n"), r_hn, gate="n")
    n = cs.pw("act", "tanh", pre_n, gate="n")
    one_minus_z = cs.pw("one_minus_z", "one_minus", gate["z"])
    keep = cs.pw("z_h", "mul", gate["z"], state["h"])
    new = cs.pw("zn", "mul", one_minus_z, n)
    return {"h": cs.pw("h", "add", new, keep, region=out)}


def _elman(activation: str) -> CellRule:
    def rule(cs: _CellStep, xp: dict, hp: dict, state: dict, out: Region) -> dict:
        pre = cs.pw("pre", "add", cs.biased("ih", xp["h"], "h"), cs.biased("hh", hp["h"], "h"))
        return {"h": cs.pw("h", activation, pre, region=out)}
    return rule


CELL_RULES: dict[str, CellRule] = {"lstm": _lstm, "gru": _gru,
                                   "rnn_tanh": _elman("tanh"), "rnn_relu": _elman("relu")}


class _Builder:
    def __init__(self, spec: RNNSpec):
        self.spec = spec
        self.tw = len(str(spec.seq_len - 1))
        self.nodes: list[Node] = []
        self.weight_views: dict[tuple[int, int], dict[str, dict[str, str]]] = {}

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
            for gi, g in enumerate(spec.gates):
                gate_rows = (gi * h, (gi + 1) * h)
                region = (Region(tensor, gate_rows, (0, shape[1])) if role.startswith("w")
                          else Region(tensor, (0, 1), gate_rows))
                views[role][g] = self.view(f"L{layer}.{DIRECTIONS[d]}.{role}.{g}", (tensor,), region,
                                           layer=layer, direction=d, gate=g)
        self.weight_views[(layer, d)] = views

    def initial_state(self, layer: int, d: int) -> dict[str, str]:
        spec = self.spec
        row = (layer * spec.directions + d) * spec.batch
        return {s: self.view(f"L{layer}.{DIRECTIONS[d]}.{s}_init", (f"{s}0",),
                             Region(f"{s}0", (row, row + spec.batch), (0, spec.hidden_size)),
                             layer=layer, direction=d)
                for s in spec.state_names}


def source_nodes(spec: RNNSpec) -> list[Node]:
    """The graph's input `x` (T*B, input) and initial states `h0` (and `c0`), (L*D*B, H)."""
    T, B, H, LD = spec.seq_len, spec.batch, spec.hidden_size, spec.num_layers * spec.directions
    return [Node("x", "input", (), (Value("x", (T * B, spec.input_size)),), source="x", role="input")] + [
        Node(f"{s}0", "state", (), (Value(f"{s}0", (LD * B, H)),), source=f"{s}0", role="state")
        for s in spec.state_names]


def sequence_storages(spec: RNNSpec) -> dict[str, tuple[int, int]]:
    """Each layer's output sequence `y{l}`, (T*B, D*H), written piecewise by the cell-steps."""
    rows, cols = spec.seq_len * spec.batch, spec.directions * spec.hidden_size
    return {f"y{layer}": (rows, cols) for layer in range(spec.num_layers)}


def build(spec: RNNSpec) -> Graph:
    """The naive unrolled graph of `spec` (no pass applied)."""
    b = _Builder(spec)
    T, B, H, D, L = spec.seq_len, spec.batch, spec.hidden_size, spec.directions, spec.num_layers
    for n in source_nodes(spec):
        b.add(n)
    storages = sequence_storages(spec)
    h_at: dict[tuple[int, int, int], str] = {}  # (layer, direction, time) -> value of h
    rule = CELL_RULES[spec.cell]
    final: dict[str, list[str]] = {s: [] for s in spec.state_names}
    for layer in range(L):
        k_in = spec.layer_input_size(layer)
        inputs = {}
        for t in range(T):
            rows = (t * B, (t + 1) * B)
            if layer == 0:
                inputs[t] = b.view(f"L0.x.t{t:0{b.tw}d}", ("x",), Region("x", rows, (0, k_in)),
                                   layer=0, time=t)
            else:
                inputs[t] = b.view(f"L{layer}.in.t{t:0{b.tw}d}",
                                   tuple(h_at[(layer - 1, d, t)] for d in range(D)),
                                   Region(f"y{layer - 1}", rows, (0, k_in)), layer=layer, time=t)
        for d in range(D):
            b.params(layer, d)
            w = b.weight_views[(layer, d)]
            state = b.initial_state(layer, d)
            for step in range(T):
                t = step if d == 0 else T - 1 - step
                cs = _CellStep(b, layer, d, step, t)
                xp = {g: cs.gemm("ih", inputs[t], w["w_ih"][g], g, k_in) for g in spec.gates}
                hp = {g: cs.gemm("hh", state["h"], w["w_hh"][g], g, H) for g in spec.gates}
                out = Region(f"y{layer}", (t * B, (t + 1) * B), (d * H, (d + 1) * H))
                state = rule(cs, xp, hp, state, out)
                h_at[(layer, d, t)] = state["h"]
            for s in spec.state_names:
                final[s].append(state[s])
    last = L - 1
    seq = b.view("out.seq", tuple(h_at[(last, d, t)] for t in range(T) for d in range(D)),
                 Region(f"y{last}", (0, T * B), (0, D * H)), layer=last)
    b.add(Node("out", "output", (seq,), role="out"))
    for s in spec.state_names:
        b.add(Node(f"{s}_n", "output", tuple(final[s]), role=f"{s}_n"))
    return Graph(spec, b.nodes, storages)
