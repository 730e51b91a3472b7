"""Weights: PyTorch's names and shapes, one WeightsError of a line or two for every bad file, module or
state dict (naming the file, tensor or hyper-parameter), hyper-parameters carried and checked, and
the paths state dicts put before the names handled."""

import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

import rnnplan as rp
from rnnplan.weights import WeightsError, WeightsWarning
from tests.helpers import subprocess_env, torch_module

SPEC = rp.RNNSpec(cell="lstm", input_size=7, hidden_size=13, num_layers=2, seq_len=5, batch=3, bidirectional=True)


def test_random_has_torch_names_and_shapes():
    w = rp.Weights.random(SPEC, seed=0)
    assert w["weight_ih_l0"].shape == (52, 7) and w["weight_ih_l1_reverse"].shape == (52, 26)
    assert w["bias_hh_l1"].shape == (52,) and w["weight_hh_l0"].dtype == np.float32
    assert set(w.tensors) == set(torch_module(SPEC).state_dict())
    assert np.abs(w["weight_hh_l0"]).max() <= 1 / np.sqrt(13)
    assert np.array_equal(rp.Weights.random(SPEC, seed=0)["weight_hh_l0"], w["weight_hh_l0"])


def test_random_draws_are_the_same_in_chunks():
    """Weights.random draws in bounded chunks (no float64 copy of everything); the values are those
    of one draw per tensor, as before."""
    spec = rp.RNNSpec(cell="gru", input_size=1500, hidden_size=1500, num_layers=1, seq_len=2, batch=1)
    w = rp.Weights.random(spec, seed=5)
    rng = np.random.default_rng(5)
    k = 1 / np.sqrt(1500)
    for name in ("weight_ih_l0", "weight_hh_l0"):  # 6.75 M values each: two chunks
        assert np.array_equal(w[name], rng.uniform(-k, k, size=(4500, 1500)).astype(np.float32))


def test_from_module_and_state_dict_agree():
    m = torch_module(SPEC)
    a, b = rp.Weights.from_torch(m, SPEC), rp.Weights.from_torch(m.state_dict(), SPEC)
    assert all(np.array_equal(a[k], b[k]) for k in a.tensors)
    assert a.arch["cell"] == "lstm" and b.arch is None


# ---- files ----------------------------------------------------------------------------------------------


