"""Choosing the persistent kernel for a spec and a device, and whether `lowering="auto"` takes it.

`choose_recurrence` picks the kernel: at batch 3-8 and up to 2 layers, where a chain's blocks fit one
thread-block cluster, the tensor-core kernel with the cluster hand-off (`cluster_recurrence`); else
FFMA dot products (fp32 math, and any storage at batch <= FFMA_MAX_BATCH) or tensor-core mma (fp16 storage, or fp32 storage with `math="tf32"`; batch in tiles
sized to fit shared memory), with its weights in registers where they fit the register budget, else
in shared memory; hidden units per block such that all blocks fill the device once. LSTM
projections take the tensor-core kernel at every batch (PROJ_FFMA_MAX_BATCH = 0) where the precision
allows it.
`choose_lowering` resolves the lowering: persistent where the kernel fits the device and the batch
is at most AUTO_MAX_BATCH for the dtype (TF32_AUTO_MAX_BATCH with tf32 operands: where it measured
faster, benchmarks/crossover.py), else graph, with the reason
either way. The device arrives as data (`PlanOptions.device`); nothing here probes hardware.
"""

from __future__ import annotations

from math import prod

from rnnplan.ir.build import param_shapes
from rnnplan.ir.recurrence import Recurrence, network_of
from rnnplan.persistent.kernel import kernel_of
from rnnplan.precision import Precision
from rnnplan.spec import H200, DeviceShape, PlanOptions, RNNSpec

# What `lowering="persistent"` sizes its blocks for when no device is described.
DEFAULT_DEVICE = H200
# What the NumPy backend plans the recurrence for (rnnplan.compile on CPU tensors): it runs a recurrent
# step as a loop over the sequence on the host, where blocks and shared memory do not apply, so every
# network fits; its plan is made from one step, in milliseconds for any length.
HOST = DeviceShape(name="the host (NumPy backend)", sms=4096, smem_per_block=2**40)
# Measured on an H200 (BENCHMARKS.md, persistent lowering, third round): the FFMA kernel (fp32) beats
# the graph lowering at every batch measured, up to 8 (LSTM 1x1024 B8 0.97 against 1.64 ms, the
# closest); the tensor-core kernel (fp16) too, up to 64 (paper configuration 1.18 against 1.74 ms,
# GRU 4x512 1.10 against 1.33). Re-measured up to batch 256 (tenth session, benchmarks/crossover.py,
# LSTM 1x512 / 4x512 and GRU 4x512 T100): fp16 wins up to 64 and loses from 96 in all three (LSTM 4x512
# B64 1.17 against 1.75 ms, B96 2.10 against 1.66); with tf32 operands (fp32 storage, math="tf32", the
# tensor-core kernel) likewise up to 64 (LSTM 1x512 B16 0.49 against 1.01, B64 0.95 against 1.28, B96
# 1.39 against 1.30), where the limit was 8, the largest measured before. Strict fp32 (the FFMA
# kernel): measured up to 8 only.
# bf16 runs the fp16 kernels with bf16 mma operands (Hopper runs both at one rate): fp16's limit.
AUTO_MAX_BATCH = {"float32": 8, "float16": 64, "bfloat16": 64}
TF32_AUTO_MAX_BATCH = 64  # fp32 storage with math="tf32"
# At batch 1-2 the FFMA kernel's tagged hand-off (one L2 round trip, no counter) beats the tensor-core
# kernel, or ties it: at batch 1 in every row measured with tf32 operands (LSTM 2x256: 0.227 against
# 0.266 ms) and with fp16 (0.196 against 0.243; LSTM 1x1024 0.266 against 0.285, RNN 2x512 0.235
# against 0.245). From batch 4 the tensor-core kernel wins everywhere (BENCHMARKS.md, third round).
FFMA_MAX_BATCH = 2
# Projections, measured on an H200 (LSTM 3x1024 proj 256 T100 fp16, 32 units a block), persistent against
# the graph lowering: the FFMA kernel at batch 1 0.67 against 1.31 ms, batch 4 0.99 against 1.34 (at batch
# 8 it lost, 1.56 against 1.49); the tensor-core kernel at batch 8 0.87 against 1.49, batch 16 1.33
# against 1.74 (BENCHMARKS.md), and with its projection on mma (sixth session) 0.62 against 1.45 and
# 0.81 against 1.78. Not measured above 16, so auto stops there.
PROJ_AUTO_MAX_BATCH = 16
# With projections the tensor-core kernel wherever the precision takes tensor cores, batch 1 too: it
# measured faster than the FFMA kernel at batch 1 (0.58 against 0.68 ms, fp16; bf16 0.55 against 0.69),
# 2 (0.60 against 0.84) and 4 (0.70 against 1.01), LSTM 3x1024 proj 256 T100 (BENCHMARKS.md, sixth
# session), though at batch 1 seven of an n-tile's 8 batch rows are padding (not profiled apart).
PROJ_FFMA_MAX_BATCH = 0
# The cluster hand-off (a chain's blocks in one thread-block cluster, h through distributed shared
# memory) where it fits, above FFMA_MAX_BATCH, up to CLUSTER_MAX_BATCH and CLUSTER_MAX_LAYERS. Measured
# on an H200 (BENCHMARKS.md, twelfth session, `benchmarks/cluster_bench.py --any-shape`, Executor.run,
# against the hand-off through global memory), with the st.async / mbarrier hand-off: faster at LSTM
# 1x512 B8 (0.221 against 0.303 ms fp16, 0.221 / 0.307 bf16), B16 (0.319 / 0.396, 0.321 / 0.406),
# 1x256 B32 (0.370 / 0.393 fp16, tf32 even), 2x256 B8, 4x256 B8 (0.291 / 0.321 fp16, 0.330 / 0.344
# tf32), GRU 1x512 B8 and 2x256 B4, bidirectional 1x512 B8; slower at LSTM 1x512 B32 (0.647 / 0.488 fp16,
# 0.578 / 0.457 bf16: a chain's 16 blocks do 8 times the mma work of 128), so batch 32 stays out though
# 1x256 B32 gained. (With the cluster barrier before it, batch 16 and 4 layers were slower: 8 and 2.)
CLUSTER_MAX_BATCH = 16
CLUSTER_MAX_LAYERS = 4


