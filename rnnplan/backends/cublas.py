"""cublasGemmEx through ctypes on the libcublas that CuPy already loaded.

Why not CuPy's own wrappers: they rebind the handle's stream on every call, which CuPy refuses
while a stream is capturing (CuPy issue 6290), so a whole-plan CUDA graph could not contain a GEMM.
Here each stream gets its own handle, bound to it and given a fixed workspace once, before any
capture; a call then only enqueues the GEMM, which stream capture records like any kernel.

Row-major to cuBLAS's column-major: C (M x N) = A (M x K) @ op(W) is computed as
C^T (N x M) = op(W)^T (N x K) @ A^T (K x M), with W read transposed when stored (N, K) ("nk").
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from rnnplan.precision import Precision

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
DATA_TYPES = {"float32": CUDA_R_32F, "float16": CUDA_R_16F, "bfloat16": CUDA_R_16BF}
COMPUTE_TYPES = {"32F": 68, "32F_FAST_TF32": 77}  # cublasComputeType_t, by Precision.cublas_compute
CUBLAS_GEMM_DEFAULT = -1
WORKSPACE_BYTES = 32 << 20


def _loaded_libcublas() -> ctypes.CDLL:
    """The libcublas mapped into this process by CuPy (found through /proc/self/maps)."""
    import cupy

    cupy.cuda.device.get_cublas_handle()  # makes CuPy load libcublas
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "libcublas.so" in path and "Lt" not in Path(path).name:
            return ctypes.CDLL(path)
    return ctypes.CDLL("libcublas.so")  # not Linux-like: let the loader find it


class Cublas:
    """One cuBLAS handle per stream, each with its own workspace, for GEMMs on that stream."""

    def __init__(self, streams, workspaces, precision: Precision):
        self.lib = lib = _loaded_libcublas()
        lib.cublasGemmEx.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_int]
        self.handles = []
        for stream, ws in zip(streams, workspaces):
            h = ctypes.c_void_p()
            self._check(lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate")
            self._check(lib.cublasSetStream_v2(h, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
            self._check(lib.cublasSetWorkspace_v2(h, ctypes.c_void_p(ws.data.ptr), ctypes.c_size_t(ws.nbytes)),
                        "cublasSetWorkspace")
            self.handles.append(h)
        self.data_type = DATA_TYPES[precision.storage]
        # fp32 accumulation always; tf32 operands only where the precision allows them.
        self.compute = COMPUTE_TYPES[precision.cublas_compute]
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def gemm(self, stream: int, m: int, n: int, k: int, w_ptr: int, ldw: int, w_layout: str,
             a_ptr: int, lda: int, c_ptr: int, ldc: int) -> None:
        """C (m x n, row stride ldc) = A (m x k) @ W^T (W stored n x k) or @ W (W stored k x n)."""
        status = self.lib.cublasGemmEx(
            self.handles[stream], CUBLAS_OP_T if w_layout == "nk" else CUBLAS_OP_N, CUBLAS_OP_N,
            n, m, k, ctypes.byref(self.alpha), w_ptr, self.data_type, ldw, a_ptr, self.data_type, lda,
            ctypes.byref(self.beta), c_ptr, self.data_type, ldc, self.compute, CUBLAS_GEMM_DEFAULT)
        if status != 0:
            self._check(status, f"cublasGemmEx(m={m}, n={n}, k={k})")

    def close(self) -> None:
        for h in self.handles:
            self.lib.cublasDestroy_v2(h)
        self.handles = []
