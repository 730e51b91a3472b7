"""`rnnplan.from_onnx(path_or_model)`: an ONNX model whose core is a chain of ONNX `LSTM`, `GRU` or
`RNN` nodes (as `torch.onnx.export` writes a torch RNN: one node per layer, Squeeze or
Transpose + Reshape between them, Slices of the initial states and Concats of the final ones) as the
callable `rnnplan.compile` returns, for any shape per call.

The nodes are read into the torch module they describe (ONNX's gate orders, LSTM i,o,f,c and GRU
z,r,h, mapped to torch's i,f,g,o and r,z,n; W, R and B split into weight_ih, weight_hh, bias_ih and
bias_hh), which `rnnplan.compile` compiles. What rnnplan cannot run is refused with one line naming
the node and the attribute: peepholes, `clip`, non-default activations, `input_forget`, GRU
`linear_before_reset=0` (torch's GRU, and rnnplan's, apply the reset gate after the recurrent
product), layers that differ (in direction too), and ops around the RNN nodes other than the
export's glue. A chain of reverse-only layers (`direction="reverse"`) runs as the forward network
on each sequence reversed within its own length (`importers/time_reversed.py`). Needs `onnx` (`rnnplan[onnx]`) and
torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnplan.spec import RNNSpec

RNN_OPS = ("LSTM", "GRU", "RNN")
# ONNX's gate blocks, in the order torch stores them (LSTM: torch i,f,g,o from ONNX i,o,f,c; GRU:
# torch r,z,n from ONNX z,r,h).
TORCH_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
# What torch.onnx.export writes around the RNN nodes: reshaping glue, state slices and concats,
# constants feeding them. Anything else is an op rnnplan does not understand.
GLUE_OPS = {"Squeeze", "Transpose", "Reshape", "Slice", "Concat", "Constant", "Identity", "Unsqueeze", "Shape",
            "Gather", "Cast"}


class OnnxImportError(ValueError):
    """A model rnnplan cannot run, named by its node and attribute."""


def from_onnx(model, **options):
    """The ONNX model (a path or an `onnx.ModelProto`) as a `rnnplan.CompiledRNN`, called like the
    torch module it describes: `(input, hx=None) -> (output, h_n)` / `(output, (h_n, c_n))`, input
    (T, B, I) (or (B, T, I) where the model is batch-first) or a PackedSequence (the model's
    `sequence_lens`). `options` go to `rnnplan.compile`."""
    from rnnplan.dropin import compile as compile_module

    module = torch_module(model)
    compiled = compile_module(module, **options)
    if getattr(module, "onnx_reverse", False):
        from rnnplan.importers.time_reversed import TimeReversed

        return TimeReversed(compiled)
    return compiled


def torch_module(model):
    """The torch.nn.LSTM / GRU / RNN (eval mode) that the model's RNN nodes describe."""
    import onnx
    import torch
    from onnx import numpy_helper

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"from_onnx takes a path or an onnx.ModelProto, got {type(model).__name__}")
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(a.t) for n in graph.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value"}
    rnns = [n for n in graph.node if n.op_type in RNN_OPS]
    if not rnns:
        raise OnnxImportError("the model has no LSTM, GRU or RNN node")
    for n in graph.node:
        if n.op_type not in RNN_OPS and n.op_type not in GLUE_OPS:
            raise OnnxImportError(f"node {n.name or n.output[0]!r} ({n.op_type}): rnnplan runs a chain of "
                                  f"RNN nodes and the export's glue ({', '.join(sorted(GLUE_OPS))}), not {n.op_type}")
    op = rnns[0].op_type
    layers = [_layer(n, op, consts) for n in rnns]
    first = layers[0]
    want_input = first["hidden"] * first["directions"]
    for k, layer in enumerate(layers[1:], 1):
        for field in ("hidden", "directions", "direction", "layout", "nonlinearity", "bias"):
            if layer[field] != first[field]:
                raise OnnxImportError(f"node {rnns[k].name!r}: {field} {layer[field]!r} differs from the first RNN "
                                      f"node's {first[field]!r} (rnnplan runs layers of one kind)")
        if layer["input_size"] != want_input:
            raise OnnxImportError(f"node {rnns[k].name!r}: input size {layer['input_size']}, but the layer below "
                                  f"outputs {want_input}: the nodes do not form a chain")
    producers = {out: n for n in graph.node for out in n.output}
    transposed = _input_transposed(producers, rnns[0])
    _check_chain(producers, graph, rnns, first["layout"], consts, transposed)
    dtype = {np.dtype("float32"): "float32", np.dtype("float16"): "float16"}.get(first["W"].dtype)
    if dtype is None:
        raise OnnxImportError(f"node {rnns[0].name!r}: weights of dtype {first['W'].dtype}: rnnplan runs float32 "
                              "and float16")
    cell = {"LSTM": "lstm", "GRU": "gru"}.get(op, f"rnn_{first['nonlinearity']}")
    spec = RNNSpec(cell=cell, input_size=first["input_size"], hidden_size=first["hidden"], num_layers=len(layers),
                   bias=first["bias"], bidirectional=first["directions"] == 2,
                   batch_first=first["layout"] == 1 or transposed, seq_len=1, batch=1, dtype=dtype)
    state = {}
    for k, layer in enumerate(layers):
        for d in range(layer["directions"]):
            sfx = f"_l{k}{'_reverse' if d else ''}"
            state["weight_ih" + sfx] = layer["W"][d]
            state["weight_hh" + sfx] = layer["R"][d]
            if first["bias"]:
                state["bias_ih" + sfx], state["bias_hh" + sfx] = layer["Wb"][d], layer["Rb"][d]
    module = spec.to_torch()
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    module.onnx_reverse = first["direction"] == "reverse"  # the forward module, run on reversed sequences
    return module


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _layer(node, op: str, consts: dict) -> dict:
    """One RNN node's sizes and weights in torch's layout, or OnnxImportError naming what it cannot be."""
    name = node.name or node.output[0]
    if node.op_type != op:
        raise OnnxImportError(f"node {name!r} is {node.op_type}, the first RNN node {op}: rnnplan runs one cell kind")
    a = _attrs(node)
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if "clip" in a:
        raise OnnxImportError(f"node {name!r}: clip={a['clip']}: rnnplan does not clip the cell's inputs")
    if a.get("input_forget", 0):
        raise OnnxImportError(f"node {name!r}: input_forget=1 (coupled input and forget gates) is not supported")
    if op == "GRU" and a.get("linear_before_reset", 0) != 1:
        raise OnnxImportError(f"node {name!r}: linear_before_reset=0: rnnplan's GRU is torch's, which applies the "
                              "reset gate after the recurrent product (linear_before_reset=1)")
    activations = tuple(x.decode() if isinstance(x, bytes) else x for x in a.get("activations", ()))
    nonlinearity = "tanh"
    if op == "RNN":
        if activations not in ((), ("Tanh",), ("Tanh", "Tanh"), ("Relu",), ("Relu", "Relu")):
            raise OnnxImportError(f"node {name!r}: activations={list(activations)}: rnnplan's RNN runs Tanh or Relu")
        nonlinearity = "relu" if activations and activations[0] == "Relu" else "tanh"
    elif activations and activations not in (DEFAULT_ACTIVATIONS[op], DEFAULT_ACTIVATIONS[op] * 2):
        raise OnnxImportError(f"node {name!r}: activations={list(activations)}: rnnplan runs the default "
                              f"{list(DEFAULT_ACTIVATIONS[op])}")
    inputs = list(node.input) + [""] * (8 - len(node.input))
    if op == "LSTM" and inputs[7]:
        raise OnnxImportError(f"node {name!r}: peepholes (input P): rnnplan's LSTM has none")
    for role, i in (("W", 1), ("R", 2)) + ((("B", 3),) if inputs[3] else ()):
        if inputs[i] not in consts:
            raise OnnxImportError(f"node {name!r}: {role} ({inputs[i]!r}) is not a constant of the model")
    hidden, order = int(a.get("hidden_size", consts[inputs[2]].shape[-1])), TORCH_ORDER[op]
    gates = len(order)

    def torch_rows(w):  # (D, G*H, ...) in ONNX's gate order -> torch's
        return np.concatenate([w[:, g * hidden:(g + 1) * hidden] for g in order], axis=1)
    W, R = consts[inputs[1]], consts[inputs[2]]
    layer = dict(hidden=hidden, directions=W.shape[0], direction=direction, layout=int(a.get("layout", 0)),
                 nonlinearity=nonlinearity,
                 input_size=W.shape[2], W=torch_rows(W), R=torch_rows(R), bias=bool(inputs[3]))
    if inputs[3]:
        B = consts[inputs[3]]
        layer["Wb"], layer["Rb"] = torch_rows(B[:, :gates * hidden]), torch_rows(B[:, gates * hidden:])
    return layer


