"""`rnnplan.compile(module)`: a `torch.nn.LSTM` / `GRU` / `RNN` run by rnnplan, called exactly like the
module: `(input, hx=None) -> (output, h_n)` or `(output, (h_n, c_n))`, with `input` a Tensor of any
(T, B) or a `PackedSequence` (then the output is one, as torch returns it). CPU tensors run on the
NumPy backend, CUDA tensors on the CuPy backend, in and out through DLPack on the caller's device and
stream (no host round trip). Calling again with the state a call returned continues the sequence.

It is a `torch.nn.Module` whose buffers are the module's parameters (`to()`, `state_dict` and
`load_state_dict` work; changing them drops the cached executors). One executor per call shape is
kept, least recently used dropped first, under a byte budget (`cache_info()`, `clear()`); with
`bucket=N` lengths are padded to a multiple of N steps and masked, so that a server sees few shapes.
With fp32 parameters on a GPU it follows torch's numerics: tf32 where `torch.backends.cudnn.allow_tf32`
is set (torch's default), as `nn.LSTM` on cuDNN would. Needs PyTorch (`rnnplan[torch]`); the rest of
rnnplan imports without it.

On a GPU the first call at a shape may time the candidates (`rnnplan.autotune`: rnnplan's lowerings
and torch's own cuDNN call in a CUDA graph) and keep the fastest; `explain()` says what was timed. A
new length within a factor of `RETUNE_RATIO` of an autotuned one builds that one's choice alone.
Calls of rnnplan's executors go by device pointers on the caller's stream (`rnnplan.torch_calls`,
`backends.pointer_call`); a packed call at a shape already cached moves its rows, mask and padding
in two kernel launches (`backends/cuda/packed.cu`); calls of fixed lengths may be captured in the
caller's own CUDA graph after a warm-up call at that shape (a packed call copies its layout from
the host and cannot be).

One call at a time: an executor's buffers (and its launches' argument buffers) serve every call at
its shape, so calls from several threads at once need the caller's lock, and calls on different
streams at once are not supported.

Under `torch.compile` the tensor path is the custom op `torch.ops.rnnplan.forward` (registered with
a fake implementation), so a model holding the compiled module compiles without a graph break;
eager calls go to the same function directly (the op's dispatch costs tens of microseconds).
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from typing import NamedTuple

import torch

from rnnplan.api import build_plan
from rnnplan.autotune import Candidate, Choice, CudnnGraph, choose
from rnnplan.backends.shared import SharedResources
from rnnplan.executor import Executor
from rnnplan.packing import host_lengths, packed_layout
from rnnplan.persistent.select import HOST
from rnnplan.spec import DeviceShape, PlanOptions, RNNSpec, torch_cell
from rnnplan.torch_calls import by_pointers, run_executor
from rnnplan.weights import ARCH_FIELDS, Weights

PARAMETER_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# A new length reuses the autotuned choice of a cached length at most this many times longer or shorter.
RETUNE_RATIO = 2
_HANDLES = itertools.count()
_LIVE: weakref.WeakValueDictionary[int, CompiledRNN] = weakref.WeakValueDictionary()


class CompileError(ValueError):
    """A module rnnplan cannot run, named by the attribute that says so."""


class CacheInfo(NamedTuple):
    executors: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int


def compile(module, *, lowering: str = "auto", bucket: int | None = None, cache_bytes: int = 2**31,
            cast: bool = False, debug: bool = False, autotune: bool = True) -> CompiledRNN:  # noqa: A001 (torch's name)
    """`module` (a torch.nn.LSTM, GRU or RNN in eval mode) as a CompiledRNN. `lowering` as in
    PlanOptions; `bucket` pads lengths up to a multiple of that many steps (masked); `cache_bytes`
    bounds the cached executors' memory; `cast` lets inputs of another dtype be cast (else named);
    `debug` poisons what each call writes first (Executor's debug). `autotune` (GPU): the first call
    at a shape times the candidates (the lowerings `lowering` allows, and for fixed lengths torch's
    own cuDNN call captured in a CUDA graph) and keeps the fastest; False keeps the planner's choice."""
    return CompiledRNN(module, lowering=lowering, bucket=bucket, cache_bytes=cache_bytes, cast=cast, debug=debug,
                       autotune=autotune)


def _refuse(module) -> None:
    torch_cell(module, "rnnplan.compile", CompileError)
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise CompileError(f"training=True with dropout={module.dropout}: rnnplan runs inference without dropout; "
                           "call module.eval() first")
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in PARAMETER_DTYPES:
        raise CompileError(f"parameters of dtype {', '.join(sorted(str(d) for d in dtypes))}: rnnplan runs "
                           f"{', '.join(str(d) for d in PARAMETER_DTYPES)}")


class CompiledRNN(torch.nn.Module):
    def __init__(self, module, *, lowering: str = "auto", bucket: int | None = None, cache_bytes: int = 2**31,
                 cast: bool = False, debug: bool = False, autotune: bool = True):
        super().__init__()
        _refuse(module)
        if bucket is not None and (type(bucket) is not int or bucket < 1):
            raise CompileError(f"bucket must be a number of steps >= 1, or None; got {bucket!r}")
        if not isinstance(autotune, bool):
            raise CompileError(f"autotune must be True or False, got {autotune!r}")
        self.template = RNNSpec.from_torch(module, seq_len=1, batch=1)
        PlanOptions(lowering=lowering)  # named now, not at the first call
        self.lowering, self.bucket, self.max_bytes, self.cast, self.debug = lowering, bucket, cache_bytes, cast, debug
        self.autotune = autotune
        for name, tensor in module.state_dict().items():
            self.register_buffer(name, tensor.detach().clone())
        self._executors: OrderedDict[tuple, Choice] = OrderedDict()
        # Weights read from the buffers once, and laid out and uploaded once per device and dtype,
        # for every executor (a new shape costs its plan, not a copy of the weights): until they change.
        self._weights: Weights | None = None
        self._shared = SharedResources()
        self._counts = [0, 0]  # hits, misses (a list: nn.Module.__setattr__ costs microseconds a call)
        self.handle = next(_HANDLES)
        _LIVE[self.handle] = self
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear())

    # ---- the executor cache ---------------------------------------------------------------------

    def cache_info(self) -> CacheInfo:
        """`bytes`: what the executors hold apart (their activations; cuDNN candidates all they hold),
        plus the weights and workspace they share."""
        return CacheInfo(len(self._executors), sum(c.nbytes for c in self._executors.values()) + self._shared.nbytes,
                         self.max_bytes, *self._counts)

    def clear(self) -> None:
        """Drop every cached executor and the copies of the buffers they share (on the device)."""
        self._executors.clear()
        self._weights, self._shared = None, SharedResources()

    def _apply(self, fn, *args, **kwargs):  # to(), cuda(), half() ...: the buffers change, executors go
        self.clear()
        return super()._apply(fn, *args, **kwargs)

    def explain(self) -> str:
        """What each cached shape runs, and why (with autotune: what was timed)."""
        proj = f" proj {self.template.proj_size}" if self.template.proj_size else ""
        lines = [f"rnnplan.compile of {self.template.cell} {self.template.num_layers}x{self.template.hidden_size}{proj}: "
                 f"{len(self._executors)} shape(s) cached, {self.cache_info().bytes / 2**20:.1f} MiB"]
        for (steps, batch, varlen, device, dtype, math), choice in self._executors.items():
            lines.append(f"  T={steps} B={batch}{' masked' if varlen else ''} on {str(device)} ({dtype}, {math}): "
                         f"{choice.describe()}")
        return "\n".join(lines)

    def executor(self, steps: int, batch: int, varlen: bool, device: torch.device) -> Executor | None:
        """rnnplan's executor for calls of `steps` x `batch` on `device` (None where the shape runs
        torch's cuDNN call), from the cache or made now (then without timing candidates)."""
        return self._choice(steps, batch, varlen, device, None).chosen.executor

    def _choice(self, steps: int, batch: int, varlen: bool, device: torch.device, args) -> Choice:
        """What runs calls of `steps` x `batch` on `device`: from the cache, or chosen now (timed on
        `args` with autotune on a GPU)."""
        key = self._key(steps, batch, varlen, device)
        _, _, _, _, dtype, math = key
        found = self._executors.get(key)
        if found is not None:
            self._counts[0] += 1
            self._executors.move_to_end(key)
            return found
        self._counts[1] += 1
        spec = self.template.model_copy(update={"seq_len": steps, "batch": batch, "variable_lengths": varlen,
                                                "dtype": dtype, "batch_first": False})
        if device.type == "cpu":
            choice = Choice(self._host_candidate(spec), "CPU tensors run the NumPy backend")
        else:
            tune = self.autotune and args is not None
            lowerings = (("persistent", "graph") if tune else ("auto",)) if self.lowering == "auto" else (self.lowering,)
            factories = {name: (lambda name=name: self._candidate(spec, name, math, device)) for name in lowerings}
            if tune and not varlen:  # a packed call cannot be captured: its lengths change between calls
                factories["cudnn"] = lambda: self._cudnn(spec, device, args[0])
            choice = self._as_before(key, factories) if tune else None
            if choice is None:
                choice = choose(factories, args, tune)
        self._executors[key] = choice
        while len(self._executors) > 1 and self.cache_info().bytes > self.max_bytes:
            self._executors.popitem(last=False)
        return choice

    def _as_before(self, key: tuple, factories: dict) -> Choice | None:
        """At a new length, what was timed and kept at the nearest cached length of the same batch,
        masking, device and dtype, within a factor of `RETUNE_RATIO`: a step's cost, which decides
        the ranking, does not depend on the length (the set-up of a call does, and shifts it only
        between lengths far apart). That candidate alone is built and nothing is timed, so a new
        length costs one build (milliseconds for the persistent lowering and cuDNN's graph) instead
        of three and their timing. None where no such length is cached, or its choice does not build."""
        steps, rest = key[0], key[1:]
        near = [(abs(k[0] - steps), k[0], c) for k, c in self._executors.items()
                if k[1:] == rest and k[0] <= steps * RETUNE_RATIO and steps <= k[0] * RETUNE_RATIO
                and c.how.startswith("autotuned")]  # (not a reused choice: lengths would drift from the timed one)
        if not near:
            return None
        _, before, found = min(near, key=lambda n: n[:2])
        make = factories.get(found.chosen.name)
        if make is None:
            return None
        try:
            chosen = make()
        except (ValueError, RuntimeError):
            return None
        return Choice(chosen, f"as at T={before}, where it was autotuned", {})

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
                   planned_for: DeviceShape | None = None) -> Candidate:
        """rnnplan's executor of `spec` in `lowering` on `device`, planned for the GPU `device` is or
        `planned_for` (ValueError where it does not fit)."""
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
                      debug=self.debug, shared=self._shared)
        why = "" if backend == "numpy" else plan.lowering_reason
        run = (lambda x, h0, c0, lengths: run_executor(ex, x, h0, c0, lengths))
        if backend == "cupy":
            from rnnplan.backends.pointer_call import PointerCall, why_not

            if why_not(ex) is None:
                run = by_pointers(PointerCall(ex), spec, ex.impl.dtype.itemsize)
        apart = sum(b.size for b in plan.buffers if b.role != "param") * ex.impl.dtype.itemsize
        apart += getattr(getattr(run, "ahead", None), "nbytes", 0)  # the next call's outputs, made ahead
        return Candidate(plan.lowering, run, 0 if backend == "numpy" else apart, why, ex)  # numpy: the workspace

    def torch_module(self, spec: RNNSpec, device: torch.device) -> torch.nn.Module:
        """A torch module of `spec`'s network on `device` holding these buffers as its weights."""
        return spec.to_torch(device=device, state_dict=self.state_dict())

    def _cudnn(self, spec: RNNSpec, device: torch.device, x: torch.Tensor) -> Candidate:
        graph = CudnnGraph(self.torch_module(spec, device), x, spec.cell == "lstm", spec.num_layers * spec.directions,
                           spec.hidden_size, spec.proj_size)
        return Candidate("cudnn", graph, graph.nbytes, "torch's own forward, as the module would run it")

    # ---- calls ----------------------------------------------------------------------------------

    def _check(self, name: str, t) -> torch.Tensor:
        want = self._buffers["weight_hh_l0"]  # (not self.weight_hh_l0: nn.Module's __getattr__ costs 0.4 us)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != want.device:
            raise ValueError(f"{name} is on {t.device}, the compiled module's buffers on {want.device} (move one: "
                             "rnnplan copies nothing between devices)")
        if t.dtype != want.dtype:
            if not self.cast:
                raise ValueError(f"{name} has dtype {t.dtype}, the compiled module runs {want.dtype} "
                                 "(cast it, or compile with cast=True)")
            t = t.to(want.dtype)
        return t

    def forward(self, input, hx=None):
        packed = isinstance(input, torch.nn.utils.rnn.PackedSequence)
        if packed:
            data = self._check("input", input.data)
            if data.dim() != 2 or data.shape[-1] != self.template.input_size:
                raise ValueError(f"a PackedSequence's data must be (rows, {self.template.input_size}), got shape "
                                 f"{tuple(data.shape)}")
            fast = self._packed_repeat(input, data, hx)
            if fast is not None:
                return fast
            lengths, pad_rows, pack_rows = packed_layout(input, data.dtype)
            steps, batch = len(input.batch_sizes), int(input.batch_sizes[0])
            x = data.index_select(0, pad_rows.to(data.device, non_blocking=True)).view(steps, batch, -1)
        else:
            x = self._check("input", input)
            if x.dim() != 3 or x.shape[-1] != self.template.input_size:
                raise ValueError(f"input must be 3-D ({'B, T' if self.template.batch_first else 'T, B'}, "
                                 f"{self.template.input_size}), got shape {tuple(x.shape)}")
            if self.template.batch_first:
                x = x.transpose(0, 1)
            lengths = None
        h0, c0 = self._state(hx, x.shape[1])
        # The custom op lets torch.compile trace through without a graph break; eager calls skip its
        # dispatch (tens of microseconds of Python a call).
        if torch.compiler.is_compiling():  # the op's schema takes the lengths on the host
            lengths = host_lengths(lengths)
            out, h_n, c_n = forward_op(x.contiguous(), h0, c0, lengths, self.handle)
        else:
            out, h_n, c_n = self.run(x.contiguous(), h0, c0, lengths)
        state = (h_n, c_n) if c0 is not None or self.template.cell == "lstm" else h_n
        if packed:  # the rows torch's PackedSequence holds, in its order
            rows = out.reshape(-1, out.shape[-1]).index_select(0, pack_rows.to(out.device, non_blocking=True))
            return torch.nn.utils.rnn.PackedSequence(rows, input.batch_sizes, input.sorted_indices,
                                                     input.unsorted_indices), state
        return (out.transpose(0, 1) if self.template.batch_first else out), state

    def _packed_repeat(self, packed, data: torch.Tensor, hx):
        """A packed call on the GPU at a shape already cached, by `packed_by_pointers` (its layout,
        gathers and mask in two kernel launches); None where that does not apply (the first call at
        a shape, which may time candidates; the CPU; torch.compile; a stream capture)."""
        if not data.is_cuda or torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
            return None
        steps, batch = len(packed.batch_sizes), int(packed.batch_sizes[0])
        found = self._executors.get(self._key(self._padded(steps), batch, True, data.device))
        call = getattr(found.chosen.run, "packed", None) if found is not None else None
        if call is None:
            return None
        self._counts[0] += 1
        h0, c0 = self._state(hx, batch)
        return call(packed, data, h0, c0)

    def _padded(self, steps: int) -> int:
        """The steps a call of `steps` runs: rounded up to a multiple of the bucket, if there is one."""
        return steps if self.bucket is None else -(-steps // self.bucket) * self.bucket

    def _key(self, steps: int, batch: int, varlen: bool, device: torch.device) -> tuple:
        dtype = PARAMETER_DTYPES[self._buffers["weight_hh_l0"].dtype]
        math = "tf32" if device.type == "cuda" and dtype == "float32" and torch.backends.cudnn.allow_tf32 else "fp32"
        return (steps, batch, varlen, device, dtype, math)

    def _state(self, hx, batch: int):
        """(h_0, c_0) checked against the call's batch (their shapes, as torch checks them: a call by
        pointers reads exactly that many elements); None where left out (zeros)."""
        t = self.template
        lstm, layers = t.cell == "lstm", t.num_layers * t.directions
        if hx is None:
            return None, None
        if lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"an LSTM's hx is a tuple (h_0, c_0), got {type(hx).__name__}")
            return (self._shaped("h_0", hx[0], (layers, batch, t.output_size)),
                    self._shaped("c_0", hx[1], (layers, batch, t.hidden_size)))
        return self._shaped("hx", hx, (layers, batch, t.hidden_size)), None

    def _shaped(self, name: str, t, shape: tuple[int, ...]) -> torch.Tensor:
        t = self._check(name, t)
        if t.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (layers x directions, batch, size), got {tuple(t.shape)}")
        return t.contiguous()

    def run(self, x: torch.Tensor, h0, c0, lengths) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One call on time-major `x` (T, B, I): the work behind the custom op. `lengths`: B ints on
        the host, or their (T, B) mask on x's device (`rnnplan.packing`), or None (every sequence T long)."""
        steps, batch = x.shape[0], x.shape[1]
        bucket = self.bucket
        varlen = lengths is not None or (bucket is not None and steps % bucket != 0)
        if varlen and lengths is None:
            lengths = [steps] * batch
        padded_steps = self._padded(steps)
        if padded_steps != steps:
            x = torch.cat([x, x.new_zeros((padded_steps - steps, *x.shape[1:]))])
            if isinstance(lengths, torch.Tensor):  # the padding lies past every sequence's end
                lengths = torch.cat([lengths, lengths.new_zeros((padded_steps - steps, batch))])
        args = (x, h0, c0, lengths)
        out, h_n, c_n = self._choice(padded_steps, batch, varlen, x.device, args).chosen.run(*args)
        return (out if padded_steps == steps else out[:steps]), h_n, c_n


@torch.library.custom_op("rnnplan::forward", mutates_args=())
def forward_op(x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, lengths: list[int] | None,
               handle: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rnnplan's forward of the CompiledRNN `handle` on time-major x: (out, h_n, c_n; c_n empty but
    for LSTMs)."""
    return _LIVE[handle].run(x, h0, c0, lengths)


@forward_op.register_fake
def _(x, h0, c0, lengths, handle):
    t = _LIVE[handle].template
    layers, width = t.num_layers * t.directions, t.output_size
    out = x.new_empty((x.shape[0], x.shape[1], t.directions * width))
    h_n = x.new_empty((layers, x.shape[1], width))
    return out, h_n, x.new_empty((layers, x.shape[1], t.hidden_size) if t.cell == "lstm" else (0,))
