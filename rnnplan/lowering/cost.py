"""A simple cost model of a plan: per-step time from FLOPs, bytes and launch overhead, and a
stream-faithful simulation that gives each step a predicted start and end.

Rates default to what was measured on an H200 (ANCHORS.md): GEMM ceilings by operand type
(`Precision.gemm_tflops`: fp32 51, tf32 398, fp16 751 TFLOP/s); copies about 4.3 TB/s; about 7 us
per kernel launched from Python and about 1.1 us per dependent node of a replayed CUDA graph. It is
a model for pictures and first choices, not a promise: measured times live in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnplan.ir.recurrence import wavefront
from rnnplan.lowering.plan import Plan, Step
from rnnplan.precision import Precision


@dataclass(frozen=True, slots=True)
class CostModel:
    gemm_tflops: float = 51.0       # fp32 strict; see for_plan
    bandwidth_gbs: float = 4300.0
    launch_us: float = 7.0          # Python-launched kernel; a CUDA graph node costs ~1.1 us
    small_gemm_efficiency: float = 0.15  # small GEMMs reach a fraction of the dense ceiling
    handoff_us: float = 2.3         # one round of the persistent kernel (measured, LSTM 1x256, B 1)
    ffma_tflops: float = 51.0       # the persistent kernel's fp32 FFMA arithmetic

    @classmethod
    def for_plan(cls, plan: Plan, graph_replay: bool = False) -> CostModel:
        rate = Precision.of(plan.spec.dtype, plan.options.math).gemm_tflops
        return cls(gemm_tflops=rate, launch_us=1.1 if graph_replay else 7.0)

    def step_us(self, step: Step, itemsize: int) -> float:
        moved = sum(v.rows * v.cols for v in step.inputs + step.outputs) * itemsize
        memory_us = moved / (self.bandwidth_gbs * 1e3)
        if step.recurrence is not None:  # rounds of the in-kernel wavefront, or its arithmetic
            rounds = max(wavefront(step.recurrence).values()) + 1
            handoffs = 2 if step.recurrence.proj_size else 1  # a projection hands h over twice a step
            return self.launch_us + max(rounds * handoffs * self.handoff_us, step.flops / (self.ffma_tflops * 1e6))
        if step.gemm is not None:
            g = step.gemm
            fill = min(1.0, max(self.small_gemm_efficiency, g.m * g.n / (132 * 128 * 128)))
            compute_us = step.flops / (self.gemm_tflops * 1e6 * fill)
            return self.launch_us + max(compute_us, memory_us)
        return self.launch_us + memory_us


def simulate(plan: Plan, model: CostModel | None = None) -> list[tuple[float, float]]:
    """(start_us, end_us) of every step: streams run their steps in order; a wait delays a step
    until the recording step has finished."""
    model = model or CostModel.for_plan(plan)
    itemsize = np.dtype(plan.spec.dtype).itemsize
    stream_free = [0.0] * plan.num_streams
    event_time: dict[int, float] = {}
    times = []
    for s in plan.steps:
        start = max([stream_free[s.stream]] + [event_time[e] for e in s.waits])
        end = start + model.step_us(s, itemsize)
        stream_free[s.stream] = end
        if s.record is not None:
            event_time[s.record] = end
        times.append((start, end))
    return times