def _glue(producers, consts, start: str, stop: str, reader: str, layout: int) -> list:
    """The perms of the Transposes among the Squeeze / Transpose / Reshape nodes from value `stop` (a
    node's Y) to value `start`, which `reader` reads; OnnxImportError if anything else lies between,
    a Reshape is not to (0, 0, -1) or a Squeeze takes another axis than the directions'."""
    seen, value = [], start
    while value != stop:
        node = producers.get(value)
        if node is None or node.op_type not in ("Squeeze", "Transpose", "Reshape"):
            what = "a graph input" if node is None else f"{node.op_type} node {node.name!r}"
            raise OnnxImportError(f"{reader}: its input comes from {what}, not from {stop!r} through Squeeze, "
                                  "Transpose or Reshape")
        if node.op_type == "Reshape" and [int(v) for v in consts.get(node.input[1], [])] != [0, 0, -1]:
            raise OnnxImportError(f"{reader}: Reshape node {node.name!r} is not to (0, 0, -1): it rearranges more "
                                  "than the directions")
        if node.op_type == "Squeeze":
            axes = _attrs(node).get("axes", consts.get(node.input[1]) if len(node.input) > 1 else None)
            if axes is None or [int(a) for a in np.atleast_1d(axes)] != [1 + layout]:
                raise OnnxImportError(f"{reader}: Squeeze node {node.name!r} of axes {axes}: only the directions' "
                                      f"axis ({1 + layout}) may go")
        seen.append(node)
        value = node.input[0]
    return [list(_attrs(n).get("perm")) for n in seen if n.op_type == "Transpose"]


