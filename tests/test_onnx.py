"""ONNX import (issue 18, item 3): torch modules exported by torch.onnx.export and read back by
`rnnplan.from_onnx` give torch's and onnxruntime's results for other shapes than the export's;
hand-built models cover what the exporter does not write (ONNX's own gate orders checked against
onnxruntime; layout 1, which onnxruntime does not run, against its layout-0 twin there), and everything rnnplan cannot run is refused by node and attribute."""

import io
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rnnplan as rp

CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}


def module(cell, layers, bidirectional, batch_first, seed=0):
    torch.manual_seed(seed)
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    return CELLS[cell](3, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                       **extra).eval()


def export(m, lstm: bool) -> onnx.ModelProto:
    """torch's export of `m` with the state as inputs, dynamic in time and batch."""
    d = 2 if m.bidirectional else 1
    x = torch.randn((2, 4, 3) if m.batch_first else (4, 2, 3))
    h = torch.zeros(m.num_layers * d, 2, 5)
    names = ["x", "h0", "c0"] if lstm else ["x", "h0"]
    axes = {"x": {0: "a", 1: "b"}, "h0": {1: "B"}} | ({"c0": {1: "B"}} if lstm else {})
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x, (h, h) if lstm else h), f, dynamo=False, input_names=names,
                          output_names=["y", "h_n", "c_n"][:len(names)], dynamic_axes=axes)
    return onnx.load_from_string(f.getvalue())


def close(a, b, tol=1e-5) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers, bidirectional, batch_first", [(1, False, False), (2, True, False), (3, False, True),
                                                               (2, True, True)])
def test_exported_modules_match_torch_and_onnxruntime(cell, layers, bidirectional, batch_first):
    m = module(cell, layers, bidirectional, batch_first)
    lstm = cell == "lstm"
    model = export(m, lstm)
    fast = rp.from_onnx(model)
    ort = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    d = 2 if bidirectional else 1
    for steps, batch in ((7, 3), (1, 1)):  # not the export's shape
        x = torch.randn((batch, steps, 3) if batch_first else (steps, batch, 3))
        h = torch.randn(layers * d, batch, 5)
        state = (h, torch.randn_like(h)) if lstm else h
        with torch.no_grad():
            want = m(x, state)
        got = fast(x, state)
        feeds = {"x": x.numpy(), "h0": h.numpy()} | ({"c0": state[1].numpy()} if lstm else {})
        ort_out = ort.run(None, feeds)
        flat_got = [got[0]] + (list(got[1]) if lstm else [got[1]])
        flat_want = [want[0]] + (list(want[1]) if lstm else [want[1]])
        for g, w, o in zip(flat_got, flat_want, ort_out, strict=True):
            assert close(g, w) and close(g, o, 1e-4)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 3, 3), [5, 2, 4], enforce_sorted=False)
    if not batch_first:  # the model's sequence_lens: a PackedSequence at call time
        with torch.no_grad():
            want = m(packed)
        assert close(fast(packed)[0].data, want[0].data)