def planning_device(options: PlanOptions | None) -> DeviceShape | None:
    """The GPU a plan is sized for: the one described, else, for an explicit persistent lowering,
    DEFAULT_DEVICE; None (plan graph) for auto without a device."""
    if options is not None and options.device is not None:
        return options.device
    return DEFAULT_DEVICE if options is None or options.lowering == "persistent" else None


def choose_lowering(spec: RNNSpec, options: PlanOptions) -> tuple[str, str]:
    """("graph" | "persistent", why) for the options' lowering and device. "auto" with a subset of
    passes plans graph (a pass study keeps its kernels)."""
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
    tf32 = spec.dtype == "float32" and options.math == "tf32"
    limit = PROJ_AUTO_MAX_BATCH if spec.proj_size else TF32_AUTO_MAX_BATCH if tf32 else AUTO_MAX_BATCH[spec.dtype]
    if spec.batch > limit:
        kind = "tf32" if tf32 else spec.dtype
        return "graph", f"auto: batch {spec.batch} > {limit}, where the persistent kernel loses ({kind}); {why}"
    return "persistent", f"auto: {why}"


def recurrence_of(spec: RNNSpec, units: int, batch_tile: int = 0, registers: bool = False,
                  math: str = "fp32", cluster: bool = False) -> Recurrence:
    precision = Precision.of(spec.dtype, math)
    if batch_tile:
        precision = precision.on_tensor_cores()
    return Recurrence(**network_of(spec), units_per_block=units, batch_tile=batch_tile, weights_in_registers=registers,
                      math=precision.math, cluster=cluster)


