"""Lowering `persistent` (PlanOptions.lowering): the whole recurrence becomes one `recurrent` node,
which a GPU runs as one persistent kernel: each block holds its slice of the recurrent weights
on-chip (shared memory or registers) for the whole sequence, and blocks hand h to each other
through global memory (tagged words or per-step counters, see backends/persistent_kernel.py and
persistent_mma.py), so layers still overlap in a wavefront.

Needs: a graph from `ir.build`, after any subset of passes (it rebuilds the recurrence from the
spec; from the incoming graph it keeps only the params, so `build_plan` hands it a one-step graph).
Guarantees: layer 0's input projection stays a cuBLAS GEMM over all steps per direction (reading
the pre-transposed weight if `pretranspose` made one); everything recurrent, including the input
projections of layers above the first, is the `recurrent` node; outputs read its results through
views, so the plan's interface is unchanged.
`choose_recurrence` picks the kernel: FFMA dot products (fp32 math, and any storage at batch <=
FFMA_MAX_BATCH) or tensor-core mma (fp16 storage, or fp32 storage with `math="tf32"`; batch in tiles
sized to fit shared memory).
`choose_lowering` resolves `lowering="auto"` (the default): persistent where the weights fit the
device (`PlanOptions.device`, else the local GPU) on-chip, it supports cooperative launch, and the
batch is at most AUTO_MAX_BATCH for the dtype, else graph, with the reason either way (the plan
records both). Without a GPU, or with a chosen subset of passes, auto plans graph.
Both kernels hold their weights in registers where they fit (`REGISTER_BUDGET`,
`FFMA_REGISTER_BUDGET` in ir/recurrence.py), else in shared memory; the Recurrence records
`PlanOptions.math`, with which the FFMA kernel's cell uses fast exponentials under tf32.
Does not (yet): hold weights partly in registers and partly in shared memory (so the paper configuration
in fp32 storage, 28 MiB of weights, does not fit); compute the upper layers' input projections with
cuBLAS (the kernel holds every SM for the whole sequence, so a GEMM beside it would run only after it:
they are computed inside it, which keeps the wavefront across layers).
"""

from __future__ import annotations

import functools
from math import prod

from rnnplan.ir.build import DIRECTIONS, param_shapes, sequence_storages, source_nodes
from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Gemm, Node, Region, Value
from rnnplan.ir.recurrence import Recurrence
from rnnplan.spec import H200, DeviceShape, RNNSpec

DEFAULT_DEVICE = H200
# Measured on an H200 (BENCHMARKS.md, persistent lowering, third round): the FFMA kernel (fp32) beats
# the graph lowering at every batch measured, up to 8 (LSTM 1x1024 B8 0.97 against 1.64 ms, the
# closest); the tensor-core kernel (fp16) too, up to 64 (paper configuration 1.18 against 1.74 ms,
# GRU 4x512 1.10 against 1.33), and with tf32 operands up to 8, the largest measured (LSTM 1x1024 B8
# 0.52 against 1.28 ms). Larger batches are not measured.
AUTO_MAX_BATCH = {"float32": 8, "float16": 64}
# At batch 1-2 the FFMA kernel's tagged hand-off (one L2 round trip, no counter) beats the tensor-core
# kernel, or ties it: at batch 1 in every row measured with tf32 operands (LSTM 2x256: 0.227 against
# 0.266 ms) and with fp16 (0.196 against 0.243; LSTM 1x1024 0.266 against 0.285, RNN 2x512 0.235
# against 0.245). From batch 4 the tensor-core kernel wins everywhere (BENCHMARKS.md, third round).
FFMA_MAX_BATCH = 2


@functools.cache
def local_device() -> DeviceShape | None:
    """The first CUDA device CuPy sees, described once per process; None where there is none."""
    from rnnplan.backends import (  # CuPy only when asked
        cupy_unavailable_reason,
        describe_device,
    )

    return describe_device() if cupy_unavailable_reason() is None else None


def planning_device(options) -> DeviceShape | None:
    """The GPU a plan is sized for: the one described, else the local one, else, for an explicit
    persistent lowering, DEFAULT_DEVICE; None (plan graph) for auto without any GPU."""
    if options is not None and options.device is not None:
        return options.device
    explicit = options is None or options.lowering == "persistent"
    return local_device() or (DEFAULT_DEVICE if explicit else None)


