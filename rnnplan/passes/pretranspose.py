"""Pass `pretranspose` (paper §3.1 "pre-transposing the weight matrix"): every weight that GEMMs
read is stored once, at load time, as its transpose (K, N), so the GEMM reads it without a
transposed operand (cuBLAS "NN" instead of "TN" on row-major data).

Needs: GEMM weights that are params in PyTorch's (N, K) layout, or views of their rows; after
`combine_gates` (which merges row blocks of that layout). Step-local.
Guarantees: each such param is replaced by a param node `<name>.T` that loads the same PyTorch
tensor with `transform="transpose"`; its views become the matching column views; every GEMM reading
it has `weight_layout="kn"`. Value names read by GEMMs are unchanged. The plan's buffer table
records the transform, so backends apply it once, when weights are loaded.
Does not: transpose biases or activations; params also read by non-GEMM nodes are left alone.
"""

from __future__ import annotations

import dataclasses

from rnnplan.ir.graph import Graph
from rnnplan.ir.node import Region, Value
from rnnplan.passes.record import Pass


def pretranspose(graph: Graph, options=None) -> Graph:
    weights = {}  # param name -> GEMM nodes reading it, directly or through one view
    for n in graph.nodes.values():
        if n.kind != "gemm" or n.gemm.weight_layout != "nk":
            continue
        w = graph.values[n.inputs[1]]
        param = w.name if w.region is None else w.region.storage
        weights.setdefault(param, []).append(n)
    replace, remove, insert = [], [], []
    for param, gemms in weights.items():
        pnode = graph.nodes[graph.producer[param]]
        if pnode.kind != "param":
            continue
        readers = [graph.nodes[u] for u in graph.consumers[param]]
        views = [r for r in readers if r.kind == "view"]
        weight_only = all(r.kind == "gemm" and r.inputs[1] == param for r in readers if r.kind != "view") \
            and all(graph.nodes[u].kind == "gemm" and graph.nodes[u].inputs[1] == o.name
                    for v in views for o in v.outputs for u in graph.consumers[o.name])
        if not weight_only:
            continue  # some reader is not a GEMM weight operand: keep PyTorch's layout
        t_name = f"{param}.T"
        rows, cols = pnode.outputs[0].shape
        remove.append(param)
        insert.append((param, [pnode._replace(name=t_name, outputs=(Value(t_name, (cols, rows)),),
                                              transform="transpose")]))
        for v in views:
            swapped = [Region(t_name, o.region.cols, o.region.rows) for o in v.outputs]
            replace.append(v._replace(inputs=(t_name,), outputs=tuple(
                Value(o.name, r.shape, r) for o, r in zip(v.outputs, swapped))))
        for g in gemms:
            inputs = (g.inputs[0], t_name) if g.inputs[1] == param else g.inputs
            replace.append(g._replace(inputs=inputs, gemm=dataclasses.replace(g.gemm, weight_layout="kn")))
    return graph.rewrite("pretranspose", remove=remove, insert=insert, replace=replace)


# After combine_gates, which merges row blocks of the PyTorch layout this pass replaces.
PASS = Pass("pretranspose", pretranspose, step_local=True, after=("combine_gates",))
