"""The persistent kernel's home: the whole recurrence of a network as one GPU kernel that holds the
recurrent weights on-chip for the sequence.

- `kernel.py`: `PersistentKernel`, the configuration as one object (work split, register and
  shared-memory budgets, layout, exchange buffer, `fit(device)`, whether a chain's blocks can hand h over within a thread-block cluster);
- `select.py`: which kernel a spec gets on a device, and when `lowering="auto"` takes it;
- `source.py` + `cuda/`: the static CUDA source and the `#define` header Python writes for it.
The planner asks this package (rnnplan/lowering/recurrent.py builds the `recurrent` node), the CuPy
backend compiles and launches by it; it imports neither, and no CuPy.
"""

from rnnplan.ir.recurrence import (
    wavefront,  # the in-kernel wavefront (defined with the recurrence)
)
from rnnplan.persistent.kernel import (
    FFMA_REGISTER_BUDGET,
    KERNEL_WARPS,
    PROFILE_SLOTS,
    REGISTER_BUDGET,
    THREADS,
    Fit,
    PersistentKernel,
    kernel_of,
)
from rnnplan.persistent.select import (
    AUTO_MAX_BATCH,
    DEFAULT_DEVICE,
    FFMA_MAX_BATCH,
    TF32_AUTO_MAX_BATCH,
    choose_lowering,
    choose_recurrence,
    ffma_recurrence,
    planning_device,
    recurrence_of,
    tensor_core_recurrence,
)
from rnnplan.persistent.source import config_header, kernel_name, kernel_source

__all__ = ["AUTO_MAX_BATCH", "DEFAULT_DEVICE", "FFMA_MAX_BATCH", "FFMA_REGISTER_BUDGET", "KERNEL_WARPS",
           "TF32_AUTO_MAX_BATCH", "PROFILE_SLOTS", "REGISTER_BUDGET", "THREADS", "Fit", "PersistentKernel", "choose_lowering",
           "choose_recurrence", "config_header", "ffma_recurrence", "kernel_name", "kernel_of", "kernel_source",
           "planning_device", "recurrence_of", "tensor_core_recurrence", "wavefront"]
