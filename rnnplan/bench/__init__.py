"""GPU benchmarks against cuDNN: `harness` (what every benchmark shares, public), `matrix` (the
`rnnplan bench` command) and `predictions` (the cost model against a matrix's measured times, on any
machine). Nothing here is imported by the library itself."""

from rnnplan.bench.harness import (
    CELL_LABELS,
    PRECISIONS,
    ROWS,
    TOL,
    captured_call,
    config,
    cudnn_module,
    cudnn_times,
    environment,
    median_ms,
    rel_err,
    strict_reference,
)

__all__ = ["CELL_LABELS", "PRECISIONS", "ROWS", "TOL", "captured_call", "config", "cudnn_times", "environment",
           "median_ms", "rel_err", "strict_reference", "cudnn_module"]
