"""A cost model of a plan: each step's time from FLOPs, bytes and latencies, and a stream-faithful
simulation that gives each step a predicted start and end.

Graph lowering, replayed as one CUDA graph: a kernel costs a fixed latency (launch and dependency in
the graph, about 3.5 us for a cuBLAS GEMM and 3.8 for a pointwise kernel) plus its work: a GEMM's
FLOPs at the operand type's ceiling (`Precision.gemm_tflops`) scaled by how much of the GPU its tile
grid fills, or its bytes at HBM bandwidth (weights at L2 bandwidth while all of a plan's weights fit
the L2's resident share), whichever is longer. Kernels of one wavefront level run at once on their
streams and share the GPU: each lasts at least `contention` x the level's summed work. Launched from
Python (no graph) the latency is the host's launch instead.

Persistent lowering: the recurrent kernel runs `rounds` dependent steps (the in-kernel wavefront);
a round costs the hand-off of h (by global memory and counters, or through a cluster's shared
memory; twice with projections) plus the block's share of a step's arithmetic at a per-SM rate of
its kernel (mma fp16/bf16, mma tf32, FFMA) plus the staging of h and of the layer input from L2;
once, a set-up (launch, weights on-chip). The FFMA kernel's projection adds a latency a round.

The constants were fitted to the H200 matrix of 2026-12-02 (`benchmarks/cost_fit.py`: 45 of 48 graph
rows and 26 of 26 persistent rows within 25%; half the graph rows fitted, the other half predicted:
19 of 24). Then (eleventh session) two GEMM terms by operand type, fitted on all three measured sets:
strict fp32's SIMT GEMMs fill the GPU with tiles of 128 x 64, and tf32 GEMMs of few tiles reach 0.12
of the tf32 ceiling instead of 0.41: 46/48 and 26/26 on that matrix, 44/48 and 26/26 on the
2026-12-03 matrix, 48/48 and 31/32 on the crossover rows (batches up to 256, `benchmarks/crossover.py`).
Then (twelfth session) the cluster hand-off's terms, refitted after its mbarriers: 20 of 20 cluster and
44 of 45 global-hand-off kernels within 25% (`benchmarks/cluster_bench.py --any-shape`), 26/26 persistent
rows on the matrix measured with it.
Left: LSTM 1x2048 B32 T200 fp16/bf16 (1.41-1.43x: its 67 MB of weights count as read from HBM, but
the 34 MB a step reads mostly stay in L2; a test on those alone made other rows worse). A model for
pictures and first choices, not a promise: measured times live in BENCHMARKS.md.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from rnnplan.ir.recurrence import wavefront
from rnnplan.lowering.plan import Plan, Step
from rnnplan.persistent.kernel import kernel_of
from rnnplan.precision import Precision


@dataclass(frozen=True, slots=True)
class CostModel:
    gemm_tflops: float = 51.0            # the operands' dense ceiling (for_plan sets it)
    bandwidth_gbs: float = 3880.0        # HBM, as the graph's kernels reach it
    l2_bandwidth_gbs: float = 12000.0    # weights read again while they stay in L2
    l2_resident_bytes: float = 25e6      # a plan's weights up to this stay in L2 between steps
    small_gemm_efficiency: float = 0.41  # a GEMM of few tiles reaches at least this share of the ceiling
    tile_elements: float = 128 * 128     # a GEMM tile's outputs, for the fill (for_plan sets fp32's)
    fp32_tile_elements: float = 128 * 64  # strict fp32 GEMMs (SIMT): smaller tiles, fuller grids
    tf32_small_gemm_efficiency: float = 0.12  # tf32 GEMMs of few tiles: far below the ceiling (for_plan)
    contention: float = 0.72             # a kernel lasts at least this share of its level's summed work
    gemm_latency_us: float = 3.47        # a GEMM node of a replayed graph, before its work
    pointwise_latency_us: float = 3.8    # a pointwise / fused node of a replayed graph
    launch_us: float | None = None       # kernels launched from Python instead (about 7 us); None: graph replay
    # the persistent kernel
    handoff_us: float = 2.52             # tensor-core kernel, h through global memory and counters
    cluster_handoff_us: float = 1.2      # tensor-core kernel, h through the cluster's shared memory (st.async)
    cluster_layer_wait_us: float = 0.45  # and above layer 0, the layer below's h by counters in global memory
    ffma_handoff_us: float = 1.3         # FFMA kernel (batch 1-2, strict fp32)
    mma_tflops_per_sm: float = 2.095     # mma.sync on fp16 / bf16
    tf32_tflops_per_sm: float = 0.4553   # mma.sync on tf32
    ffma_tflops_per_sm: float = 0.1301   # the FFMA kernel's dot products
    ffma_projection_us: float = 18.9     # the FFMA kernel's projection a round (fitted on LSTM 3x1024 p256 B1 alone)
    staging_gbs_per_sm: float = 25.21    # h and the layer input staged from L2, per block
    persistent_setup_us: float = 40.12   # launch, weights on-chip, first wait

    @classmethod
    def for_plan(cls, plan: Plan, graph_replay: bool = True) -> CostModel:
        precision = Precision.of(plan.spec.dtype, plan.options.math)
        model = cls(gemm_tflops=precision.gemm_tflops, launch_us=None if graph_replay else 7.0)
        if precision.operands == "fp32":
            model = replace(model, tile_elements=model.fp32_tile_elements)
        if precision.operands == "tf32":
            model = replace(model, small_gemm_efficiency=model.tf32_small_gemm_efficiency)
        return model

    def work_us(self, step: Step, itemsize: int, is_param, weights_in_l2: bool) -> tuple[float, float]:
        """(compute, memory) microseconds of a graph step's work, without its latency (`is_param`:
        buffer id -> whether it holds weights)."""
        weights = sum(v.rows * v.cols for v in step.inputs if is_param[v.buffer]) * itemsize
        other = sum(v.rows * v.cols for v in step.inputs + step.outputs) * itemsize - weights
        memory = weights / ((self.l2_bandwidth_gbs if weights_in_l2 else self.bandwidth_gbs) * 1e3) \
            + other / (self.bandwidth_gbs * 1e3)
        compute = 0.0
        if step.gemm is not None:
            g = step.gemm
            fill = min(1.0, max(self.small_gemm_efficiency, g.m * g.n / (132 * self.tile_elements)))
            compute = step.flops / (self.gemm_tflops * 1e6 * fill)
        return compute, memory

    def latency_us(self, step: Step) -> float:
        if self.launch_us is not None:
            return self.launch_us
        return self.gemm_latency_us if step.kind == "gemm" else self.pointwise_latency_us

    def recurrent_us(self, step: Step) -> float:
        """The persistent kernel's time: set-up plus its rounds."""
        r = step.recurrence
        k = kernel_of(r)
        rounds = max(wavefront(r).values()) + 1
        ffma = r.batch_tile == 0
        if ffma:
            rate, handoff = self.ffma_tflops_per_sm, self.ffma_handoff_us
        else:
            rate = self.tf32_tflops_per_sm if k.precision.math == "tf32" else self.mma_tflops_per_sm
            handoff = self.cluster_handoff_us if r.cluster else self.handoff_us
            if r.cluster and r.num_layers > 1:
                handoff += self.cluster_layer_wait_us
        per_block = step.flops / (r.seq_len * k.blocks)
        staged = r.batch * k.element_bytes * ((0 if r.cluster else r.h_width)
                                              + (r.h_width * r.directions if r.num_layers > 1 else 0))
        per_round = ((2 if r.proj_size else 1) * handoff + per_block / (rate * 1e6)
                     + staged / (self.staging_gbs_per_sm * 1e3))
        if ffma and r.proj_size:  # waiting for the chain's cell h, few warps' dot products: latency, not rate
            per_round += self.ffma_projection_us
        return self.persistent_setup_us + rounds * per_round


