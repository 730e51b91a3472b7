"""Lowering `persistent` (PlanOptions.lowering): the whole recurrence becomes one `recurrent` node,
which a GPU runs as one persistent kernel (`rnnplan.persistent`): each block holds its slice of the
recurrent weights on-chip (shared memory or registers) for the whole sequence, and blocks hand h to
each other through global memory (tagged words or per-step counters, persistent/cuda/), so layers
still overlap in a wavefront.

Needs: a graph from `ir.build`, after any subset of passes (it rebuilds the recurrence from the
spec; from the incoming graph it keeps only the params, so `build_plan` hands it a one-step graph).
Guarantees: layer 0's input projection stays a cuBLAS GEMM over all steps per direction (reading
the pre-transposed weight if `pretranspose` made one); everything recurrent, including the input
projections of layers above the first, is the `recurrent` node; outputs read its results through
views, so the plan's interface is unchanged. With variable lengths the kernel reads the mask and runs the
masked cell (`Cell.masked`), and writes h_n apart (y is 0 past a sequence's end). With LSTM
projections (`proj_size`) each chain's `weight_hr` is an operand after its biases, and h (h0, y, h_n)
is proj_size wide.
Which kernel, and whether `lowering="auto"` takes it, is `rnnplan.persistent.select`'s decision
(`choose_lowering`), made for the device the options describe; this module only builds the node.
Does not (yet): hold weights partly in registers and partly in shared memory (so the paper configuration
in fp32 storage, 28 MiB of weights, does not fit); compute the upper layers' input projections with
cuBLAS (the kernel holds every SM for the whole sequence, so a GEMM beside it would run only after it:
they are computed inside it, which keeps the wavefront across layers).
"""

from __future__ import annotations

import rnnplan.ir.names as names
from rnnplan.ir.build import param_shapes, sequence_storages, source_nodes
from rnnplan.ir.cells import CELLS
from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Gemm, Node, Region, Value
from rnnplan.ir.recurrence import NETWORK_FIELDS, Recurrence
from rnnplan.lowering.plan import Plan
from rnnplan.lowering.registry import register
from rnnplan.persistent.select import DEFAULT_DEVICE, choose_recurrence, planning_device
from rnnplan.spec import RNNSpec


