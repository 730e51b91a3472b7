"""Backends: run a Plan with given Weights.

- `numpy_backend.py`: the reference executor, any plan, step by step on the CPU;
- `cupy_backend.py`: the GPU executor (streams and events, one CUDA graph per call, the persistent
  kernel), with `cublas.py` (GEMMs that stream capture can record) and `kernels.py` (the fused
  pointwise kernels, generated from the ops' C forms);
- `device.py`: whether a GPU is usable, and its description for planning;
- `shared.py`: what the executors of one network share (uploaded weights, a host workspace);
- `pointer_call.py`: a CuPy executor called by device pointers on the caller's stream, its launches
  through `driver_launch.py` (the CUDA driver's C API by ctypes: a microsecond or two a launch).
Only this package imports CuPy, and only when a GPU backend is asked for. `rnnplan.Executor` picks a
backend and checks inputs.
"""

from rnnplan.backends.device import (
    cupy_unavailable_reason,
    describe_device,
    local_device,
)

BACKENDS = ("auto", "numpy", "cupy")

__all__ = ["BACKENDS", "cupy_unavailable_reason", "describe_device", "local_device"]
