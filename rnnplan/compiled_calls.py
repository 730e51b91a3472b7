"""The compiled call path of `rnnplan.compile` (`csrc/compiled_calls.cpp`, a torch C++ extension): a
repeat call at a cached GPU shape goes from forward into C++, which checks it, allocates its
outputs and launches, with no Python between (issue 17, item 4: the Python path costs 18-25 us of
host time a call, most of it interpreter work around one allocation and the driver's calls). A
fixed-length call (time-major, batch-first or strided) is one graph launch with the copy-in node's
pointers set, or the copy kernels around the graph; with cuDNN's graph captured twice
(`autotune.CudnnGraph.twin`), calls with and without a state take their own entries; a
PackedSequence at a cached masked shape is packed.cu's two kernels around the plan's graph and
the states' copies, its layout made in C++ and copied from pinned memory.

The extension is compiled once per machine by `torch.utils.cpp_extension` (about 20-40 s, ninja and
a C++ compiler needed; kept in torch's extension directory, rebuilt when the source changes): on a
worker thread started by the first GPU executor a compiled module installs (`start`), or ahead of
time by `load()` (`rnnplan build-calls`); calls take the Python path until it is loaded, and where
it cannot be built (`why_not` says why; `CompiledRNN.explain()` repeats it).
`RNNPLAN_COMPILED_CALLS=0` in the environment turns it off for the process (no build is tried: for
hosts without a compiler, or whose extension directory is not writable). `table(compiled)` makes
the C++ side's list of a module's GPU shapes; the module remakes it whenever its
executor cache changes, so an entry never outlives the executor whose graph it launches.
`timed_call` is a candidate's call as this path will make it, for autotune to time.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from importlib.resources import files

NAME = "rnnplan_compiled_calls"
OFF = "RNNPLAN_COMPILED_CALLS"  # "0" turns the compiled call path off
_lock = threading.Lock()  # held by a build
_start_lock = threading.Lock()  # held while the worker is started
_state: dict = {"module": None, "why": "not built yet", "thread": None, "started": None}


def module():
    """The loaded extension, or None."""
    return _state["module"]


def why_not() -> str | None:
    """Why calls take the Python path (None: the compiled one is loaded)."""
    if _state["module"] is not None:
        return None
    started = _state["started"]
    if _state["thread"] is not None and _state["thread"].is_alive():
        return f"the compiled call path is building ({time.monotonic() - started:.0f} s so far)"
    return _state["why"]


def load():
    """Build (where it is not yet) and load the extension, in this thread; the module, or None with
    `why_not()` saying why."""
    with _lock:
        if _state["module"] is not None:
            return _state["module"]
        if os.environ.get(OFF) == "0":
            _state["why"] = f"the compiled call path is turned off ({OFF}=0)"
            return None
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            _state["why"] = "the compiled call path needs ninja (pip install ninja) to build"
            return None
        source = files("rnnplan") / "csrc" / "compiled_calls.cpp"
        try:
            _state["module"] = cpp_extension.load(NAME, sources=[str(source)], extra_cflags=["-O2"], verbose=False)
        except Exception as e:  # noqa: BLE001 (a compiler's failure takes many forms; the Python path stays)
            lines = str(e).strip().splitlines() or [type(e).__name__]
            said = next((line for line in lines if "error:" in line), lines[-1])  # (the compiler's first error)
            _state["why"] = f"the compiled call path did not build: {said.strip()[:300]}"
            return None
        _state["why"] = None
        return _state["module"]


def start() -> None:
    """`load()` on a worker thread, once. Never waits for a build under way (which holds `load`'s
    lock for its 20-40 s): a compiled module's call that caches a new shape calls this."""
    with _start_lock:
        if _state["thread"] is not None or _state["module"] is not None:
            return
        _state["started"] = time.monotonic()
        _state["thread"] = threading.Thread(target=load, name="rnnplan-compiled-calls-build", daemon=True)
        _state["thread"].start()


