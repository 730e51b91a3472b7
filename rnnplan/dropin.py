"""`rnnplan.compile(module)`: a `torch.nn.LSTM` / `GRU` / `RNN` run by rnnplan, called exactly like the
module: `(input, hx=None) -> (output, h_n)` or `(output, (h_n, c_n))`, with `input` a Tensor of any
(T, B) or a `PackedSequence` (then the output is one, as torch returns it). CPU tensors run on the
NumPy backend, CUDA tensors on the CuPy backend, in and out through DLPack on the caller's device and
stream (no host round trip). Calling again with the state a call returned continues the sequence.

It is a `torch.nn.Module` whose buffers are the module's parameters (`to()`, `state_dict` and
`load_state_dict` work; changing them drops the cached executors). One executor per call shape is
kept, least recently used dropped first, under a byte budget (`cache_info()`, `clear()`); with
`bucket=N` lengths are padded to a multiple of N steps and masked, so that a server sees few shapes;
with `build="background"` a new shape's executor builds on a worker thread while its calls run
torch's own module (`rnnplan.background`), so that no call waits for a set-up.
With fp32 parameters on a GPU it follows torch's numerics: tf32 where `torch.backends.cudnn.allow_tf32`
is set (torch's default), as `nn.LSTM` on cuDNN would. Needs PyTorch (`rnnplan[torch]`); the rest of
rnnplan imports without it.

On a GPU the first call at a shape may time the candidates (`rnnplan.autotune`: rnnplan's lowerings
and torch's own cuDNN call in a CUDA graph) and keep the fastest; `explain()` says what was timed. A
new length within a factor of `RETUNE_RATIO` of an autotuned one builds that one's choice alone.
Calls of rnnplan's executors go by device pointers on the caller's stream (`rnnplan.torch_calls`,
`backends.pointer_call`); a packed call at a cached shape moves its rows, mask and padding in two
kernel launches (`backends/cuda/packed.cu`); a repeat call, packed or not, goes through the compiled
call path (`rnnplan.compiled_calls`: its checks, allocation and launches in C++) once that is built;
calls of fixed lengths may be captured in the caller's own CUDA graph after a warm-up call at that
shape (a packed call copies its layout from the host and cannot be).

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

import rnnplan.compiled_calls as compiled_calls
from rnnplan.autotune import Choice, finish_candidates, pick
from rnnplan.backends.shared import SharedResources
from rnnplan.background import BUILDS, Builds
from rnnplan.candidates import CandidateBuilds
from rnnplan.executor import Executor
from rnnplan.packing import host_lengths, packed_layout
from rnnplan.spec import PlanOptions, RNNSpec, torch_cell
from rnnplan.weights import Weights

PARAMETER_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
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
    building: int = 0  # shapes whose executor builds in the background (build="background")


def compile(module, *, lowering: str = "auto", bucket: int | None = None, cache_bytes: int = 2**31,
            cast: bool = False, debug: bool = False, autotune: bool = True,
            build: str = "blocking", fast_call: bool = True) -> CompiledRNN:  # noqa: A001 (torch's name)
    """`module` (a torch.nn.LSTM, GRU or RNN in eval mode) as a CompiledRNN. `lowering` as in
    PlanOptions; `bucket` pads lengths up to a multiple of that many steps (masked); `cache_bytes`
    bounds the cached executors' memory; `cast` lets inputs of another dtype be cast (else named);
    `debug` poisons what each call writes first (Executor's debug). `autotune` (GPU): the first call
    at a shape times the candidates (the lowerings `lowering` allows, and for fixed lengths torch's
    own cuDNN call captured in a CUDA graph) and keeps the fastest; False keeps the planner's choice.
    `build="background"` (for servers): a new shape's executor builds on a worker thread while its
    calls run torch's own module (`rnnplan.background`); "blocking" builds it in the first call.
    `fast_call` (GPU): repeat calls at cached shapes (of fixed length, or packed) go through the compiled
    call path (`rnnplan.compiled_calls`, built once per machine on a worker thread) once it is loaded."""
    return CompiledRNN(module, lowering=lowering, bucket=bucket, cache_bytes=cache_bytes, cast=cast, debug=debug,
                       autotune=autotune, build=build, fast_call=fast_call)


def _refuse(module) -> None:
    torch_cell(module, "rnnplan.compile", CompileError)
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise CompileError(f"training=True with dropout={module.dropout}: rnnplan runs inference without dropout; "
                           "call module.eval() first")
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in PARAMETER_DTYPES:
        raise CompileError(f"parameters of dtype {', '.join(sorted(str(d) for d in dtypes))}: rnnplan runs "
                           f"{', '.join(str(d) for d in PARAMETER_DTYPES)}")


class CompiledRNN(torch.nn.Module, CandidateBuilds):
    def __init__(self, module, *, lowering: str = "auto", bucket: int | None = None, cache_bytes: int = 2**31,
                 cast: bool = False, debug: bool = False, autotune: bool = True, build: str = "blocking",
                 fast_call: bool = True):
        super().__init__()
        _refuse(module)
        if bucket is not None and (type(bucket) is not int or bucket < 1):
            raise CompileError(f"bucket must be a number of steps >= 1, or None; got {bucket!r}")
        if not isinstance(autotune, bool):
            raise CompileError(f"autotune must be True or False, got {autotune!r}")
        if not isinstance(fast_call, bool):
            raise CompileError(f"fast_call must be True or False, got {fast_call!r}")
        if build not in BUILDS:
            raise CompileError(f"build must be one of {BUILDS}, got {build!r}")
        self.template = RNNSpec.from_torch(module, seq_len=1, batch=1)
        PlanOptions(lowering=lowering)  # named now, not at the first call
        self.lowering, self.bucket, self.max_bytes, self.cast, self.debug = lowering, bucket, cache_bytes, cast, debug
        self.autotune, self.build, self.fast_call = autotune, build, fast_call
        for name, tensor in module.state_dict().items():
            self.register_buffer(name, tensor.detach().clone())
        self._new_caches()
        self.register_load_state_dict_post_hook(_cleared_after_load)

    def _new_caches(self) -> None:
        """What the module holds besides its options and buffers, empty (at construction, and in a
        copy: `copy.deepcopy`, pickling and `torch.save` carry the options and buffers alone)."""
        # The compiled call path's table of this module's GPU shapes (rnnplan.compiled_calls),
        # remade whenever the executor cache changes; pending while the extension is not loaded yet.
        self._fast, self._fast_pending = None, False
        self._executors: OrderedDict[tuple, Choice] = OrderedDict()
        # Weights read from the buffers once, and laid out and uploaded once per device and dtype,
        # for every executor (a new shape costs its plan, not a copy of the weights): until they change.
        self._weights: Weights | None = None
        self._shared = SharedResources()
        self._counts = [0, 0]  # hits, misses (a list: nn.Module.__setattr__ costs microseconds a call)
        self._builds = Builds()  # build="background": the shapes whose executor builds on the worker
        self._stand_ins: dict[tuple, Choice] = {}  # (device, dtype) -> torch's own module, meanwhile
        self.handle = next(_HANDLES)  # the custom op's name for this module
        _LIVE[self.handle] = self

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in _CACHES}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._new_caches()

    # ---- the executor cache ---------------------------------------------------------------------

    def cache_info(self) -> CacheInfo:
        """`bytes`: what the executors hold apart (their activations; cuDNN candidates all they hold),
        plus the weights and workspace they share."""
        return CacheInfo(len(self._executors), sum(c.nbytes for c in self._executors.values()) + self._shared.nbytes,
                         self.max_bytes, *self._counts, len(self._builds))

    def clear(self) -> None:
        """Drop every cached executor and the copies of the buffers they share (on the device), and
        forget the builds under way."""
        self._executors.clear()
        self._builds.clear()
        self._stand_ins.clear()
        self._weights, self._shared = None, SharedResources()
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        """The compiled call path's table, remade from the executor cache; pending (remade by the next
        call that takes the Python path) while the extension builds or a shape's graph is not yet
        instantiated."""
        self._fast, later = compiled_calls.table(self) if self.fast_call and self._executors else (None, False)
        gpu = self.fast_call and any(key[3].type == "cuda" for key in self._executors)
        if gpu and compiled_calls.module() is None:
            compiled_calls.start()
        self._fast_pending = gpu and (compiled_calls.module() is None or later)

    def wait(self, timeout: float | None = None) -> bool:
        """With build="background": wait until the builds under way are done (or `timeout` seconds);
        whether they all are. Each is installed by the next call at its shape."""
        return self._builds.wait(timeout)

    def _apply(self, fn, *args, **kwargs):  # to(), cuda(), half() ...: the buffers change, executors go
        self.clear()
        return super()._apply(fn, *args, **kwargs)

    def explain(self) -> str:
        """What each cached shape runs, and why (with autotune: what was timed)."""
        proj = f" proj {self.template.proj_size}" if self.template.proj_size else ""
        lines = [f"rnnplan.compile of {self.template.cell} {self.template.num_layers}x{self.template.hidden_size}{proj}: "
                 f"{len(self._executors)} shape(s) cached, {self.cache_info().bytes / 2**20:.1f} MiB"]
        shape = lambda steps, batch, varlen, device, dtype, math: (  # noqa: E731
            f"  T={steps} B={batch}{' masked' if varlen else ''} on {str(device)} ({dtype}, {math}): ")
        for key, choice in self._executors.items():
            lines.append(shape(*key) + choice.describe())
        if self.fast_call and any(key[3].type == "cuda" for key in self._executors):
            why = compiled_calls.why_not()
            shapes = self._fast.shapes() if self._fast is not None else []
            path = "the compiled call path" if why is None else f"Python ({why})"
            lines.append(f"  repeat calls: {path}, {len(shapes)} entries in its table"
                         + "".join(f"; T={t} B={b}{WHICH_CALLS[w]} by {n} launch{'es' if n > 1 else ''}"
                                   for t, b, n, w in shapes))
        for key, seconds, done in self._builds.under_way():
            lines.append(shape(*key) + ("built in the background, installed by its next call" if done else
                                        f"building in the background for {seconds * 1e3:.0f} ms; its calls run "
                                        "torch's own module meanwhile"))
        return "\n".join(lines)

    def executor(self, steps: int, batch: int, varlen: bool, device: torch.device) -> Executor | None:
        """rnnplan's executor for calls of `steps` x `batch` on `device` (None where the shape runs
        torch's cuDNN call), from the cache or made now (then without timing candidates)."""
        return self._choice(steps, batch, varlen, device, None).chosen.executor

    def _choice(self, steps: int, batch: int, varlen: bool, device: torch.device, args) -> Choice:
        """What runs calls of `steps` x `batch` on `device`: from the cache, or chosen now (timed on
        `args` with autotune on a GPU); in background mode, while its build runs, the stand-in."""
        key = self._key(steps, batch, varlen, device)
        found = self._executors.get(key)
        if found is not None:
            self._counts[0] += 1
            self._executors.move_to_end(key)
            return found
        tune = self.autotune and args is not None and device.type == "cuda"
        if self.build == "background" and args is not None and not _capturing(device):
            made = self._builds.finished(key)  # (raises the build's error)
            if made is None:
                if key not in self._builds:
                    self._counts[1] += 1
                    self._builds.start(key, self._build_of(key, args, tune, later=True), device)
                return self._stand_in(device, key)
        else:
            self._counts[1] += 1
            self._builds.forget(key)  # (one under way since a call outside a capture: this one counts)
            made = self._build_of(key, args, tune)()
        built, timings, how = made
        built = finish_candidates(built, timings)  # a background build's captures, here
        calls = (lambda c: compiled_calls.timed_call(self, key, c, args)) if tune and self.fast_call else None
        choice = Choice(built[0], how, {}) if how and built else pick(built, timings, args, tune, calls)
        self._executors[key] = choice
        while len(self._executors) > 1 and self.cache_info().bytes > self.max_bytes:
            self._executors.popitem(last=False)
        self._refresh_fast()
        return choice

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
        # A repeat call at a cached fixed-length shape: checked, allocated and launched in C++
        # (rnnplan.compiled_calls); None for anything else. (is_compiling first: under torch.compile the
        # op below is what is traced.)
        if not torch.compiler.is_compiling():
            if self._fast is not None:
                done = self._fast(input, hx)
                if done is not None:
                    return done
            if self._fast_pending and compiled_calls.module() is not None:
                self._refresh_fast()
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
        instantiated = call.call._graph_exec is not None
        result = call(packed, data, h0, c0)
        if not instantiated and self.fast_call:  # its graph is now (compiled_calls.packed_launches)
            self._refresh_fast()
        return result

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


WHICH_CALLS = ("", " (given a state)", " (without a state)", " packed")  # the compiled call path's entries
_CACHES = frozenset({"_fast", "_fast_pending", "_executors", "_weights", "_shared", "_counts", "_builds", "_stand_ins",
                     "handle"})


def _cleared_after_load(module: CompiledRNN, keys) -> None:
    """load_state_dict's post hook: new buffers, so the executors made from the old ones go."""
    module.clear()


def _capturing(device: torch.device) -> bool:
    """Is the caller tracing (torch.compile) or capturing a CUDA graph? Then a build runs now: what the
    call records must be rnnplan's executor, not the stand-in."""
    return torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


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