def _node_model(op, W, R, B=None, layout=0, direction="forward", extra_inputs=(), **attrs):
    """One RNN node as a model: input x, outputs Y, Y_h (and Y_c)."""
    hidden = R.shape[-1]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    inputs = ["x", "W", "R"]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
        inputs.append("B")
    inputs += list(extra_inputs)
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outs, name="rnn0", hidden_size=hidden, direction=direction, layout=layout,
                            **attrs)
    x_shape = ["B", "T", W.shape[2]] if layout else ["T", "B", W.shape[2]]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_onnx_gate_orders_and_layouts_against_onnxruntime(op, gates, layout, direction):
    """A node written by hand in ONNX's own conventions (gate blocks i,o,f,c / z,r,h; layout 1 is
    batch-major), against onnxruntime on the same model."""
    rng = np.random.default_rng(1)
    d, hidden = (2 if direction == "bidirectional" else 1), 4
    W = rng.standard_normal((d, gates * hidden, 3)).astype(np.float32) * 0.5
    R = rng.standard_normal((d, gates * hidden, hidden)).astype(np.float32) * 0.5
    B = rng.standard_normal((d, 2 * gates * hidden)).astype(np.float32) * 0.5
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    model = _node_model(op, W, R, B, layout=layout, direction=direction, **attrs)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)  # (T, B, I)
    # onnxruntime runs layout 0 only: it runs the same node time-major, rnnplan the batch-major one
    time_major = _node_model(op, W, R, B, layout=0, direction=direction, **attrs)
    Y, Y_h = onnxruntime.InferenceSession(time_major.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[:2]
    want = Y.transpose(0, 2, 1, 3).reshape(6, 2, d * hidden)  # Y (T, D, B, H) -> (T, B, D*H)
    out, state = rp.from_onnx(model)(torch.from_numpy(x.transpose(1, 0, 2).copy() if layout else x))
    h_n = state[0] if op == "LSTM" else state
    assert close(out, want.transpose(1, 0, 2) if layout else want) and close(h_n, Y_h)


@pytest.mark.parametrize("change, message", [
    (dict(clip=1.0), "node 'rnn0': clip=1.0: rnnplan does not clip"),
    (dict(input_forget=1), "node 'rnn0': input_forget=1"),
    (dict(activations=["Sigmoid", "Relu", "Tanh"]), r"node 'rnn0': activations=\['Sigmoid', 'Relu', 'Tanh'\]"),
    (dict(extra_inputs=["", "", "", "", "P"]), r"node 'rnn0': peepholes \(input P\)"),
])
def test_what_rnnplan_cannot_run_is_refused_by_node_and_attribute(change, message):
    rng = np.random.default_rng(0)
    W, R = rng.standard_normal((1, 16, 3)).astype(np.float32), rng.standard_normal((1, 16, 4)).astype(np.float32)
    model = _node_model("LSTM", W, R, **change)
    with pytest.raises(rp.OnnxImportError, match=message):
        rp.from_onnx(model)


def test_gru_without_linear_before_reset_and_ops_around_the_nodes_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    W, R = rng.standard_normal((1, 12, 3)).astype(np.float32), rng.standard_normal((1, 12, 4)).astype(np.float32)
    with pytest.raises(rp.OnnxImportError, match="node 'rnn0': linear_before_reset=0: rnnplan's GRU is torch's"):
        rp.from_onnx(_node_model("GRU", W, R))
    model = export(module("gru", 1, False, False), lstm=False)
    relu = helper.make_node("Relu", ["y"], ["y_relu"], name="after")
    model.graph.node.append(relu)
    with pytest.raises(rp.OnnxImportError, match=r"node 'after' \(Relu\): rnnplan runs a chain of RNN nodes"):
        rp.from_onnx(model)
    swapped = export(module("gru", 1, False, False), lstm=False)  # the output transposed: not torch's layout
    swapped.graph.node.append(helper.make_node("Transpose", ["y"], ["y_t"], name="swap", perm=[1, 0, 2]))
    swapped.graph.output[0].name = "y_t"
    with pytest.raises(rp.OnnxImportError, match=r"the model's output 'y_t': a Transpose of perm \[1, 0, 2\]"):
        rp.from_onnx(swapped)
    path = tmp_path / "gru.onnx"  # a path reads as the model
    onnx.save(export(module("gru", 2, True, False), lstm=False), str(path))
    x = torch.randn(3, 2, 3)
    with torch.no_grad():
        want = module("gru", 2, True, False)(x)
    got = rp.from_onnx(path)(x)
    assert close(got[0], want[0]) and close(got[1], want[1])
    with pytest.raises(TypeError, match="from_onnx takes a path or an onnx.ModelProto, got int"):
        rp.from_onnx(3)


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3)])
def test_sequence_lens_are_a_packed_sequence_at_call_time(op, gates):
    """A node with `sequence_lens` as a graph input, against onnxruntime given those lengths: outputs
    zero past each length, Y_h at each sequence's last step, the reverse direction from its own end."""
    rng = np.random.default_rng(2)
    hidden, lengths = 4, [6, 2, 5]
    W = rng.standard_normal((2, gates * hidden, 3)).astype(np.float32) * 0.5
    R = rng.standard_normal((2, gates * hidden, hidden)).astype(np.float32) * 0.5
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    model = _node_model(op, W, R, direction="bidirectional", extra_inputs=["", "seq_lens"], **attrs)
    model.graph.input.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["B"]))
    x = rng.standard_normal((6, 3, 3)).astype(np.float32)
    Y, Y_h = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "seq_lens": np.array(lengths, dtype=np.int32)})[:2]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths, enforce_sorted=False)
    out, state = rp.from_onnx(model)(packed)
    padded = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=6)[0]
    assert close(padded, Y.transpose(0, 2, 1, 3).reshape(6, 3, 2 * hidden), 1e-4)
    assert close(state[0] if op == "LSTM" else state, Y_h, 1e-4)


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_reverse_only_layers_against_onnxruntime(op, gates, with_lengths):
    """direction="reverse": each sequence read from its own last step back, the output in time order,
    Y_h at each sequence's first step; fixed lengths and `sequence_lens` (a PackedSequence)."""
    rng = np.random.default_rng(3)
    hidden, lengths = 4, [6, 2, 5]
    W = rng.standard_normal((1, gates * hidden, 3)).astype(np.float32) * 0.5
    R = rng.standard_normal((1, gates * hidden, hidden)).astype(np.float32) * 0.5
    B = rng.standard_normal((1, 2 * gates * hidden)).astype(np.float32) * 0.5
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    extra = ["seq_lens"] if with_lengths else []  # input 4 (after B)
    model = _node_model(op, W, R, B, direction="reverse", extra_inputs=extra, **attrs)
    feeds = {"x": rng.standard_normal((6, 3, 3)).astype(np.float32)}
    if with_lengths:
        model.graph.input.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["B"]))
        feeds["seq_lens"] = np.array(lengths, dtype=np.int32)
    Y, Y_h = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds)[:2]
    fast = rp.from_onnx(model)
    x = torch.from_numpy(feeds["x"])
    if with_lengths:
        out, state = fast(torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
        out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=6)[0]
    else:
        out, state = fast(x)
    assert close(out, Y[:, 0], 1e-4) and close(state[0] if op == "LSTM" else state, Y_h, 1e-4)
    assert "reverse-only layers" in fast.explain() and fast.cache_info().executors == 1


