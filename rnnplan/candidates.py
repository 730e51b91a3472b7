"""What can run a call shape of `rnnplan.compile`, and how each is built: rnnplan's executors (the
lowerings on the GPU, the NumPy backend's on the CPU), torch's cuDNN call captured in a CUDA graph
(`rnnplan.autotune.CudnnGraph`), and torch's own module as the stand-in while a build runs in the
background (`rnnplan.background`). `CandidateBuilds` is `CompiledRNN`'s half that builds; the half
that caches, checks and calls stays in `rnnplan.dropin`.

A build (`_build_of`) is a function that can run on the worker thread: it reads the module's
buffers and the shared weights but never the executor cache, whose look-ups (`_nearest_tuned`) are
made before, in the calling thread.
"""

from __future__ import annotations

import torch

from rnnplan.api import build_plan
from rnnplan.autotune import Candidate, Choice, CudnnGraph, build_candidates
from rnnplan.background import StandIn
from rnnplan.executor import Executor
from rnnplan.persistent.select import HOST
from rnnplan.spec import DeviceShape, PlanOptions, RNNSpec
from rnnplan.torch_calls import by_pointers, run_executor
from rnnplan.weights import ARCH_FIELDS, Weights

# A new length reuses the autotuned choice of a cached length at most this many times longer or shorter.
RETUNE_RATIO = 2


