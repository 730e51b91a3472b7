"""The IR: node kinds, the Graph, the cells and pointwise ops (each defined once), node names, the
naive unroller, invariant checks and the reference semantics."""

from rnnplan.ir.build import build, param_shapes
from rnnplan.ir.cells import CELLS, Cell, cell_of
from rnnplan.ir.graph import Graph, format_node
from rnnplan.ir.node import KERNEL_KINDS, Gemm, Instr, Node, Region, Value
from rnnplan.ir.ops import POINTWISE_OPS
from rnnplan.ir.recurrence import Recurrence
from rnnplan.ir.semantics import evaluate
from rnnplan.ir.verify import GraphError, verify

__all__ = ["CELLS", "Cell", "Graph", "GraphError", "Gemm", "Instr", "KERNEL_KINDS", "Node", "POINTWISE_OPS",
           "Recurrence", "Region", "Value", "build", "cell_of", "evaluate", "format_node", "param_shapes", "verify"]