def driver_functions() -> tuple[int, ...] | None:
    """The addresses of cuGraphExecKernelNodeSetParams, cuGraphLaunch, cuStreamIsCapturing and
    cuLaunchKernel in libcuda, or None without it."""
    from rnnplan.backends import driver_launch

    if driver_launch.why_not() is not None:
        return None
    lib = driver_launch._load()
    return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in
                 ("cuGraphExecKernelNodeSetParams", "cuGraphLaunch", "cuStreamIsCapturing", "cuLaunchKernel"))


def _fixed(launch, grid: tuple[int, int], changing: tuple[int, ...], first: int) -> list[int] | None:
    """A driver_launch.FixedLaunch as the C++ side takes a kernel: (function, grid x, grid y, block,
    params, the address of its word `first`, from which the C++ side writes the changing ones), or
    None without the driver's launch or where other words change a call than those it writes."""
    if launch is None or launch.changing != changing:
        return None
    return [launch.function, *grid, launch.block, ctypes.addressof(launch.params),
            ctypes.addressof(launch.args) + 8 * first]


def _kernel(copies) -> list[int] | None:
    """A CopyJobs launch (copies.cu: its four changing words p0-p3)."""
    return _fixed(copies.driver, copies.grid, (3, 4, 5, 6), 3)


def launches(choice):
    """How a cached choice's call is launched, as the C++ side takes it: (graph exec, copy-in node,
    its params, its words, [copy-in kernel, copy-out kernel], the set its calls clear or None): one
    graph launch with the copies as nodes (node set, no kernels), or the copy kernels around the
    graph (node 0); "later" where the graph is not instantiated yet; None where neither holds
    (the CPU, a masked plan, CuPy's launches)."""
    return _launches(choice.chosen.run)


def _launches(run):
    call = getattr(run, "call", None)  # by_pointers' PointerCall; else the cuDNN candidate itself
    zeroed = getattr(getattr(call, "impl", None), "_zeroed_states", None)
    one = getattr(call if call is not None else run, "one_launch", None)
    if one is not None:
        if one.nodes[0] is None or one.nodes[0][3].changing != tuple(range(3, 10)):
            return None
        node, params, _, kernel = one.nodes[0]
        return one.exec.value, node.value, ctypes.addressof(params), ctypes.addressof(kernel.args) + 8 * 3, [], zeroed
    if call is not None:  # three launches of a plan's graph (PointerCall.start, finish)
        copies = (call.copy_in, call.copy_out)
        if call._graph_exec is None:
            return "later"  # (CuPy instantiates a graph at its first launch)
        graph_exec = call._graph_exec
    else:  # the cuDNN candidate's (CudnnGraph: copies, then torch's graph by the driver)
        copies, raw = getattr(run, "copies", None), getattr(getattr(run, "graph", None), "raw_cuda_graph_exec", None)
        if copies is None or raw is None:
            return None
        graph_exec = int(raw())
    kernels = [_kernel(c) for c in copies]
    if not graph_exec or None in kernels:
        return None
    return graph_exec, 0, 0, 0, kernels, zeroed


def packed_launches(choice):
    """How a cached masked choice's packed calls are launched (torch_calls.packed_by_pointers), as
    the C++ side takes them: (graph exec, unpack, repack, states-in copy or [], states-out copy or
    [], a packed output row's bytes, the set its calls clear); None where the choice takes no packed
    calls by pointers, or its graph is not instantiated yet: CuPy does that at its first launch,
    which a masked plan's padded calls by one launch never make, so the module remakes its table
    after its first packed call instead (`CompiledRNN._packed_repeat`) of waiting for it."""
    run = choice.chosen.run
    call = getattr(run, "call", None)
    if getattr(run, "packed", None) is None or call is None or call.packing is None or call._graph_exec is None:
        return None
    unpack, repack = call.packing
    # packed.cu's kernels: their changing words scattered, written from the first (the repack's grid
    # is made a call, from the rows)
    kernels = [_fixed(unpack.driver, call._unpack_grid, (0, 3, 4, 5), 0),
               _fixed(repack.driver, (0, 1), (1, 2, 3, 4, 6), 0)]
    states = [[] if c is None else _kernel(c) for c in (call.states_in, call.states_out)]
    if None in kernels or None in states:
        return None
    return call._graph_exec, *kernels, *states, call._out_row_bytes, call.impl._zeroed_states