class CandidateBuilds:
    """Mixed into CompiledRNN, whose attributes it reads: template, lowering, debug, _executors,
    _weights, _shared, _stand_ins and the buffers."""

    def _build_of(self, key: tuple, args, tune: bool, later: bool = False):
        """The build of `key`'s candidates, to run now or (`later`: without their captures, which
        `finish_candidates` makes in the calling thread) on the background worker: a function
        returning (candidates built, why others were not, how the one built was chosen or None)."""
        steps, batch, varlen, device, dtype, math = key
        spec = self.template.model_copy(update={"seq_len": steps, "batch": batch, "variable_lengths": varlen,
                                                "dtype": dtype, "batch_first": False})
        if device.type == "cpu":
            return lambda: ([("recurrence", self._host_candidate(spec))], {}, "CPU tensors run the NumPy backend")
        lowerings = (("persistent", "graph") if tune else ("auto",)) if self.lowering == "auto" else (self.lowering,)
        factories = {name: (lambda name=name: self._candidate(spec, name, math, device, later=later))
                     for name in lowerings}
        if tune and not varlen:  # a packed call cannot be captured: its lengths change between calls
            factories["cudnn"] = lambda: self._cudnn(spec, device, args[0], later)
        near = self._nearest_tuned(key) if tune else None  # (read here: the cache is the caller's)

        def build():
            if near is not None:
                found = _built_alone(factories, near)
                if found is not None:
                    return found
            return (*build_candidates(factories, tune), None)
        return build

    def _nearest_tuned(self, key: tuple) -> tuple[str, int] | None:
        """(the candidate kept, its length) at the nearest cached length of the same batch, masking,
        device and dtype, within a factor of `RETUNE_RATIO`, where it was autotuned: a step's cost,
        which decides the ranking, does not depend on the length (the set-up of a call does, and
        shifts it only between lengths far apart). That candidate alone is then built and nothing is
        timed, so a new length costs one build (milliseconds for the persistent lowering and cuDNN's
        graph) instead of three and their timing. None where no such length is cached."""
        steps, rest = key[0], key[1:]
        near = [(abs(k[0] - steps), k[0], c.chosen.name) for k, c in self._executors.items()
                if k[1:] == rest and k[0] <= steps * RETUNE_RATIO and steps <= k[0] * RETUNE_RATIO
                and c.how.startswith("autotuned")]  # (not a reused choice: lengths would drift from the timed one)
        if not near:
            return None
        _, length, name = min(near)
        return name, length

    def _stand_in(self, device: torch.device, key: tuple) -> Choice:
        """Torch's own module on `device` in the compiled dtype (one per device and dtype, any shape),
        for calls whose build runs in the background."""
        dtype = key[4]
        found = self._stand_ins.get((device, dtype))
        if found is None:
            spec = self.template.model_copy(update={"dtype": dtype, "batch_first": False})
            found = self._stand_ins[(device, dtype)] = Choice(
                Candidate("torch", StandIn(self.torch_module(spec, device), spec.cell == "lstm"), 0,
                          "torch's own module, while the shape's executor builds in the background"),
                "standing in")
        return found

    def _host_candidate(self, spec: RNNSpec) -> Candidate:
        """The NumPy backend's executor: of the recurrence plan (one recurrent step, planned from one
        step of the network in milliseconds for any length: a new length costs little more than its
        first call), or of the graph lowering where no recurrent step runs the spec."""
        try:
            found = self._candidate(spec, "persistent", "fp32", torch.device("cpu"), HOST)
        except ValueError:
            return self._candidate(spec, "graph", "fp32", torch.device("cpu"))
        return found._replace(name="recurrence", why="")

    def _candidate(self, spec: RNNSpec, lowering: str, math: str, device: torch.device,
                   planned_for: DeviceShape | None = None, later: bool = False):
        """rnnplan's executor of `spec` in `lowering` on `device`, planned for the GPU `device` is or
        `planned_for` (ValueError where it does not fit). With `later`, the build without its CUDA-graph
        captures, and a function that makes them and returns the Candidate (`rnnplan.background`:
        the calling thread's part)."""
        options = PlanOptions(lowering=lowering, math=math, device=planned_for)
        if device.type == "cuda" and device.index:  # another GPU than the first: describe it
            from rnnplan.backends import describe_device

            options = options.model_copy(update={"device": describe_device(device.index)})
        plan = build_plan(spec, options=options)
        if self._weights is None:
            self._weights = Weights({k: v.detach().float().cpu().numpy() for k, v in self._buffers.items()},
                                    {f: getattr(spec, f) for f in ARCH_FIELDS})  # the module's hyper-parameters
        backend = "cupy" if device.type == "cuda" else "numpy"
        ex = Executor(plan, self._weights, backend=backend, device=device.index if backend == "cupy" else None,
                      debug=self.debug, shared=self._shared, defer_capture=later)

        def finish() -> Candidate:
            ex.capture()
            why = "" if backend == "numpy" else plan.lowering_reason
            run = (lambda x, h0, c0, lengths: run_executor(ex, x, h0, c0, lengths))
            if backend == "cupy":
                from rnnplan.backends.pointer_call import PointerCall, why_not

                if why_not(ex) is None:
                    run = by_pointers(PointerCall(ex), spec, ex.impl.dtype.itemsize)
            apart = sum(b.size for b in plan.buffers if b.role != "param") * ex.impl.dtype.itemsize
            apart += getattr(getattr(run, "ahead", None), "nbytes", 0)  # the next call's outputs, made ahead
            return Candidate(plan.lowering, run, 0 if backend == "numpy" else apart, why, ex)  # numpy: the workspace
        return finish if later else finish()

    def torch_module(self, spec: RNNSpec, device: torch.device) -> torch.nn.Module:
        """A torch module of `spec`'s network on `device` holding these buffers as its weights."""
        return spec.to_torch(device=device, state_dict=self.state_dict())

    def _cudnn(self, spec: RNNSpec, device: torch.device, x: torch.Tensor, later: bool = False):
        """torch's own call captured in a CUDA graph; with `later`, made up to its capture, and a
        function that captures it and returns the Candidate."""
        graph = CudnnGraph(self.torch_module(spec, device), x, spec.cell == "lstm", spec.num_layers * spec.directions,
                           spec.hidden_size, spec.proj_size, capture=not later)

        def finish() -> Candidate:
            graph.capture()
            return Candidate("cudnn", graph, graph.nbytes, "torch's own forward, as the module would run it")
        return finish if later else finish()


def _built_alone(factories: dict, near: tuple[str, int]):
    """`near`'s candidate (`_nearest_tuned`) built alone, as a build's result; None where it does not build."""
    name, length = near
    make = factories.get(name)
    if make is None:
        return None
    try:
        return [(name, make())], {}, f"as at T={length}, where it was autotuned"
    except (ValueError, RuntimeError):
        return None