def persistent_recurrence(graph: Graph, options=None, spec: RNNSpec | None = None) -> Graph:
    """The graph's recurrence as one `recurrent` node (see the module docstring). Of `graph` only the
    params are read, so `spec` (default: the graph's) may be a longer sequence of the same network: a
    graph of one step after the same passes then gives the same result at no cost per step."""
    spec = spec or graph.spec
    math_mode = options.math if options is not None else "fp32"
    rec, reason = choose_recurrence(spec, planning_device(options) or DEFAULT_DEVICE, math_mode)
    if rec is None:
        raise ValueError(f"lowering='persistent' does not fit: {reason}")
    T, B, H, D, L = spec.seq_len, spec.batch, spec.hidden_size, spec.directions, spec.num_layers
    R = spec.output_size  # h's width: proj_size with projections (c stays H wide)
    cell = CELLS[spec.cell]
    G = len(cell.gates)
    shapes = param_shapes(spec)
    nodes = source_nodes(spec)
    params = {(n.source, n.transform): n for n in graph.nodes.values() if n.kind == "param"}

    def param(source: str, transform: str = "none") -> str:
        if (source, transform) not in params:
            shape = shapes[source] if len(shapes[source]) == 2 else (1, shapes[source][0])
            params[(source, transform)] = Node(source, "param", (), (Value(source, shape),), source=source,
                                               role="param")
        node = params[(source, transform)]
        if node not in nodes:
            nodes.append(node)
        return node.outputs[0].name

    inputs = []
    for layer in range(L):
        for d in range(D):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            if layer == 0:
                t_param = ("weight_ih" + sfx, "transpose")
                layout = "kn" if t_param in params else "nk"
                w = param(*t_param) if layout == "kn" else param("weight_ih" + sfx)
                name = f"{names.chain(0, d)}.xproj"
                g = Gemm(T * B, G * H, spec.input_size, layout)
                nodes.append(Node(name, "gemm", ("x", w), (Value(name, (g.m, g.n)),), gemm=g, role="gemm_ih",
                                  layer=0, direction=d))
                inputs.append(name)
            else:
                inputs.append(param("weight_ih" + sfx))
            inputs.append(param("weight_hh" + sfx))
            if spec.bias:
                inputs += [param("bias_ih" + sfx), param("bias_hh" + sfx)]
            if spec.proj_size:
                inputs.append(param("weight_hr" + sfx))
    inputs += [f"{s}0" for s in cell.states] + (["mask"] if spec.variable_lengths else [])
    layers = range(L - 1, L) if spec.variable_lengths else range(L)  # which y the kernel writes (operand_shapes)
    seqs = [Value(f"y{layer}.seq", (T * B, D * R), Region(f"y{layer}", (0, T * B), (0, D * R))) for layer in layers]
    outs = seqs + ([Value("c_n.all", (L * D * B, H))] if "c" in cell.states else []) + \
        ([Value("h_n.all", (L * D * B, R))] if spec.variable_lengths else [])
    nodes.append(Node("recurrence", "recurrent", tuple(inputs), tuple(outs), recurrence=rec, role="recurrence",
                      extra=(("reason", reason),)))
    last = f"y{L - 1}"
    nodes.append(Node("out.seq", "view", (f"{last}.seq",),
                      (Value("out.seq", (T * B, D * R), Region(last, (0, T * B), (0, D * R))),), role="view"))
    nodes.append(Node("out", "output", ("out.seq",), role="out"))
    finals = {s: [] for s in cell.states}
    for ci, (layer, d) in enumerate(rec.chains):
        t = T - 1 if d == 0 else 0
        h = f"{names.chain(layer, d)}.h_n"
        if spec.variable_lengths:  # y is 0 past a sequence's end: the kernel writes h_n apart
            source, region = "h_n.all", Region("h_n.all", (ci * B, (ci + 1) * B), (0, R))
        else:
            source, region = f"y{layer}.seq", Region(f"y{layer}", (t * B, (t + 1) * B), (d * R, (d + 1) * R))
        nodes.append(Node(h, "view", (source,), (Value(h, (B, R), region),), role="view", layer=layer, direction=d))
        finals["h"].append(h)
        if "c" in cell.states:
            c = f"{names.chain(layer, d)}.c_n"
            nodes.append(Node(c, "view", ("c_n.all",), (Value(c, (B, H), Region("c_n.all", (ci * B, (ci + 1) * B),
                                                                                   (0, H))),),
                              role="view", layer=layer, direction=d))
            finals["c"].append(c)
    for s, values in finals.items():
        nodes.append(Node(f"{s}_n", "output", tuple(values), role=f"{s}_n"))
    written = {f"y{layer}" for layer in layers}
    storages = {name: shape for name, shape in sequence_storages(spec).items() if name in written}
    return Graph(spec, nodes, storages, graph.passes + ("persistent_recurrence",))


def with_recurrence(plan: Plan, r: Recurrence) -> Plan:
    """`plan` with its recurrent step run by the kernel `r` describes (a persistent kernel the planner
    did not pick, for tests and benchmarks that check or time the alternatives). `r` must describe the
    plan's own network (only the kernel's choices may differ), so the plan computes the same function
    and counts as planned (`lowering/registry.py`)."""
    current = next((s.recurrence for s in plan.steps if s.recurrence is not None), None)
    if current is None:
        raise ValueError("with_recurrence needs a plan of the persistent lowering (it has no recurrent step)")
    other = [f for f in NETWORK_FIELDS if getattr(r, f) != getattr(current, f)]
    if other:
        raise ValueError(f"with_recurrence: the kernel describes another network ({', '.join(other)} differ)")
    steps = tuple(s.model_copy(update={"recurrence": r}) if s.recurrence else s for s in plan.steps)
    return register(plan.model_copy(update={"steps": steps}))
