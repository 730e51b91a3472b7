"""Kernel and CUDA-graph launches through the CUDA driver's C API (ctypes into libcuda), for the
per-call path of `rnnplan.compile` (`backends/pointer_call.py`): CuPy's launch of a kernel converts
its arguments and builds stream objects (5-10 us of Python a launch), while a ctypes call with its
argument buffer built once costs 1-2 (BENCHMARKS.md, host time a call).

`FixedLaunch` is one kernel whose arguments are 64-bit words: a call writes the words that change and
launches it on a raw stream. `launch_graph` replays an instantiated CUDA graph; `GraphWithKernels`
replays a copy of one with kernels ahead of and after it, whose arguments a call sets. All act in the
context current on the calling thread: callers check that it is their device's (`PointerCall` takes CuPy's launches when it is not). `why_not` says why the driver path
is not there (no libcuda, a CuPy without the handles read here); callers then take CuPy's.
Not thread-safe: a `FixedLaunch` has one argument buffer (an executor's calls are one at a time).
"""

from __future__ import annotations

import ctypes

_LIB: ctypes.CDLL | None = None
_MISSING: str | None = None


def _load() -> ctypes.CDLL | None:
    global _LIB, _MISSING
    if _LIB is None and _MISSING is None:
        for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            u, p = ctypes.c_uint, ctypes.c_void_p
            lib.cuLaunchKernel.argtypes = [p, u, u, u, u, u, u, u, p, p, p]
            lib.cuLaunchKernel.restype = ctypes.c_int
            lib.cuGraphLaunch.argtypes = [p, p]
            lib.cuGraphLaunch.restype = ctypes.c_int
            lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
            lib.cuGetErrorName.restype = ctypes.c_int
            # (the unversioned symbols: the CUDA 11 ABI of each, which every later driver keeps)
            for name, args in (("cuFuncSetAttribute", [p, ctypes.c_int, ctypes.c_int]),
                               ("cuOccupancyMaxActiveClusters", [p, p, p]), ("cuGraphClone", [p, p]),
                               ("cuGraphGetNodes", [p, p, p]), ("cuGraphGetEdges", [p, p, p, p]),
                               ("cuGraphAddKernelNode", [p, p, p, ctypes.c_size_t, p]),
                               ("cuGraphAddDependencies", [p, p, p, ctypes.c_size_t]),
                               ("cuGraphInstantiateWithFlags", [p, p, ctypes.c_ulonglong]),
                               ("cuGraphExecKernelNodeSetParams", [p, p, p]), ("cuGraphExecDestroy", [p]),
                               ("cuGraphDestroy", [p])):
                getattr(lib, name).argtypes = args
                getattr(lib, name).restype = ctypes.c_int
            _LIB = lib
            break
        else:
            _MISSING = "the CUDA driver library (libcuda) could not be loaded"
    return _LIB


def why_not() -> str | None:
    """Why the driver path cannot be taken here (None: it can)."""
    _load()
    return _MISSING


