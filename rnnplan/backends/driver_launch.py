"""Kernel and CUDA-graph launches through the CUDA driver's C API (ctypes into libcuda), for the
per-call path of `rnnplan.compile` (`backends/pointer_call.py`): CuPy's launch of a kernel converts
its arguments and builds stream objects (5-10 us of Python a launch), while a ctypes call with its
argument buffer built once costs 1-2 (BENCHMARKS.md, host time a call).

`FixedLaunch` is one kernel at a fixed grid and block whose arguments are 64-bit words: a call writes
the words that change and launches it on a raw stream. `launch_graph` replays an instantiated CUDA
graph. Both act in the context current on the calling thread: callers check that it is their
device's (`PointerCall` takes CuPy's launches when it is not). `why_not` says why the driver path
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
    """`launch(stream, *words)`: kernel `function` (a CUfunction) at `grid` x `block` threads, its
    arguments the 64-bit words `fixed` followed by `words` (as many as `changing`)."""

    def __init__(self, function: int, grid: tuple[int, int], block: int, fixed: tuple[int, ...], changing: int):
        lib = _load()
        if lib is None:
            raise RuntimeError(_MISSING)
        self._launch, self.function = lib.cuLaunchKernel, function
        self.grid, self.block = grid, block
        n = len(fixed) + changing
        self.args = (ctypes.c_uint64 * n)(*fixed)
        base = ctypes.addressof(self.args)
        self.params = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])  # what cuLaunchKernel reads
        self.first = len(fixed)

    def __call__(self, stream: int, *words: int) -> None:
        self.args[self.first:] = words
        (gx, gy), block = self.grid, self.block
        _check(self._launch(self.function, gx, gy, 1, block, 1, 1, 0, stream, self.params, None), "cuLaunchKernel")


def launch_graph(graph_exec: int, stream: int) -> None:
    _check(_LIB.cuGraphLaunch(graph_exec, stream), "cuGraphLaunch")