def table(compiled):
    """The C++ side's table of `compiled`'s shapes (fixed-length and packed) on its buffers' CUDA
    device, with whether some shape waits for its graph's instantiation (its first launch), or
    (None, whether any would) where there are none or the extension is not loaded."""
    return _table(compiled, list(compiled._executors.items()), compiled._executors.move_to_end, compiled._counts)


def timed_call(compiled, key: tuple, candidate, args: tuple):
    """A function of no arguments making `candidate`'s call of `args` (x, h0, c0, lengths) as the
    compiled call path will make it once `candidate` is cached at `key` (autotune times that), or
    None where that path would not take it."""
    from rnnplan.autotune import Choice

    x, h0, c0, lengths = args
    if lengths is not None or module() is None:  # (before the run below: nothing would take it)
        return None
    candidate.run(*args)  # (a plan's CUDA graph is instantiated at its first launch)
    calls, _ = _table(compiled, [(key, Choice(candidate, "timed"))], lambda key: None, [0, 0])
    if calls is None:
        return None
    hx = None if h0 is None else ((h0, c0) if compiled.template.cell == "lstm" else h0)
    if calls(x, hx) is None:
        return None
    return lambda: calls(x, hx)


def _table(compiled, choices: list, move_to_end, counts):
    t = compiled.template
    want = compiled._buffers["weight_hh_l0"]
    if not want.is_cuda:
        return None, False
    ext, functions = module(), driver_functions()
    if ext is None or functions is None:  # (nothing to wait for: no graph is ever taken without these)
        return None, False
    import torch  # (loaded: the extension is torch's)

    # (key, choice, which calls: 0 every one, 1 those given a state, 2 those without; launches): a
    # cuDNN candidate with a stateless twin (autotune.CudnnGraph) makes two entries of one shape.
    found, packed = [], []
    for key, choice in choices:
        if key[3] != want.device:
            continue
        if key[2]:  # a masked plan: its packed calls
            packed.append((key, choice, packed_launches(choice)))
            continue
        twin = getattr(choice.chosen.run, "twin", None)
        found.append((key, choice, 0 if twin is None else 1, launches(choice)))
        if twin is not None:
            found.append((key, choice, 2, _launches(twin)))
    later = any(entry[-1] == "later" for entry in found)
    found = [entry for entry in found if entry[3] is not None and entry[3] != "later"]
    packed = [entry for entry in packed if entry[2] is not None]
    if not found and not packed:
        return None, later
    lstm, layers = t.cell == "lstm", t.num_layers * t.directions
    calls = ext.FastCalls(want.new_empty(0), lstm, t.batch_first, layers, t.input_size, t.output_size,
                          t.hidden_size, *functions, move_to_end, counts, compiled.bucket or 0,
                          torch.nn.utils.rnn.PackedSequence)
    for key, choice, which, (graph_exec, node, params, words, kernels, zeroed) in found:
        steps, batch = key[0], key[1]
        shapes = [[steps, batch, t.directions * t.output_size], [layers, batch, t.output_size],
                  [layers, batch, t.hidden_size] if lstm else [0]]
        calls.add(steps, batch, graph_exec, node, params, words, kernels, key, choice, zeroed, shapes, which)
    for key, choice, (graph_exec, unpack, repack, states_in, states_out, row_bytes, zeroed) in packed:
        calls.add_packed(key[0], key[1], graph_exec, unpack, repack, states_in, states_out, row_bytes, key, choice,
                         zeroed)
    return calls, later