def tensor_core_recurrence(spec: RNNSpec, units: int, device: DeviceShape, registers: bool,
                           cluster: bool = False) -> Recurrence | None:
    """The tensor-core kernel with the widest batch tile (64 rows down to 8) that fits shared memory
    (and, with weights in registers, the register budget); None where even 8 rows do not fit registers."""
    def fits(r: Recurrence) -> bool:
        k = kernel_of(r)
        return k.shared_memory_bytes <= device.smem_per_block and (not registers or k.registers_fit)

    tile = min(64, -(-spec.batch // 8) * 8)
    while tile > 8 and not fits(recurrence_of(spec, units, tile, registers, cluster=cluster)):
        tile = max(8, tile // 16 * 8)
    r = recurrence_of(spec, units, tile, registers, cluster=cluster)
    return r if not registers or kernel_of(r).registers_fit else None


def cluster_recurrence(spec: RNNSpec, device: DeviceShape, math: str = "fp32") -> Recurrence | None:
    """The tensor-core kernel with each chain's blocks in one thread-block cluster (h handed over
    through distributed shared memory, `PersistentKernel.cluster_refusal`), with as many blocks a
    chain as a cluster holds and whose units divide hidden in 16-byte runs, weights in registers
    where they fit, else in shared memory; None where no such kernel fits `device`, or outside the
    batches and layers where it measured faster (FFMA_MAX_BATCH < batch <= CLUSTER_MAX_BATCH, at most
    CLUSTER_MAX_LAYERS layers)."""
    if (not device.cluster_blocks or spec.proj_size or not FFMA_MAX_BATCH < spec.batch <= CLUSTER_MAX_BATCH
            or spec.num_layers > CLUSTER_MAX_LAYERS or not Precision.of(spec.dtype, math).tensor_cores):
        return None
    for units in cluster_units(spec, device):
        for registers in (True, False):
            r = tensor_core_recurrence(spec, units, device, registers, cluster=True)
            if r is not None and kernel_of(r).fit(device).ok:
                return r
    return None


def cluster_units(spec: RNNSpec, device: DeviceShape) -> list[int]:
    """Hidden units a block for the cluster hand-off, most blocks a chain first: those that divide
    hidden into at most `device.cluster_blocks` blocks."""
    H = spec.hidden_size
    return [H // blocks for blocks in range(min(device.cluster_blocks, H), 0, -1) if H % blocks == 0]


def ffma_recurrence(spec: RNNSpec, units: int, math: str = "fp32") -> Recurrence:
    """The FFMA kernel for `units` per block, with its weights in registers where they fit the
    register budget (no shared-memory reads of weights at each step), else in shared memory."""
    held = recurrence_of(spec, units, registers=True, math=math)
    return held if kernel_of(held).registers_fit else recurrence_of(spec, units, math=math)


def _fitting(spec: RNNSpec, units: int, device: DeviceShape, math: str) -> Recurrence:
    """The recurrence for `units` per block: without tensor cores (fp32 math), and in any precision up
    to FFMA_MAX_BATCH where it fits, the FFMA kernel (`ffma_recurrence`); the rest (fp16 storage, or
    fp32 storage with tf32 math) the tensor-core kernel, with the weights in registers where they fit
    the register budget (no shared-memory reads of weights at each step, and room for the widest batch
    tile), else in shared memory, else (tf32 only) the FFMA kernel, which stages no whole batch tiles.
    Projections (proj_size) take the FFMA kernel only up to PROJ_FFMA_MAX_BATCH (0: the tensor-core one)."""
    precision = Precision.of(spec.dtype, math)
    ffma = ffma_recurrence(spec, units, math)
    ffma_fits = kernel_of(ffma).shared_memory_bytes <= device.smem_per_block
    ffma_batch = PROJ_FFMA_MAX_BATCH if spec.proj_size else FFMA_MAX_BATCH
    if not precision.tensor_cores or (spec.batch <= ffma_batch and ffma_fits):
        return ffma
    tensor_cores = (tensor_core_recurrence(spec, units, device, registers=True)
                    or tensor_core_recurrence(spec, units, device, registers=False))
    if precision.operands == "tf32" and ffma_fits and kernel_of(tensor_cores).shared_memory_bytes > device.smem_per_block:
        return ffma
    return tensor_cores


def choose_recurrence(spec: RNNSpec, device: DeviceShape = DEFAULT_DEVICE,
                      math: str = "fp32") -> tuple[Recurrence | None, str]:
    """The persistent kernel's parameters for `spec` on `device` with `math` (PlanOptions.math: with
    fp32 storage, "tf32" allows the tensor-core kernel) (hidden units per block such that all blocks
    fill the device once, and the kernel) and why, or None and why it does not fit."""
    chains = spec.num_layers * spec.directions
    per_chain = max(1, device.sms // chains)
    units = -(-spec.hidden_size // per_chain)
    clustered = cluster_recurrence(spec, device, math)
    trial = kernel_of(clustered or _fitting(spec, units, device, math))
    if spec.proj_size and spec.hidden_size % units and not clustered:
        # Measured on an H200 (LSTM 3x1024 proj 256 B1 fp16, weights in shared memory, BENCHMARKS.md): the
        # dot products took 10.9 us a step at 24 units a block (1024 = 42 x 24 + 16) and 18.3 at 40, 2.3
        # at 32: units that divide hidden, where they fit.
        whole = kernel_of(_fitting(spec, next(u for u in range(units, spec.hidden_size + 1)
                                              if spec.hidden_size % u == 0), device, math))
        trial = whole if whole.fit(device).ok else trial
    mib = sum(prod(s) for n, s in param_shapes(spec).items()
              if n.startswith(("weight_hh", "weight_hr")) or (n.startswith("weight_ih") and not n.startswith("weight_ih_l0")))
    mib *= Precision.of(spec.dtype).element_bytes / 2**20
    fit = trial.fit(device)
    if not fit.ok:
        return None, (f"recurrent weights {mib:.1f} MiB need {fit.why}" if chains <= device.sms else fit.why)
    held = ", weights in registers" if trial.weights_in_registers else ""
    math_used = (f"tensor cores ({trial.precision.operands}), batch tiles of {trial.batch_tile}{held}"
                 if trial.batch_tile else f"FFMA{held}") + (", W_hr on-chip" if spec.proj_size else "")
    if trial.cluster:
        math_used += f", h handed over within clusters of {trial.blocks_per_chain} blocks"
    regs = f" {trial.weight_registers} registers a thread +" if trial.weights_in_registers else ""
    need = trial.shared_memory_bytes
    return trial.recurrence, (f"recurrent weights {mib:.1f} MiB fit on-chip: {trial.blocks} blocks x{regs} "
                              f"{need / 1024:.0f} KiB shared memory on {device.name} ({math_used})")
