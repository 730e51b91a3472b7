"""What each computing node kind means, on NumPy arrays: the single definition that the graph
interpreter (`evaluate`) and the NumPy plan executor both call, so they cannot drift apart.

Math is float32 whatever the storage dtype (float16 specs store float16, compute float32), as
cuBLAS and the generated kernels do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Instr, Node, Region
from rnnplan.ir.ops import POINTWISE_OPS
from rnnplan.ir.recurrence import run_recurrence


def f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


def gemm(a: np.ndarray, w: np.ndarray, weight_layout: str) -> np.ndarray:
    """A @ W^T for W stored (N, K), A @ W for W stored (K, N)."""
    return f32(a) @ (f32(w).T if weight_layout == "nk" else f32(w))


def pointwise(op: str, args: Sequence[np.ndarray]) -> np.ndarray:
    return POINTWISE_OPS[op].numpy(*(f32(a) for a in args))


def fused(expr: Sequence[Instr], expr_outputs: Sequence[str],
          args: Sequence[np.ndarray]) -> list[np.ndarray]:
    env = {f"in{i}": f32(a) for i, a in enumerate(args)}
    for ins in expr:
        env[ins.out] = POINTWISE_OPS[ins.op].numpy(*(env[a] for a in ins.args))
    return [env[o] for o in expr_outputs]


def compute(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The float32 results of a kernel node (gemm, pointwise, fused, recurrent) on its operand arrays."""
    if node.kind == "recurrent":
        return run_recurrence(node.recurrence, args)
    if node.kind == "gemm":
        return [gemm(args[0], args[1], node.gemm.weight_layout)]
    if node.kind == "pointwise":
        return [pointwise(node.op, args)]
    return fused(node.expr, node.expr_outputs, args)


# ---- the graph interpreter ------------------------------------------------------------------------


def _view(graph: Graph, region: Region, inputs: tuple[str, ...], env: dict[str, np.ndarray]) -> np.ndarray:
    """Assemble one of a view's rectangles from the values that cover it."""
    (r0, r1), (c0, c1) = region.rows, region.cols
    out = np.empty(region.shape, dtype=env[inputs[0]].dtype)
    for name in inputs:
        if name == region.storage:
            return env[name][r0:r1, c0:c1]
        vr = graph.values[name].region
        if vr is None or vr.storage != region.storage:
            continue  # covers another of the view's rectangles
        rr = (max(vr.rows[0], r0), min(vr.rows[1], r1))
        cc = (max(vr.cols[0], c0), min(vr.cols[1], c1))
        if rr[0] < rr[1] and cc[0] < cc[1]:
            out[rr[0] - r0:rr[1] - r0, cc[0] - c0:cc[1] - c0] = \
                env[name][rr[0] - vr.rows[0]:rr[1] - vr.rows[0], cc[0] - vr.cols[0]:cc[1] - vr.cols[0]]
    return out


def evaluate(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the graph on `feeds` (2-D arrays for x, h0, c0 and every param source, already laid out
    as the nodes read them) and return each output node's inputs concatenated by rows."""
    dtype = np.dtype(graph.spec.dtype)
    env: dict[str, np.ndarray] = {}
    results: dict[str, np.ndarray] = {}
    for node in graph.topo_nodes():
        if node.kind in ("input", "state", "param"):
            src = feeds[node.source]
            env[node.outputs[0].name] = src.T if node.transform == "transpose" else src
        elif node.kind == "view":
            for v in node.outputs:
                env[v.name] = _view(graph, v.region, node.inputs, env)
        elif node.kind == "output":
            results[node.name] = np.concatenate([env[v] for v in node.inputs], axis=0)
        else:
            for v, a in zip(node.outputs, compute(node, [env[i] for i in node.inputs])):
                env[v.name] = a.astype(dtype, copy=False)
    return results
