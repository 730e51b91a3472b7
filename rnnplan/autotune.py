"""What runs a call shape of `rnnplan.compile`, chosen by timing the candidates on the first call at
that shape, as `torch.backends.cudnn.benchmark` does: rnnplan's lowerings (persistent, graph) and
torch's own call of the module (cuDNN) captured in a CUDA graph, so that the compiled module is
never slower than what the user had. `Choice.describe()` says what was timed and what was kept;
`explain()` of the compiled module prints it.

Each candidate runs time-major torch tensors: `run(x, h0, c0, lengths) -> (out, h_n, c_n)` (c_n empty
but for LSTMs), on torch's current stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from rnnplan.timing import median_ms
from rnnplan.torch_calls import (
    graph_replay,
    graph_with_copies,
    outputs_ahead,
    state_pointers,
    stream_of,
    whole_tensor_copies,
)

# Calls timed per candidate (after two warm-ups): few, since the first call at a shape pays for them.
REPEATS = 5


class Candidate(NamedTuple):
    name: str  # "persistent", "graph" (rnnplan's lowerings), "recurrence" (the NumPy backend's) or "cudnn"
    run: Callable
    nbytes: int  # device memory it holds
    why: str  # why it is built as it is (the planner's reason, ...)
    executor: object = None  # rnnplan's Executor, for the lowerings


@dataclass
class Choice:
    chosen: Candidate
    how: str  # "autotuned", "autotune off", ...
    timings: dict[str, float | str] = field(default_factory=dict)  # ms, or why a candidate was not run

    @property
    def nbytes(self) -> int:
        return self.chosen.nbytes

    def describe(self) -> str:
        label = {"cudnn": "torch's cuDNN call in a CUDA graph", "recurrence": "the recurrence plan (one recurrent step)"
                 }.get(self.chosen.name, f"{self.chosen.name} lowering")
        timed = "; ".join(f"{k} {v:.3f} ms" if isinstance(v, float) else f"{k}: {v}" for k, v in self.timings.items())
        return f"{label} ({self.how}{': ' + timed if timed else ''})" + (f"; {self.chosen.why}" if self.chosen.why else "")


def choose(factories: dict[str, Callable[[], Candidate]], args: tuple, tune: bool) -> Choice:
    """Build the candidates (a factory may raise ValueError or RuntimeError: that one is not run and
    its reason is kept); with `tune`, time each on `args` and keep the fastest (the others are
    dropped, with their memory), else keep the first that builds."""
    built, timings = build_candidates(factories, tune)
    return pick(finish_candidates(built, timings), timings, args, tune)


def build_candidates(factories: dict[str, Callable], all_of_them: bool) -> tuple[list[tuple[str, object]], dict]:
    """([(name, what its factory made)], why each other was not built): every factory's, or up to the
    first that builds. A factory makes a Candidate, or (off the calling thread: `rnnplan.background`)
    a function that finishes it (its CUDA-graph captures) in the calling thread, `finish_candidates`."""
    built, timings = [], {}
    for name, make in factories.items():
        try:
            built.append((name, make()))
        except (ValueError, RuntimeError) as e:
            timings[name] = f"not run ({e})"
            continue
        if not all_of_them:
            break
    return built, timings


def finish_candidates(built: list[tuple[str, object]], timings: dict) -> list[Candidate]:
    """The Candidates of `build_candidates`' result, each function among them called (in the calling
    thread); one that fails is dropped and its reason kept in `timings`."""
    done = []
    for name, made in built:
        try:
            done.append(made if isinstance(made, Candidate) else made())
        except (ValueError, RuntimeError) as e:
            timings[name] = f"not run ({e})"
    return done


def pick(built: list[Candidate], timings: dict, args: tuple, tune: bool, calls=None) -> Choice:
    """The Choice among `built` (`build_candidates`' result): with `tune`, timed on `args`, each by
    `calls(candidate)` where that gives a function of no arguments (how its calls will be made: the
    compiled call path), else by its `run(*args)`."""
    if not built:
        raise RuntimeError("no candidate can run this shape: " + "; ".join(f"{k}: {v}" for k, v in timings.items()))
    if not tune:
        return Choice(built[0], "autotune off", {})
    if len(built) == 1:
        return Choice(built[0], "the only candidate", timings)
    timings = dict(timings)
    with torch.no_grad():
        for c in built:
            call = calls(c) if calls is not None else None
            timings[c.name] = median_ms((lambda i, run=c.run: run(*args)) if call is None else (lambda i: call()),
                                        REPEATS, warmup=2)
    timed = sorted((c.name for c in built), key=timings.get)  # fastest first, then those not run
    best = next(c for c in built if c.name == timed[0])
    order = timed + [k for k in timings if k not in timed]
    return Choice(best, f"autotuned, fastest of {len(built)}", {k: timings[k] for k in order})


def _kept_graph() -> torch.cuda.CUDAGraph:
    """A CUDA graph whose cudaGraph_t torch keeps after the capture (`keep_graph`, torch 2.6 on), so
    that a copy of it can take the call's copies as nodes; a plain one on an older torch."""
    try:
        return torch.cuda.CUDAGraph(keep_graph=True)
    except TypeError:
        return torch.cuda.CUDAGraph()


class CudnnGraph:
    """torch's own forward of the module (cuDNN on a GPU) for one (T, B), captured once in a CUDA
    graph on static inputs: a call copies its input and state in, replays, and returns copies of the
    outputs (the graph's own are overwritten by the next call): by one launch of a copy of the graph
    with the copies as its first and last nodes where it has few nodes (`one_launch`), else by three.
    With `stateless` a second capture, `twin`, runs the calls that give no state: cuDNN's graph
    captured without h0/c0 reads none (on the H200, against the same graph fed zeros: 1.3% faster
    at LSTM 4x512 B64 fp32, 8% at B1 T4, within 1% either way on other rows), at the cost of a
    second capture, its outputs and its workspace. It takes `module` over (its weights are
    flattened for cuDNN in place)."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, lstm: bool, layers: int, hidden: int,
                 proj: int = 0, capture: bool = True, stateless: bool = True):
        self.module = module.eval()
        self.module.flatten_parameters()
        self.lstm = lstm
        self.x = torch.zeros_like(x)
        self.h0 = x.new_zeros((layers, x.shape[1], proj or hidden))  # (with a projection, h is narrower than c)
        self.c0 = x.new_zeros((layers, x.shape[1], hidden)) if lstm else None
        self.state = (self.h0, self.c0) if lstm else self.h0
        self.stateless, self.twin = stateless, None
        with torch.no_grad():
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for state in (self.state, None) if stateless else (self.state,):
                    for _ in range(2):  # cuDNN picks and allocates its workspace outside the capture
                        self.module(self.x, state)
            torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = None
        if capture:
            self.capture()

    def capture(self) -> None:
        """The capture of torch's call (and the twin's), and what depends on it (`capture=False`
        leaves it to this: a build off the calling thread must not capture, `rnnplan.background`)."""
        if self.graph is not None:
            return
        self._capture(self.state)
        held = [*self.module.parameters(), self.x, self.h0, self.c0]
        self.nbytes = sum(t.numel() * t.element_size() for t in held if t is not None) + self.outputs_nbytes
        if self.stateless:
            twin = self.twin = object.__new__(CudnnGraph)  # the same module and static input, no state
            twin.module, twin.lstm, twin.x, twin.h0, twin.c0, twin.state = self.module, self.lstm, self.x, None, None, None
            twin.stateless, twin.twin, twin.graph = False, None, None
            twin._capture(None)
            twin.nbytes = self.nbytes
            self.nbytes += twin.outputs_nbytes

    def _capture(self, state) -> None:
        with torch.no_grad():
            graph = _kept_graph()
            # thread_local: calls on other threads may go on while torch's call is captured.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.out, st = self.module(self.x, state)
            if hasattr(graph, "instantiate"):
                graph.instantiate()
        self.graph = graph
        self.h_n, self.c_n = st if self.lstm else (st, None)
        self.device = self.x.device.index
        self.copies = self._copy_jobs(self.device)
        self.replay = graph_replay(self.graph, self.device)
        self.one_launch, self.ahead = self._one_launch()
        self.outputs_nbytes = sum(t.numel() * t.element_size() for t in (self.out, self.h_n, self.c_n) if t is not None)
        self.outputs_nbytes += self.ahead.nbytes if self.ahead is not None else 0

    def _one_launch(self):
        """(GraphWithKernels, OutputsAhead): the copies in and out as nodes of a copy of the captured
        graph, one launch a call (`backends.pointer_call.between_copies`), where torch keeps the
        cudaGraph_t (`keep_graph`) and the copies are copies.cu's; else (None, None)."""
        raw = getattr(self.graph, "raw_cuda_graph", None)
        if self.copies is None or raw is None:
            return None, None
        try:
            graph = int(raw())
        except RuntimeError:  # a torch that did not keep it
            return None, None
        with torch.cuda.device(self.device):
            one = graph_with_copies(graph, self.copies) if graph else None
        if one is None:
            return None, None
        shapes = (tuple(self.out.shape), tuple(self.h_n.shape), tuple(self.c_n.shape) if self.lstm else (0,))
        return one, outputs_ahead(shapes, self.out.element_size())

    def _copy_jobs(self, device: int):
        """(in, out): the copies into the graph's inputs and out of its outputs, one launch of
        backends/cuda/copies.cu each way (the call's host time, which runs ahead of the replay, is a
        few microseconds instead of seven torch calls'); None without CuPy, or where cuDNN's outputs
        are not contiguous (then torch's copies)."""
        ins, outs = [(self.x, 0), (self.h0, 1), (self.c0, 2)], [(self.out, 4), (self.h_n, 5), (self.c_n, 6)]
        if not all(t.is_contiguous() for t, _ in ins + outs if t is not None):
            return None
        return whole_tensor_copies(device, [(t, w) for t, w in ins if t is not None],
                                   [(t, w) for t, w in outs if t is not None])

    def __call__(self, x, h0, c0, lengths):
        if h0 is None and self.twin is not None:
            return self.twin(x, h0, c0, lengths)
        if torch.cuda.is_current_stream_capturing():  # the caller's own graph holds torch's call itself
            state = None if h0 is None else ((h0, c0) if self.lstm else h0)
            out, st = self.module(x, state)
            h_n, c_n = st if self.lstm else (st, st.new_empty(0))
            return out, h_n, c_n
        if self.one_launch is not None and torch.cuda.current_device() == self.device:  # the driver's context
            stream = stream_of(x)
            outs = self.ahead.take(x, stream)
            self.one_launch.launch(stream, (x.data_ptr(), *state_pointers(h0, c0), 0, *(t.data_ptr() for t in outs)))
            self.ahead.refill(x, stream)
            return outs
        if self.copies is not None:
            copy_in, copy_out = self.copies
            stream = stream_of(x)
            copy_in(stream, x.data_ptr(), *state_pointers(h0, c0), 0)
            self.replay(stream)
            out, h_n = x.new_empty(self.out.shape), x.new_empty(self.h_n.shape)  # while the graph runs
            c_n = x.new_empty(self.c_n.shape if self.lstm else (0,))
            copy_out(stream, out.data_ptr(), h_n.data_ptr(), c_n.data_ptr() if self.lstm else 0, 0)
            return out, h_n, c_n
        self.x.copy_(x)
        for static, given in ((self.h0, h0), (self.c0, c0)):
            if static is not None:
                static.zero_() if given is None else static.copy_(given)
        self.graph.replay()
        return self.out.clone(), self.h_n.clone(), self.c_n.clone() if self.lstm else self.h_n.new_empty(0)