def _check(rc: int, what: str) -> None:
    if rc:
        name = ctypes.c_char_p()
        _LIB.cuGetErrorName(rc, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: {(name.value or b'CUDA error %d' % rc).decode()}")


def function_handle(kernel) -> int | None:
    """The CUfunction of a CuPy RawKernel (compiled for the current device), or None where this CuPy
    does not expose it."""
    function = getattr(kernel, "kernel", kernel)  # RawKernel.kernel is its cupy.cuda.function.Function
    ptr = getattr(function, "ptr", None)
    return int(ptr) if ptr else None


def graph_handle(graph) -> int | None:
    """The cudaGraphExec_t of an instantiated CuPy Graph (None before its first launch, or where this
    CuPy does not expose it)."""
    ptr = getattr(graph, "graphExec", None)
    return int(ptr) if ptr else None


class FixedLaunch:
    """`launch(stream, grid, *values)`: kernel `function` (a CUfunction) at `grid` (x, y) blocks of
    `block` threads, its arguments the 64-bit `words` with `values` at the positions `changing` (a
    parameter narrower than 64 bits reads the low bytes of its word: little-endian hosts, as CUDA's)."""

    def __init__(self, function: int, block: int, words: list[int], changing: tuple[int, ...]):
        lib = _load()
        if lib is None:
            raise RuntimeError(_MISSING)
        self._launch, self.function, self.block = lib.cuLaunchKernel, function, block
        n = len(words)
        self.args = (ctypes.c_uint64 * n)(*words)
        base = ctypes.addressof(self.args)
        self.params = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])  # what cuLaunchKernel reads
        run = changing and changing == tuple(range(changing[0], changing[0] + len(changing)))
        self.span = slice(changing[0], changing[0] + len(changing)) if run else None  # one slice write
        self.changing = changing

    def write(self, values) -> None:
        """The changing words, in `changing`'s order."""
        if self.span is not None:
            self.args[self.span] = values
        else:
            for i, v in zip(self.changing, values):
                self.args[i] = v

    def __call__(self, stream: int, grid: tuple[int, int], *values: int) -> None:
        self.write(values)
        _check(self._launch(self.function, grid[0], grid[1], 1, self.block, 1, 1, 0, stream, self.params, None),
               "cuLaunchKernel")


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig, no attributes (the kernel's own cluster dims)
    _fields_ = [("grid_x", ctypes.c_uint), ("grid_y", ctypes.c_uint), ("grid_z", ctypes.c_uint),
                ("block_x", ctypes.c_uint), ("block_y", ctypes.c_uint), ("block_z", ctypes.c_uint),
                ("shared_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p), ("attrs", ctypes.c_void_p),
                ("num_attrs", ctypes.c_uint)]


NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14  # CUfunction_attribute: clusters of more than 8 blocks
PORTABLE_CLUSTER_BLOCKS = 8


def check_clusters(kernel, blocks: int, threads: int, shared_bytes: int, cluster_blocks: int, clusters: int) -> None:
    """Let the CuPy RawKernel `kernel`, compiled with `__cluster_dims__(cluster_blocks)`, run clusters of
    more than 8 blocks, and check that `clusters` of them, `blocks` blocks of `threads` with
    `shared_bytes` each, are resident at once (cuOccupancyMaxActiveClusters): a persistent kernel's
    blocks wait on each other, so a cluster left waiting for an SM would never start. RuntimeError
    naming both counts where they are not (or where the driver cannot be asked)."""
    function, lib = function_handle(kernel), _load()
    if function is None or lib is None:
        raise RuntimeError(f"the cluster hand-off needs the CUDA driver's API: {_MISSING or 'no CUfunction from CuPy'}")
    if cluster_blocks > PORTABLE_CLUSTER_BLOCKS:
        _check(lib.cuFuncSetAttribute(ctypes.c_void_p(function), NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
               "cuFuncSetAttribute(NON_PORTABLE_CLUSTER_SIZE_ALLOWED)")
    found = ctypes.c_int()
    config = _LaunchConfig(blocks, 1, 1, threads, 1, 1, shared_bytes, None, None, 0)
    _check(lib.cuOccupancyMaxActiveClusters(ctypes.byref(found), ctypes.c_void_p(function), ctypes.byref(config)),
           "cuOccupancyMaxActiveClusters")
    if found.value < clusters:
        raise RuntimeError(f"the persistent kernel's {clusters} clusters of {cluster_blocks} blocks "
                           f"({shared_bytes / 1024:.0f} KiB of shared memory a block) cannot all be resident: "
                           f"the device holds {found.value} at once")


def launch_graph(graph_exec: int, stream: int) -> None:
    _check(_LIB.cuGraphLaunch(graph_exec, stream), "cuGraphLaunch")


class _KernelNodeParams(ctypes.Structure):  # CUDA_KERNEL_NODE_PARAMS (v1, as cuGraphAddKernelNode takes it)
    _fields_ = [("func", ctypes.c_void_p), ("grid_x", ctypes.c_uint), ("grid_y", ctypes.c_uint),
                ("grid_z", ctypes.c_uint), ("block_x", ctypes.c_uint), ("block_y", ctypes.c_uint),
                ("block_z", ctypes.c_uint), ("shared_bytes", ctypes.c_uint), ("params", ctypes.c_void_p),
                ("extra", ctypes.c_void_p)]


def graph_nodes(graph: int) -> int:
    """How many nodes the CUDA graph (a CUgraph) has."""
    n = ctypes.c_size_t()
    _check(_LIB.cuGraphGetNodes(graph, None, ctypes.byref(n)), "cuGraphGetNodes")
    return n.value


def _ends(lib, graph) -> tuple[list[int], list[int]]:
    """The roots (no dependencies) and leaves (no dependents) of the CUgraph `graph`."""
    ref, n, e = ctypes.byref, ctypes.c_size_t(), ctypes.c_size_t()
    _check(lib.cuGraphGetNodes(graph, None, ref(n)), "cuGraphGetNodes")
    nodes = (ctypes.c_void_p * n.value)()
    _check(lib.cuGraphGetNodes(graph, nodes, ref(n)), "cuGraphGetNodes")
    _check(lib.cuGraphGetEdges(graph, None, None, ref(e)), "cuGraphGetEdges")
    froms, tos = (ctypes.c_void_p * e.value)(), (ctypes.c_void_p * e.value)()
    if e.value:
        _check(lib.cuGraphGetEdges(graph, froms, tos, ref(e)), "cuGraphGetEdges")
    has_in, has_out = set(tos), set(froms)
    return [v for v in nodes if v not in has_in], [v for v in nodes if v not in has_out]


class GraphWithKernels:
    """A copy of the CUDA graph `graph` (a CUgraph, which stays as it is) with the kernel of a
    `FixedLaunch` as a node ahead of all the graph's roots (`before`) and/or one after all its leaves
    (`after`), each given as (FixedLaunch, grid), instantiated: `launch(stream, before_values,
    after_values)` writes the changing arguments, sets them on the nodes
    (cuGraphExecKernelNodeSetParams reads them then) and launches the copy: one launch in the stream
    instead of three (a call's copy-in kernel, its plan, its copy-out kernel), so that the plan starts
    a launch sooner and a call costs two launches less of host time."""

    def __init__(self, graph: int, before: tuple[FixedLaunch, tuple[int, int]] | None,
                 after: tuple[FixedLaunch, tuple[int, int]] | None = None):
        lib, ref = _load(), ctypes.byref
        self._lib = lib
        self.graph, self.exec = ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.cuGraphClone(ref(self.graph), graph), "cuGraphClone")
        roots, leaves = _ends(lib, self.graph)
        self.nodes = []  # (node, its CUDA_KERNEL_NODE_PARAMS, the FixedLaunch), before then after
        for end, linked, ahead in ((before, roots, True), (after, leaves, False)):
            if end is None:
                self.nodes.append(None)
                continue
            kernel, grid = end
            params = _KernelNodeParams(kernel.function, grid[0], grid[1], 1, kernel.block, 1, 1, 0,
                                       ctypes.addressof(kernel.params), None)
            node = ctypes.c_void_p()
            _check(lib.cuGraphAddKernelNode(ref(node), self.graph, None, 0, ref(params)), "cuGraphAddKernelNode")
            if linked:
                ours = (ctypes.c_void_p * len(linked))(*[node.value] * len(linked))
                theirs = (ctypes.c_void_p * len(linked))(*linked)
                _check(lib.cuGraphAddDependencies(self.graph, *((ours, theirs) if ahead else (theirs, ours)),
                                                  len(linked)), "cuGraphAddDependencies")
            self.nodes.append((node, params, ref(params), kernel))
        _check(lib.cuGraphInstantiateWithFlags(ref(self.exec), self.graph, 0), "cuGraphInstantiateWithFlags")

    def launch(self, stream: int, before_values=(), after_values=()) -> None:
        for end, values in zip(self.nodes, (before_values, after_values)):
            if end is not None and end[3].changing:  # (a node whose arguments never change is set once)
                node, _, params, kernel = end
                kernel.write(values)
                _check(self._lib.cuGraphExecKernelNodeSetParams(self.exec, node, params),
                       "cuGraphExecKernelNodeSetParams")
        _check(self._lib.cuGraphLaunch(self.exec, stream), "cuGraphLaunch")

    def __del__(self):
        try:
            self._lib.cuGraphExecDestroy(self.exec)
            self._lib.cuGraphDestroy(self.graph)
        except Exception:  # noqa: BLE001 (at interpreter exit the library may be gone: nothing to free then)
            pass
