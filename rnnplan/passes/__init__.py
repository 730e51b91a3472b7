"""The optimization passes, one module each, as records (`record.Pass`) the manager checks and runs:
the paper's combine_gates, pretranspose, batch_input_gemms, fuse_pointwise, wavefront_streams (in
`rnnplan.spec.PASSES`, the canonical order), and `repeat_steps`, which plans a long sequence from the
step-local passes' result on three steps."""

from rnnplan.passes.manager import (
    REGISTRY,
    STEP_LOCAL,
    apply_passes,
    check_order,
    run_passes,
)
from rnnplan.passes.record import Pass

__all__ = ["REGISTRY", "STEP_LOCAL", "Pass", "apply_passes", "check_order", "run_passes"]