def durations(plan: Plan, model: CostModel | None = None) -> list[float]:
    """Each step's predicted microseconds (from its start, once its stream and waits allow)."""
    model = model or CostModel.for_plan(plan)
    itemsize = Precision.of(plan.spec.dtype, plan.options.math).element_bytes
    is_param = [b.role == "param" for b in plan.buffers]
    in_l2 = sum(b.size for b in plan.buffers if b.role == "param") * itemsize <= model.l2_resident_bytes
    work = [None if s.recurrence is not None else model.work_us(s, itemsize, is_param, in_l2) for s in plan.steps]
    level = defaultdict(lambda: [0.0, 0.0])  # summed (compute, memory) of each wavefront level
    for s, w in zip(plan.steps, work):
        if w is not None:
            level[s.level][0] += w[0]
            level[s.level][1] += w[1]
    out = []
    for s, w in zip(plan.steps, work):
        if w is None:
            out.append(model.recurrent_us(s))
        else:
            shared = model.contention * max(level[s.level])
            out.append(model.latency_us(s) + max(w[0], w[1], shared))
    return out


def simulate(plan: Plan, model: CostModel | None = None) -> list[tuple[float, float]]:
    """(start_us, end_us) of every step: streams run their steps in order; a wait delays a step
    until the recording step has finished."""
    stream_free = [0.0] * plan.num_streams
    event_time: dict[int, float] = {}
    times = []
    for s, took in zip(plan.steps, durations(plan, model)):
        start = max([stream_free[s.stream]] + [event_time[e] for e in s.waits])
        end = start + took
        stream_free[s.stream] = end
        if s.record is not None:
            event_time[s.record] = end
        times.append((start, end))
    return times


def predicted_ms(plan: Plan, model: CostModel | None = None) -> float:
    """The plan's predicted time a call, in milliseconds: the end of its last step."""
    return max(end for _, end in simulate(plan, model)) / 1e3
