"""The NumPy reference executor: runs any Plan step by step on the CPU.

Buffers are flat arrays of the plan's dtype, allocated once the host is known to have the memory
(NaN-filled, or, given `SharedResources`, params shared with the network's other executors and the
rest carved from one shared workspace); every BufferView becomes a strided NumPy view once, at
construction. With `debug`, every buffer
steps write is filled with NaN before each call. `run` executes the steps in issue order, or, with `interleave_seed`, in a random
interleaving that respects only stream order and event waits: a missing event then shows up as a
wrong answer, as it would on a GPU.
"""

from __future__ import annotations

import random
import time

import numpy as np

from rnnplan.backends.outputs import pack_outputs
from rnnplan.backends.shared import SharedResources
from rnnplan.ir import semantics
from rnnplan.lowering.plan import DEVICE_WRITTEN, BufferView, Plan
from rnnplan.resources import available_host_bytes, check_fits, plan_breakdown
from rnnplan.weights import Weights

ALIGN = 16  # elements: where each buffer starts in a shared workspace


class NumpyExecutor:
    def __init__(self, plan: Plan, weights: Weights, debug: bool = False, shared: SharedResources | None = None):
        self.plan, self.debug, self.shared = plan, debug, shared
        self.dtype = dtype = np.dtype(plan.spec.dtype)
        parts = plan_breakdown(plan)
        check_fits("the plan", sum(parts.values()), available_host_bytes(), "host", plan.spec, parts)
        self.written = [b.id for b in plan.buffers if b.role in DEVICE_WRITTEN]
        if shared is None:  # NaN-filled so that a read of memory nothing wrote poisons the result
            self.buffers = [np.full(b.size, np.nan, dtype=dtype) for b in plan.buffers]
            for b in plan.buffers:
                if b.role == "param":
                    self.view(BufferView(b.id, 0, b.shape[0], b.shape[1], b.shape[1]))[...] = \
                        weights.layout(b.source, b.transform)
        else:
            self.buffers = self._shared_buffers(plan, weights, shared)
        self.steps = [(s, [self.view(v) for v in s.inputs], [self.view(v) for v in s.outputs])
                      for s in plan.steps]

    def _shared_buffers(self, plan: Plan, weights: Weights, shared: SharedResources) -> list[np.ndarray]:
        dtype, starts, end = self.dtype, {}, 0
        for b in plan.buffers:
            if b.role != "param":
                starts[b.id], end = end, end + -(-b.size // ALIGN) * ALIGN
        workspace = shared.workspace(dtype, end, np.empty)
        return [shared.param(("numpy", None, dtype.name, b.source, b.transform),
                             lambda b=b: weights.layout(b.source, b.transform).astype(dtype).ravel())
                if b.role == "param" else workspace[starts[b.id]:starts[b.id] + b.size] for b in plan.buffers]

    def view(self, v: BufferView) -> np.ndarray:
        item = self.dtype.itemsize  # np.ndarray over the flat buffer: a fifth of as_strided's cost
        return np.ndarray((v.rows, v.cols), self.dtype, self.buffers[v.buffer], v.offset * item, (v.ld * item, item))

    def _execute(self, i: int) -> None:
        step, ins, outs = self.steps[i]
        for out, result in zip(outs, semantics.compute(step, ins)):
            out[...] = result

    def _issue_order(self) -> list[int]:
        return list(range(len(self.steps)))

    def _random_interleaving(self, seed: int) -> list[int]:
        """A random execution order allowed by stream order and event waits alone."""
        rng = random.Random(seed)
        queues: dict[int, list[int]] = {}
        for i, s in enumerate(self.plan.steps):
            queues.setdefault(s.stream, []).append(i)
        heads = {s: 0 for s in queues}
        recorded: set[int] = set()
        order = []
        while len(order) < len(self.steps):
            ready = [s for s, q in queues.items() if heads[s] < len(q)
                     and all(e in recorded for e in self.plan.steps[q[heads[s]]].waits)]
            if not ready:
                raise RuntimeError("plan deadlocks: every stream waits on an event never recorded")
            s = rng.choice(ready)
            i = queues[s][heads[s]]
            heads[s] += 1
            order.append(i)
            if self.plan.steps[i].record is not None:
                recorded.add(self.plan.steps[i].record)
        return order

    def _load(self, x, h0, c0, mask=None) -> None:
        spec, plan = self.plan.spec, self.plan
        x = np.asarray(x)
        if spec.batch_first:
            x = x.transpose(1, 0, 2)
        self.view(plan.inputs["x"])[...] = x.reshape(spec.seq_len * spec.batch, spec.input_size)
        if mask is not None:
            self.view(plan.inputs["mask"])[...] = mask
        for name, given in (("h0", h0), ("c0", c0)):
            if name in plan.inputs:
                dst = self.view(plan.inputs[name])
                dst[...] = 0 if given is None else np.asarray(given).reshape(dst.shape)

    def run(self, x, h0=None, c0=None, mask=None, interleave_seed: int | None = None):
        if self.shared is None:
            return self._run(x, h0, c0, mask, interleave_seed)
        with self.shared.lock:  # the workspace holds one call's values at a time
            return self._run(x, h0, c0, mask, interleave_seed)

    def _run(self, x, h0, c0, mask, interleave_seed):
        spec, plan = self.plan.spec, self.plan
        if self.debug:  # what this call does not write shows as NaN, never as an earlier call's value
            for i in self.written:
                self.buffers[i].fill(np.nan)
        self._load(x, h0, c0, mask)
        order = self._issue_order() if interleave_seed is None else self._random_interleaving(interleave_seed)
        for i in order:
            self._execute(i)
        out = self.view(plan.outputs["out"][0]).copy()
        states = {name: np.stack([self.view(v) for v in plan.outputs[name]])
                  for name in ("h_n", "c_n") if name in plan.outputs}
        return pack_outputs(spec, out, states["h_n"], states.get("c_n"))

    def timeline(self, x, h0=None, c0=None, mask=None) -> list[tuple[float, float]]:
        """Run once in issue order; (start_us, end_us) of every step, by the host clock."""
        if self.shared is not None:
            with self.shared.lock:
                return self._timeline(x, h0, c0, mask)
        return self._timeline(x, h0, c0, mask)

    def _timeline(self, x, h0, c0, mask) -> list[tuple[float, float]]:
        self._load(x, h0, c0, mask)
        times = []
        t0 = time.perf_counter()
        for i in range(len(self.steps)):
            start = time.perf_counter()
            self._execute(i)
            times.append(((start - t0) * 1e6, (time.perf_counter() - t0) * 1e6))
        return times
