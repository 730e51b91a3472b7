"""rnnplan: plan and run inference of stacked LSTM / GRU / Elman RNNs as an inspectable DAG.

    import rnnplan as rp
    spec = rp.RNNSpec(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64)
    plan = rp.build_plan(spec)                       # all passes; passes=() gives the naive plan
    out, (h_n, c_n) = rp.Executor(plan, rp.Weights.random(spec)).run(x)

The pipeline is spec -> `rnnplan.ir.build` (naive DAG) -> `rnnplan.scheduler` passes -> `lower` ->
Plan -> `rnnplan.backends` executor. CuPy is imported only by the cupy backend.
"""

from rnnplan.backends import Executor
from rnnplan.ir import Graph, GraphError, build, verify
from rnnplan.scheduler import PASSES, Plan, PlanError, build_graph, build_plan, verify_plan
from rnnplan.spec import PAPER_SPEC, DeviceShape, PlanOptions, RNNSpec
from rnnplan.weights import Weights, WeightsError

__version__ = "0.1.0"

__all__ = ["PAPER_SPEC", "PASSES", "DeviceShape", "Executor", "Graph", "GraphError", "Plan", "PlanError", "PlanOptions",
           "RNNSpec", "Weights", "WeightsError", "build", "build_graph", "build_plan", "verify",
           "verify_plan"]