def test_save_keeps_the_name_and_round_trips(tmp_path):
    w = rp.Weights.from_torch(torch_module(SPEC), SPEC)
    for name in ("w.npz", "w.pt", "weights"):
        path = w.save(tmp_path / name)
        assert path == tmp_path / name and path.exists()
        back = rp.Weights.load(path)
        assert back.arch == w.arch and all(np.array_equal(back[k], w[k]) for k in w.tensors)
        back.check(SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz", "w.pt", "weights"]


def _torch_save(path):
    torch.save(torch_module(SPEC).state_dict(), path)
    return path


def _truncated_npz(path):
    whole = rp.Weights.random(SPEC).save(path.with_suffix(".tmp")).read_bytes()
    path.write_bytes(whole[:2000])


def _npy(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


@pytest.mark.parametrize("make, message", [
    (_torch_save, r"sd.pt is a PyTorch file \(torch.save\): read it with torch.load and pass the module or state "
                  r"dict to Weights.from_torch"),
    (_truncated_npz, r"sd.pt is a truncated or damaged zip archive, not a whole .npz of Weights.save"),
    (_npy, r"sd.pt is a .npy file \(one array\); Weights.load reads the .npz"),
    (lambda p: p.write_text("weight_ih_l0 = 0.5\n"), r"sd.pt is not a weights file \(an .npz of Weights.save\): it "
                                                      r"starts with text"),
    (lambda p: torch.save(torch_module(SPEC).state_dict(), p, _use_new_zipfile_serialization=False),
     r"sd.pt is a Python pickle \(perhaps an older torch.save\)"),
    (lambda p: None, r"cannot read weights from .*sd.pt: No such file or directory"),
], ids=["torch.save", "truncated npz", "npy", "text", "old torch pickle", "missing"])
def test_every_bad_file_is_one_weights_error(tmp_path, make, message):
    path = tmp_path / "sd.pt"
    make(path)
    with pytest.raises(WeightsError, match=message) as e:
        rp.Weights.load(path)
    assert len(str(e.value).splitlines()) <= 2 and len(str(e.value)) < 300


def test_an_npz_of_other_arrays_is_named(tmp_path):
    path = tmp_path / "other.npz"
    with zipfile.ZipFile(path, "w") as z:  # a zip, but no .npy inside
        z.writestr("readme.txt", "hello")
    with pytest.raises(WeightsError, match="other.npz is an .npz this rnnplan cannot read"):
        rp.Weights.load(path)


def test_cli_run_with_a_torch_file_is_one_line(tmp_path):
    path = _torch_save(tmp_path / "sd.pt")
    r = subprocess.run([sys.executable, "-m", "rnnplan.cli", "run", "--weights", str(path), "--backend", "numpy",
                        "--layers", "2", "--hidden-size", "13", "--input-size", "7", "--seq-len", "2", "--batch", "1"],
                       capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "PyTorch file (torch.save)" in r.stderr and "Traceback" not in r.stderr


# ---- tensors and hyper-parameters ---------------------------------------------------------------------


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
    with pytest.raises(WeightsError, match="hyper-parameter cell: weights come from a module with cell='rnn_relu'"):
        rp.Weights.from_torch(torch.nn.RNN(3, 4, nonlinearity="relu"), spec)
    # A state dict cannot tell relu from tanh: it runs, and a warning says what went unchecked.
    with pytest.warns(WeightsWarning, match="nonlinearity 'tanh' .* cannot be checked"):
        rp.Weights.from_torch(torch.nn.RNN(3, 4, nonlinearity="relu").state_dict(), spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an LSTM's state dict leaves nothing unchecked
        rp.Weights.from_torch(torch_module(SPEC).state_dict(), SPEC)


def test_dropout_in_train_mode_warns():
    module = torch.nn.LSTM(7, 13, num_layers=2, bidirectional=True, dropout=0.3)  # train mode, as built
    with pytest.warns(WeightsWarning, match="training mode with dropout=0.3: rnnplan runs inference"):
        rp.Weights.from_torch(module, SPEC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rp.Weights.from_torch(module.eval(), SPEC)


def test_projections_kept_and_foreign_objects_rejected():
    weights = rp.Weights.from_torch(torch.nn.LSTM(7, 13, proj_size=5))
    assert weights.arch["proj_size"] == 5 and weights.tensors["weight_hr_l0"].shape == (5, 13)
    with pytest.raises(WeightsError, match="Linear holds no torch.nn.LSTM/GRU/RNN"):
        rp.Weights.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(WeightsError, match="takes a torch.nn.LSTM/GRU/RNN, a model holding one, or a state dict, got "
                                           "list"):
        rp.Weights.from_torch([1, 2])


# ---- wrappers and paths before the names ----------------------------------------------------------------


class Speech(torch.nn.Module):
    def __init__(self, rnns=1):
        super().__init__()
        self.proj = torch.nn.Linear(5, 7)
        self.encoder = torch.nn.ModuleDict({f"rnn{i}": torch_module(SPEC, i) for i in range(rnns)})


def test_prefixes_are_stripped_where_one_path_holds_the_rnn():
    base = torch_module(SPEC, 0)
    want = rp.Weights.from_torch(base, SPEC)
    wrapped = {
        "DataParallel": {f"module.{k}": v for k, v in base.state_dict().items()},
        "torch.compile": {f"_orig_mod.{k}": v for k, v in base.state_dict().items()},
        "a submodule of a model": Speech().state_dict(),
    }
    for what, sd in wrapped.items():
        got = rp.Weights.from_torch(sd, SPEC)
        assert all(np.array_equal(got[k], want[k]) for k in want.tensors), what
    got = rp.Weights.from_torch(Speech(), SPEC)  # a model holding one RNN: its hyper-parameters too
    assert got.arch == want.arch


def test_several_rnns_are_named():
    two = Speech(rnns=2)
    with pytest.raises(WeightsError, match=r"holds 2 RNN modules \(encoder.rnn0, encoder.rnn1\); pass the one"):
        rp.Weights.from_torch(two, SPEC)
    with pytest.raises(WeightsError, match=r"under 'encoder.rnn0.', 'encoder.rnn1.'; pass prefix= to choose one"):
        rp.Weights.from_torch(two.state_dict(), SPEC)
    got = rp.Weights.from_torch(two.state_dict(), SPEC, prefix="encoder.rnn1.")
    assert np.array_equal(got["weight_hh_l0"], two.encoder["rnn1"].weight_hh_l0.detach().numpy())
    with pytest.raises(WeightsError, match=r"no RNN parameters under prefix 'decoder.'"):
        rp.Weights.from_torch(two.state_dict(), SPEC, prefix="decoder.")


def test_extra_tensors_beside_a_bare_rnn_are_named():
    sd = dict(torch_module(SPEC).state_dict()) | {"linear.weight": torch.zeros(2, 2)}
    with pytest.raises(WeightsError, match="unexpected tensor linear.weight"):
        rp.Weights.from_torch(sd, SPEC)


@pytest.mark.skipif(not hasattr(torch, "compile") or os.environ.get("RNNPLAN_SKIP_COMPILE") == "1",
                    reason="torch.compile missing")
def test_a_compiled_module_is_unwrapped():
    base = torch_module(SPEC, 2)
    got = rp.Weights.from_torch(torch.compile(base), SPEC)
    assert got.arch["hidden_size"] == 13 and np.array_equal(got["weight_hh_l0"], base.weight_hh_l0.detach().numpy())