def _check_chain(producers, graph, rnns, layout: int, consts: dict, transposed: bool) -> None:
    """Each RNN node above the first reads the previous one's Y through the export's glue (Squeeze
    of the direction axis, or Transpose + Reshape that put the directions beside each other), and the
    model's first output is the last one's Y so (and, batch-first, transposed back); nothing else.
    `producers`: the node writing each value; `transposed`: the input arrives batch-first."""
    for below, above in zip(rnns, rnns[1:]):
        perms = _glue(producers, consts, above.input[0], below.output[0], f"node {above.name!r}", layout)
        if perms not in ([], [[0, 2, 1, 3]]) or (layout == 1 and perms):
            raise OnnxImportError(f"node {above.name!r}: between it and node {below.name!r} a Transpose of "
                                  f"perm {perms[0]} rearranges more than the directions")
    perms = _glue(producers, consts, graph.output[0].name, rnns[-1].output[0], f"the model's output "
                  f"{graph.output[0].name!r}", layout)
    allowed = ([[0, 2, 1, 3]] if layout == 0 else []) + ([[1, 0, 2]] if transposed else [])
    if any(p not in allowed for p in perms):
        raise OnnxImportError(f"the model's output {graph.output[0].name!r}: a Transpose of perm "
                              f"{next(p for p in perms if p not in allowed)} after the last RNN node")


def _input_transposed(producers, first) -> bool:
    """Is the first RNN node's X the graph input transposed (1, 0, 2), as torch exports batch_first?"""
    node = producers.get(first.input[0])
    if node is None:
        return False
    if node.op_type == "Transpose" and list(_attrs(node).get("perm", [])) == [1, 0, 2]:
        return True
    raise OnnxImportError(f"node {first.name!r}: its input X comes from {node.op_type} node {node.name!r}: rnnplan "
                          "reads the model's input directly (or transposed batch-first)")

