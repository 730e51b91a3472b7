"""`Weights`: the network's parameters under PyTorch's names and layout.

`weight_ih_l{k}` (gates*H, input), `weight_hh_l{k}` (gates*H, H), `bias_ih_l{k}`, `bias_hh_l{k}`
(gates*H,), suffix `_reverse` for the reverse direction; gate rows in PyTorch's order. Tensors are
kept as float32 NumPy arrays; executors convert them to the plan's dtype and layout once.

Weights taken from a module carry its hyper-parameters (`arch`: cell and nonlinearity, sizes, bias,
directions, batch_first), which `check` compares with a spec; a bare state dict carries none, and
`check` says what it cannot tell from shapes alone. Every bad input is one `WeightsError` naming the
tensor, the file or the hyper-parameter.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rnnplan.ir.build import param_shapes
from rnnplan.resources import available_host_bytes, check_fits, weight_count
from rnnplan.spec import RNNSpec, torch_cell

_ARCH_KEY = "__rnnplan_arch__"
ARCH_FIELDS = ("cell", "input_size", "hidden_size", "num_layers", "bidirectional", "bias", "batch_first",
               "proj_size")
# A PyTorch RNN parameter's name, after whatever path a state dict puts before it.
_PARAM = re.compile(r"^(?P<prefix>.*?)(?P<name>(weight|bias)_(ih|hh)_l\d+(_reverse)?)$")
_CHUNK = 1 << 22  # values drawn at a time by `random` (float64 draws, stored as float32)


class WeightsError(ValueError):
    """Weights do not fit a spec, or a file is not weights; the message names the tensor, file or
    hyper-parameter."""


class WeightsWarning(UserWarning):
    """Something about the weights could not be checked, or will be ignored at inference."""


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor: bfloat16 has no NumPy dtype, so go through float32
        t = t.detach().cpu().float().numpy()
    return np.array(t, dtype=np.float32, copy=True)


def _is_rnn(module) -> bool:
    return hasattr(module, "mode") and hasattr(module, "all_weights")  # what torch.nn.RNNBase has


def _rnn_module(obj):
    """The one torch RNN module in `obj` (itself, a torch.compile or DataParallel wrapper of one, or a
    model holding exactly one), or None where `obj` is no module."""
    obj = getattr(obj, "_orig_mod", obj)  # torch.compile's wrapper forwards attributes: unwrap it first
    if _is_rnn(obj):
        return obj
    if not hasattr(obj, "named_modules"):
        return None
    found = [(name, m) for name, m in obj.named_modules() if _is_rnn(m)]
    if len(found) == 1:
        return found[0][1]
    if not found:
        raise WeightsError(f"from_torch: {type(obj).__name__} holds no torch.nn.LSTM/GRU/RNN")
    raise WeightsError(f"from_torch: {type(obj).__name__} holds {len(found)} RNN modules "
                       f"({', '.join(n or '(itself)' for n, _ in found)}); pass the one to run")


def _strip_prefix(state: Mapping, prefix: str | None) -> dict:
    """The RNN parameters of a state dict under PyTorch's own names: the path before them (`module.`
    of DataParallel, `_orig_mod.` of torch.compile, a submodule's path) is stripped when one path
    holds them all, or `prefix` says which."""
    found: dict[str, dict] = {}
    for key, value in state.items():
        m = _PARAM.match(key)
        if m:
            found.setdefault(m["prefix"], {})[m["name"]] = value
    if prefix is not None:
        if prefix not in found:
            raise WeightsError(f"no RNN parameters under prefix {prefix!r}; the state dict has them under "
                               f"{sorted(found) or 'no prefix at all'}")
        return found[prefix]
    if len(found) > 1:
        raise WeightsError(f"the state dict holds the parameters of {len(found)} RNN modules, under "
                           f"{', '.join(repr(p) for p in sorted(found))}; pass prefix= to choose one")
    if not found:
        return dict(state)  # no RNN names at all: check() lists what is missing
    (only_prefix, params), = found.items()
    # Under a path, the rest of the dict is the rest of a model; with none, all of it must be the RNN's.
    return params if only_prefix else dict(state)


class Weights:
    def __init__(self, tensors: Mapping[str, np.ndarray], arch: Mapping[str, object] | None = None):
        self.tensors: dict[str, np.ndarray] = {k: _to_numpy(v) for k, v in tensors.items()}
        self.arch: dict[str, object] | None = dict(arch) if arch else None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def __repr__(self) -> str:
        return f"<Weights {len(self.tensors)} tensors, arch={self.arch}>"

    # ---- constructors -----------------------------------------------------------------------------

    @classmethod
    def random(cls, spec: RNNSpec, seed: int = 0) -> Weights:
        """PyTorch's default initialisation: uniform in [-1/sqrt(H), 1/sqrt(H)], drawn in float64
        chunks and stored as float32 (the host is checked for the memory first)."""
        need = weight_count(spec) * 4
        check_fits(f"Weights.random for {spec.short()}", need, available_host_bytes(), "host", spec,
                   {"weights": need})
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(spec.hidden_size)
        tensors = {}
        for name, shape in param_shapes(spec).items():
            flat = np.empty(int(np.prod(shape)), dtype=np.float32)
            for start in range(0, flat.size, _CHUNK):  # the same draws as one call, in bounded memory
                flat[start:start + _CHUNK] = rng.uniform(-k, k, size=min(_CHUNK, flat.size - start))
            tensors[name] = flat.reshape(shape)
        return cls(tensors, {f: getattr(spec, f) for f in ARCH_FIELDS})

    @classmethod
    def from_torch(cls, module_or_state_dict, spec: RNNSpec | None = None, prefix: str | None = None) -> Weights:
        """From a `torch.nn.LSTM`/`GRU`/`RNN` (or a model or wrapper holding exactly one; its
        hyper-parameters are kept and checked against `spec` if given) or a state dict with PyTorch's
        names (behind any one path, such as `module.` or `_orig_mod.`; `prefix` picks one of several)."""
        obj = module_or_state_dict
        if isinstance(obj, Mapping):
            weights = cls(_strip_prefix(obj, prefix))
        elif (module := _rnn_module(obj)) is not None:
            cell = torch_cell(module, "Weights.from_torch", WeightsError)
            if module.training and module.dropout > 0 and module.num_layers > 1:
                warnings.warn(f"the module is in training mode with dropout={module.dropout}: rnnplan runs inference, "
                              "which applies no dropout (call module.eval() to say so)", WeightsWarning, stacklevel=2)
            arch = {"cell": cell, **{f: getattr(module, f) for f in ARCH_FIELDS[1:]}}
            weights = cls(module.state_dict(), arch)
        else:
            raise WeightsError(f"from_torch takes a torch.nn.LSTM/GRU/RNN, a model holding one, or a state dict, "
                               f"got {type(obj).__name__}")
        if spec is not None:
            weights.check(spec)
        return weights

    # ---- persistence ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the tensors and hyper-parameters as an .npz archive at exactly `path`."""
        path = Path(path)
        extra = {_ARCH_KEY: np.frombuffer(json.dumps(self.arch).encode(), dtype=np.uint8)}
        try:
            with open(path, "wb") as f:
                np.savez(f, **self.tensors, **extra)
        except OSError as e:
            raise WeightsError(f"cannot write weights to {path}: {e.strerror or e}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> Weights:
        """Weights written by `save`; any other file gets one WeightsError saying what it is."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise WeightsError(f"cannot read weights from {path}: {e.strerror or e}") from None
        if head.startswith(b"PK"):
            try:
                with zipfile.ZipFile(path) as z:
                    names = z.namelist()
            except zipfile.BadZipFile:
                raise WeightsError(f"{path} is a truncated or damaged zip archive, not a whole .npz of "
                                   "Weights.save") from None
            if any(n.endswith("data.pkl") for n in names):
                raise WeightsError(f"{path} is a PyTorch file (torch.save): read it with torch.load and pass the "
                                   "module or state dict to Weights.from_torch")
            try:
                with np.load(path, allow_pickle=False) as npz:
                    tensors = {k: npz[k] for k in npz.files if k != _ARCH_KEY}
                    arch = json.loads(npz[_ARCH_KEY].tobytes()) if _ARCH_KEY in npz.files else None
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                raise WeightsError(f"{path} is an .npz this rnnplan cannot read ({type(e).__name__}: {e})") from None
            odd = [k for k, v in tensors.items() if not (isinstance(v, np.ndarray) and v.dtype.kind in "fiu")]
            if odd:
                raise WeightsError(f"{path} is an .npz this rnnplan cannot read: {', '.join(odd[:3])} "
                                   f"{'is no numeric array' if len(odd) == 1 else 'are no numeric arrays'}")
            return cls(tensors, arch)
        if head.startswith(b"\x93NUMPY"):
            raise WeightsError(f"{path} is a .npy file (one array); Weights.load reads the .npz of named tensors "
                               "that Weights.save writes")
        if head[:1] == b"\x80":
            raise WeightsError(f"{path} is a Python pickle (perhaps an older torch.save): read it with torch.load "
                               "and pass the module or state dict to Weights.from_torch")
        what = "text" if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head) else f"bytes {head!r}"
        raise WeightsError(f"{path} is not a weights file (an .npz of Weights.save): it starts with {what}")

    # ---- checking ---------------------------------------------------------------------------------

    def check(self, spec: RNNSpec) -> Weights:
        """Raise one WeightsError naming every hyper-parameter and tensor that disagrees with `spec`.
        Weights from a bare state dict carry no hyper-parameters: where shapes cannot tell (an Elman
        RNN's nonlinearity), a WeightsWarning says so."""
        problems = []
        if self.arch:
            problems += [f"hyper-parameter {f}: weights come from a module with {f}={self.arch[f]!r}, "
                         f"the spec has {f}={getattr(spec, f)!r}"
                         for f in ARCH_FIELDS if f in self.arch and self.arch[f] != getattr(spec, f)]
        elif spec.cell in ("rnn_tanh", "rnn_relu"):
            warnings.warn(f"weights from a state dict carry no hyper-parameters: that they belong to an RNN with "
                          f"nonlinearity {spec.cell[4:]!r} (the spec's cell {spec.cell}) cannot be checked; "
                          "Weights.from_torch(module) keeps them", WeightsWarning, stacklevel=2)
        expected = param_shapes(spec)
        for name, shape in expected.items():
            if name not in self.tensors:
                problems.append(f"missing tensor {name}: expected shape {shape}")
            elif self.tensors[name].shape != shape:
                problems.append(f"tensor {name}: expected shape {shape}, got {self.tensors[name].shape}")
        problems += [f"unexpected tensor {name} of shape {self.tensors[name].shape}"
                     for name in self.tensors if name not in expected]
        if problems:
            raise WeightsError(f"weights do not fit {spec.short()}:\n  " + "\n  ".join(problems[:12]) +
                               (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""))
        return self

    def layout(self, source: str, transform: str) -> np.ndarray:
        """A tensor as a 2-D matrix (biases as one row), transposed if the plan asks for it."""
        t = self.tensors[source]
        t = t.reshape(1, -1) if t.ndim == 1 else t
        return np.ascontiguousarray(t.T) if transform == "transpose" else t