def test_a_chain_of_reverse_layers_runs_and_mixed_directions_are_refused():
    from rnnplan.importers.time_reversed import reversed_packed

    rng = np.random.default_rng(4)
    hidden = 4

    def layer(k, direction, inputs):
        W = rng.standard_normal((1, 3 * hidden, inputs)).astype(np.float32) * 0.5
        R = rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32) * 0.5
        inits = [numpy_helper.from_array(W, f"W{k}"), numpy_helper.from_array(R, f"R{k}")]
        x = "x" if k == 0 else f"s{k - 1}"
        node = helper.make_node("GRU", [x, f"W{k}", f"R{k}"], [f"Y{k}"], name=f"rnn{k}", hidden_size=hidden,
                                direction=direction, linear_before_reset=1)
        squeeze = helper.make_node("Squeeze", [f"Y{k}", "axes"], [f"s{k}"], name=f"sq{k}")
        return [node, squeeze], inits

    def chain(directions):
        nodes, inits = [], [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
        for k, direction in enumerate(directions):
            more, w = layer(k, direction, 3 if k == 0 else hidden)
            nodes += more
            inits += w
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 3])],
                                  [helper.make_tensor_value_info(f"s{len(directions) - 1}", TensorProto.FLOAT, None)],
                                  inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model = chain(["reverse", "reverse"])
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert close(rp.from_onnx(model)(torch.from_numpy(x))[0], want, 1e-4)
    with pytest.raises(rp.OnnxImportError, match="node 'rnn1': direction 'reverse' differs from the first RNN "
                                                 "node's 'forward'"):
        rp.from_onnx(chain(["forward", "reverse"]))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.arange(12.0).view(4, 3, 1), [4, 1, 3], enforce_sorted=False)
    twice = reversed_packed(reversed_packed(packed))
    assert torch.equal(twice.data, packed.data)  # its own inverse
    padded = torch.nn.utils.rnn.pad_packed_sequence(reversed_packed(packed))[0][:, :, 0]
    assert padded[:, 0].tolist() == [9.0, 6.0, 3.0, 0.0] and padded[:3, 2].tolist() == [8.0, 5.0, 2.0]
