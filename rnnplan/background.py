"""Executors built off the calling thread: `rnnplan.compile(module, build="background")`.

A new call shape costs its set-up: the plan, the executor's buffers, a CUDA-graph capture (the graph
lowering plans one Python object a kernel, 0.1-0.3 s at 100 steps of the paper configuration), and
for a new batch of the persistent lowering a kernel compile (seconds); autotuning builds every
candidate. A server cannot hold its stream of requests for that. In background mode the first call
at a shape hands its build to one worker thread and runs on a `StandIn`: the network as torch runs
it (cuDNN on a GPU), which needs no set-up at any shape and returns torch's own results, at torch
eager's speed (on the H200 8.5-12 ms a call of the paper configuration, rnnplan's 1.2-2.2). So does
every call at that shape until the build is done; the first call after it installs the executor:
it makes the build's CUDA-graph captures (a capture on another thread fails any device-wide
synchronization the caller makes meanwhile, `torch.cuda.synchronize()`, and is failed by it; the
graph lowering's 800 steps at T 100 take milliseconds to capture) and, where autotuning built
several candidates, times them (in the calling thread, so that no timing shares the GPU with other
calls). A build's error is raised by the next call at its shape, as blocking mode raises it at the
first. `CompiledRNN.wait()` waits for the builds under way. Do not capture a CUDA graph of your own
while a build is under way (wait first): a global-mode capture forbids the worker's allocations.

One worker for the process: builds run one after another, take one core, and never race each other
for the plan cache or the kernel caches. The worker's Python (the planner) holds the GIL whenever the
caller's thread lets go of it (each torch call on a GPU does, a few times), and the caller gets it
back only at the interpreter's switch interval, 5 ms by default: calls on the stand-in took 45 ms
instead of 11 on the H200 while the paper configuration's graph lowering built. So while builds are
under way the switch interval is `SWITCH_INTERVAL_S` (50 us), and back to what it was after the last
(this project's CPU, a call of 8 waits of 0.2 ms beside a plan: 43 ms at 5 ms, 3.6 at 50 us, 2.3 alone).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for

import torch

from rnnplan.packing import host_lengths

BUILDS = ("blocking", "background")
SWITCH_INTERVAL_S = 5e-5  # the interpreter's switch interval while builds are under way

_POOL: ThreadPoolExecutor | None = None
_LOCK = threading.Lock()
_RUNNING = [0, None]  # builds submitted and not done, the switch interval before the first of them


def _submit(build: Callable[[], object]) -> Future:
    """`build` on the process's worker, with the short switch interval until every build is done."""
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnplan-build")
        if _RUNNING[0] == 0:
            _RUNNING[1] = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        _RUNNING[0] += 1
    future = _POOL.submit(build)
    future.add_done_callback(_done)  # (also when cancelled)
    return future


def _done(_future) -> None:
    with _LOCK:
        _RUNNING[0] -= 1
        if _RUNNING[0] == 0:
            sys.setswitchinterval(_RUNNING[1])


class StandIn:
    """torch's own forward of the network (eager; cuDNN on a GPU), called as a candidate is:
    `(x, h0, c0, lengths) -> (out, h_n, c_n)` on time-major x, c_n empty but for LSTMs. Variable
    lengths go through torch's packing (outputs zero past a sequence's end, the state at its last
    step): a mask on the device is read back to the host for it, a synchronization that only calls
    waiting for their build pay."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, lstm: bool):
        self.module, self.lstm = module.eval(), lstm

    def __call__(self, x, h0, c0, lengths):
        state = None if h0 is None else ((h0, c0) if self.lstm else h0)
        with torch.no_grad():
            lengths = host_lengths(lengths)
            if lengths is None or min(lengths) == x.shape[0]:
                out, st = self.module(x, state)
            else:
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.as_tensor(lengths), enforce_sorted=False)
                out, st = self.module(packed, state)
                out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])[0]
        h_n, c_n = st if self.lstm else (st, x.new_empty(0))
        return out, h_n, c_n


class Builds:
    """The builds under way of one compiled module, by call-shape key, on the process's worker."""

    def __init__(self):
        self._futures: dict[tuple, Future] = {}
        self._started: dict[tuple, float] = {}

    def __contains__(self, key: tuple) -> bool:
        return key in self._futures

    def __len__(self) -> int:
        return len(self._futures)

    def start(self, key: tuple, build: Callable[[], object], device: torch.device) -> None:
        """Run `build()` on the worker, on `device` (a GPU is the worker's current device while it
        runs, as it is the caller's: torch sets the runtime's, which CuPy reads)."""
        def on_device():
            if device.type != "cuda":
                return build()
            with torch.cuda.device(device):
                return build()
        self._futures[key] = _submit(on_device)
        self._started[key] = time.perf_counter()

    def finished(self, key: tuple):
        """The result of `key`'s build once it is done (then forgotten here), raising the build's
        error; None while it runs or where none was started."""
        future = self._futures.get(key)
        if future is None or not future.done():
            return None
        del self._futures[key], self._started[key]
        return future.result()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every build under way is done (or `timeout` seconds); whether all are."""
        _, running = wait_for(list(self._futures.values()), timeout)
        return not running

    def under_way(self) -> list[tuple[tuple, float, bool]]:
        """(key, seconds since it started, done) of each build not yet installed."""
        now = time.perf_counter()
        return [(key, now - self._started[key], f.done()) for key, f in self._futures.items()]

    def forget(self, key: tuple) -> None:
        """Forget `key`'s build (cancelled if not started; its result dropped if running): its shape
        was built another way (in a stream capture, which builds in the calling thread)."""
        future = self._futures.pop(key, None)
        if future is not None:
            future.cancel()
            del self._started[key]

    def clear(self) -> None:
        """Forget every build: those not started are cancelled, a running one's result is dropped."""
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._started.clear()