def choose_lowering(spec: RNNSpec, options) -> tuple[str, str]:
    """("graph" | "persistent", why) for the options' lowering and device. "auto" without a device
    reads the local GPU; with a subset of passes it plans graph (a pass study keeps its kernels)."""
    if options.lowering == "graph":
        return "graph", "requested"
    if options.lowering == "auto" and options.passes is not None:
        return "graph", "auto: a subset of passes was chosen, so the plan keeps one kernel per GEMM and cell-step"
    device = planning_device(options)
    if device is None:
        return "graph", "auto: no CUDA device here (plan for one with PlanOptions(device=...))"
    rec, why = choose_recurrence(spec, device, options.math)
    if options.lowering == "persistent":
        if rec is None:
            raise ValueError(f"lowering='persistent' does not fit: {why}")
        return "persistent", why
    if rec is None:
        return "graph", f"auto: {why}"
    if not device.cooperative_launch:
        return "graph", f"auto: {device.name} has no cooperative launch"
    limit = AUTO_MAX_BATCH[spec.dtype]
    if spec.batch > limit:
        return "graph", f"auto: batch {spec.batch} > {limit}, where the persistent kernel loses ({spec.dtype}); {why}"
    return "persistent", f"auto: {why}"


def recurrence_of(spec: RNNSpec, units: int, batch_tile: int = 0, registers: bool = False,
                  math: str = "fp32") -> Recurrence:
    # Tensor cores with fp32 storage are tf32 math whatever the caller says.
    math = "tf32" if batch_tile and spec.dtype == "float32" else math
    return Recurrence(spec.cell, spec.num_layers, spec.directions, spec.seq_len, spec.batch, spec.hidden_size,
                      spec.input_size, spec.bias, spec.dtype, units, batch_tile, registers, math)


