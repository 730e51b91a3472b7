import numpy as np
import pytest
import torch

import rnnplan as rp
from rnnplan.weights import WeightsError
from tests.helpers import torch_module

SPEC = rp.RNNSpec(cell="lstm", input_size=7, hidden_size=13, num_layers=2, seq_len=5, batch=3, bidirectional=True)


def test_random_has_torch_names_and_shapes():
    w = rp.Weights.random(SPEC, seed=0)
    assert w["weight_ih_l0"].shape == (52, 7) and w["weight_ih_l1_reverse"].shape == (52, 26)
    assert w["bias_hh_l1"].shape == (52,)
    assert set(w.tensors) == set(torch_module(SPEC).state_dict())
    assert np.abs(w["weight_hh_l0"]).max() <= 1 / np.sqrt(13)
    assert np.array_equal(rp.Weights.random(SPEC, seed=0)["weight_hh_l0"], w["weight_hh_l0"])


def test_from_module_and_state_dict_agree():
    m = torch_module(SPEC)
    a, b = rp.Weights.from_torch(m, SPEC), rp.Weights.from_torch(m.state_dict(), SPEC)
    assert all(np.array_equal(a[k], b[k]) for k in a.tensors)
    assert a.arch["cell"] == "lstm" and b.arch is None


def test_save_load_round_trip(tmp_path):
    w = rp.Weights.from_torch(torch_module(SPEC), SPEC)
    path = w.save(tmp_path / "w")
    assert path.suffix == ".npz"
    back = rp.Weights.load(path)
    assert back.arch == w.arch and all(np.array_equal(back[k], w[k]) for k in w.tensors)
    back.check(SPEC)


def test_load_unreadable_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(WeightsError, match="cannot read weights"):
        rp.Weights.load(bad)


def test_one_error_names_every_offending_tensor():
    sd = dict(torch_module(SPEC).state_dict())
    del sd["weight_hh_l1"]
    sd["bias_ih_l0"] = torch.zeros(51)
    sd["weight_ih_l9"] = torch.zeros(2, 2)
    with pytest.raises(WeightsError) as e:
        rp.Weights.from_torch(sd, SPEC)
    msg = str(e.value)
    assert "missing tensor weight_hh_l1: expected shape (52, 13)" in msg
    assert "tensor bias_ih_l0: expected shape (52,), got (51,)" in msg
    assert "unexpected tensor weight_ih_l9" in msg


@pytest.mark.parametrize("module, field", [
    (torch.nn.GRU(7, 13, num_layers=2, bidirectional=True), "cell"),
    (torch.nn.LSTM(7, 14, num_layers=2, bidirectional=True), "hidden_size"),
    (torch.nn.LSTM(7, 13, num_layers=2, bidirectional=False), "bidirectional"),
    (torch.nn.LSTM(7, 13, num_layers=2, bidirectional=True, batch_first=True), "batch_first"),
    (torch.nn.LSTM(7, 13, num_layers=2, bidirectional=True, bias=False), "bias")])
def test_module_hyper_parameters_checked(module, field):
    with pytest.raises(WeightsError, match=f"hyper-parameter {field}"):
        rp.Weights.from_torch(module, SPEC)


def test_relu_module_against_tanh_spec():
    spec = rp.RNNSpec(cell="rnn_tanh", input_size=3, hidden_size=4, num_layers=1, seq_len=2, batch=1)
    with pytest.raises(WeightsError, match="cell"):
        rp.Weights.from_torch(torch.nn.RNN(3, 4, nonlinearity="relu"), spec)


def test_projection_and_foreign_objects_rejected():
    with pytest.raises(WeightsError, match="proj_size"):
        rp.Weights.from_torch(torch.nn.LSTM(7, 13, proj_size=5))
    with pytest.raises(WeightsError, match="takes a torch"):
        rp.Weights.from_torch(torch.nn.Linear(3, 4))
