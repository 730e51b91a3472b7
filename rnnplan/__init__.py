"""rnnplan: plan and run inference of stacked LSTM / GRU / Elman RNNs as an inspectable DAG.

    import rnnplan as rp
    spec = rp.RNNSpec(cell="lstm", input_size=512, hidden_size=512, num_layers=4, seq_len=100, batch=64)
    plan = rp.build_plan(spec)                       # all passes; passes=() gives the naive plan
    print(rp.summarize(plan))
    out, (h_n, c_n) = rp.Executor(plan, rp.Weights.random(spec)).run(x)
    fast = rp.compile(torch_lstm)                    # the drop-in: called like the module, any (T, B)

The pipeline, one package per stage: `spec` -> `ir` (cells, naive DAG) -> `passes` -> `lowering`
(Plan) -> `backends`; `persistent` is the persistent kernel's home, `viz` draws. CuPy is imported
only by the cupy backend.
"""

from rnnplan import viz
from rnnplan.api import build_graph, build_plan
from rnnplan.executor import Executor
from rnnplan.ir import Graph, GraphError, build, verify
from rnnplan.lowering import PLAN_CACHE as plan_cache
from rnnplan.lowering import Plan, PlanError, check_plan, load_plan, verify_plan
from rnnplan.precision import Precision
from rnnplan.resources import NotEnoughMemory
from rnnplan.spec import PAPER_SPEC, PASSES, DeviceShape, PlanOptions, RNNSpec
from rnnplan.viz import summarize
from rnnplan.weights import Weights, WeightsError

__version__ = "0.1.0"


def __getattr__(name: str):
    """`rnnplan.compile` and `rnnplan.CompiledRNN` (the PyTorch drop-in) import torch, and
    `rnnplan.from_onnx` onnx, so they load when first asked for: `import rnnplan` works without them."""
    if name in ("compile", "CompiledRNN", "CompileError"):
        try:
            from rnnplan import dropin
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            raise ModuleNotFoundError(f"rnnplan.{name} needs PyTorch: pip install 'rnnplan[torch]'", name="torch") from None
        return getattr(dropin, name)
    if name in ("from_onnx", "OnnxImportError"):
        from rnnplan.importers import onnx_rnn

        return getattr(onnx_rnn, name)
    raise AttributeError(f"module 'rnnplan' has no attribute {name!r}")


__all__ = ["PAPER_SPEC", "PASSES", "DeviceShape", "Executor", "Graph", "GraphError", "NotEnoughMemory", "Plan",
           "PlanError", "PlanOptions", "Precision", "RNNSpec", "Weights", "WeightsError", "build", "build_graph",
           "build_plan", "check_plan", "load_plan", "plan_cache", "summarize", "verify", "verify_plan", "viz"]
