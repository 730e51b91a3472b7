"""The IR: node kinds, the Graph, the naive unroller, invariant checks and the reference semantics."""

from rnnplan.ir.build import build, param_shapes
from rnnplan.ir.graph import Graph, format_node
from rnnplan.ir.node import KERNEL_KINDS, POINTWISE_OPS, Gemm, Instr, Node, Region, Value
from rnnplan.ir.semantics import evaluate
from rnnplan.ir.verify import GraphError, verify

__all__ = ["Graph", "GraphError", "Gemm", "Instr", "KERNEL_KINDS", "Node", "POINTWISE_OPS", "Region",
           "Value", "build", "evaluate", "format_node", "param_shapes", "verify"]