def tensor_core_recurrence(spec: RNNSpec, units: int, device: DeviceShape, registers: bool) -> Recurrence | None:
    """The tensor-core kernel with the widest batch tile (64 rows down to 8) that fits shared memory
    (and, with weights in registers, the register budget); None where even 8 rows do not fit registers."""
    def fits(r: Recurrence) -> bool:
        return r.shared_memory_bytes <= device.smem_per_block and (not registers or r.registers_fit)

    tile = min(64, -(-spec.batch // 8) * 8)
    while tile > 8 and not fits(recurrence_of(spec, units, tile, registers)):
        tile = max(8, tile // 16 * 8)
    r = recurrence_of(spec, units, tile, registers)
    return r if not registers or r.registers_fit else None


def ffma_recurrence(spec: RNNSpec, units: int, math: str = "fp32") -> Recurrence:
    """The FFMA kernel for `units` per block, with its weights in registers where they fit the
    register budget (no shared-memory reads of weights at each step), else in shared memory."""
    held = recurrence_of(spec, units, registers=True, math=math)
    return held if held.registers_fit else recurrence_of(spec, units, math=math)


def _fitting(spec: RNNSpec, units: int, device: DeviceShape, math: str) -> Recurrence:
    """The recurrence for `units` per block: fp32 math, and any storage up to FFMA_MAX_BATCH where it
    fits, run the FFMA kernel (`ffma_recurrence`); the rest (fp16 storage, or fp32 storage with tf32
    math) runs the tensor-core kernel, with the weights in registers where they fit the register
    budget (no shared-memory reads of weights at each step, and room for the widest batch tile), else
    in shared memory, else (tf32 only) the FFMA kernel, which needs no staging of whole batch tiles."""
    ffma = ffma_recurrence(spec, units, math)
    ffma_fits = ffma.shared_memory_bytes <= device.smem_per_block
    if (spec.dtype == "float32" and math == "fp32") or (spec.batch <= FFMA_MAX_BATCH and ffma_fits):
        return ffma
    tensor_cores = (tensor_core_recurrence(spec, units, device, registers=True)
                    or tensor_core_recurrence(spec, units, device, registers=False))
    if spec.dtype == "float32" and ffma_fits and tensor_cores.shared_memory_bytes > device.smem_per_block:
        return ffma
    return tensor_cores


def choose_recurrence(spec: RNNSpec, device: DeviceShape = DEFAULT_DEVICE,
                      math: str = "fp32") -> tuple[Recurrence | None, str]:
    """The persistent kernel's parameters for `spec` on `device` with `math` (PlanOptions.math: with
    fp32 storage, "tf32" allows the tensor-core kernel) (hidden units per block such that all blocks
    fill the device once, and the kernel) and why, or None and why it does not fit."""
    chains = spec.num_layers * spec.directions
    per_chain = max(1, device.sms // chains)
    trial = _fitting(spec, -(-spec.hidden_size // per_chain), device, math)
    need = trial.shared_memory_bytes
    mib = sum(prod(s) for n, s in param_shapes(spec).items()
              if n.startswith("weight_hh") or (n.startswith("weight_ih") and not n.startswith("weight_ih_l0")))
    mib *= (2 if spec.dtype == "float16" else 4) / 2**20
    blocks = trial.blocks
    if chains > device.sms:
        return None, f"{chains} layer-directions need more blocks than the {device.sms} SMs of {device.name}"
    if need > device.smem_per_block:
        return None, (f"recurrent weights {mib:.1f} MiB need {need / 1024:.0f} KiB of shared memory per block "
                      f"over {blocks} blocks; {device.name} has {device.smem_per_block / 1024:.0f} KiB")
    held = ", weights in registers" if trial.weights_in_registers else ""
    operands = "tf32" if spec.dtype == "float32" else "fp16"
    math_used = (f"tensor cores ({operands}), batch tiles of {trial.batch_tile}{held}" if trial.batch_tile
                 else f"FFMA{held}")
    regs = f" {trial.weight_registers} registers a thread +" if trial.weights_in_registers else ""
    return trial, (f"recurrent weights {mib:.1f} MiB fit on-chip: {blocks} blocks x{regs} {need / 1024:.0f} KiB "
                   f"shared memory on {device.name} ({math_used})")


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
    G = len(spec.gates)
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
                name = f"L0.{DIRECTIONS[d]}.xproj"
                g = Gemm(T * B, G * H, spec.input_size, layout)
                nodes.append(Node(name, "gemm", ("x", w), (Value(name, (g.m, g.n)),), gemm=g, role="gemm_ih",
                                  layer=0, direction=d))
                inputs.append(name)
            else:
                inputs.append(param("weight_ih" + sfx))
            inputs.append(param("weight_hh" + sfx))
            if spec.bias:
                inputs += [param("bias_ih" + sfx), param("bias_hh" + sfx)]
    inputs += [f"{s}0" for s in spec.state_names]
    seqs = [Value(f"y{layer}.seq", (T * B, D * H), Region(f"y{layer}", (0, T * B), (0, D * H))) for layer in range(L)]
    outs = seqs + ([Value("c_n.all", (L * D * B, H))] if spec.cell == "lstm" else [])
    nodes.append(Node("recurrence", "recurrent", tuple(inputs), tuple(outs), recurrence=rec, role="recurrence",
                      extra=(("reason", reason),)))
    last = f"y{L - 1}"
    nodes.append(Node("out.seq", "view", (f"{last}.seq",),
                      (Value("out.seq", (T * B, D * H), Region(last, (0, T * B), (0, D * H))),), role="view"))
    nodes.append(Node("out", "output", ("out.seq",), role="out"))
    finals = {s: [] for s in spec.state_names}
    for ci, (layer, d) in enumerate(rec.chains):
        t = T - 1 if d == 0 else 0
        h = f"L{layer}.{DIRECTIONS[d]}.h_n"
        nodes.append(Node(h, "view", (f"y{layer}.seq",), (Value(h, (B, H), Region(
            f"y{layer}", (t * B, (t + 1) * B), (d * H, (d + 1) * H))),), role="view", layer=layer, direction=d))
        finals["h"].append(h)
        if spec.cell == "lstm":
            c = f"L{layer}.{DIRECTIONS[d]}.c_n"
            nodes.append(Node(c, "view", ("c_n.all",), (Value(c, (B, H), Region("c_n.all", (ci * B, (ci + 1) * B),
                                                                                   (0, H))),),
                              role="view", layer=layer, direction=d))
            finals["c"].append(c)
    for s, names in finals.items():
        nodes.append(Node(f"{s}_n", "output", tuple(names), role=f"{s}_n"))
    return Graph(spec, nodes, sequence_storages(spec), graph.passes + ("persistent_recurrence",))
