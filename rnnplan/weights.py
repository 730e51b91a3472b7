"""`Weights`: the network's parameters under PyTorch's names and layout.

`weight_ih_l{k}` (gates*H, input), `weight_hh_l{k}` (gates*H, H), `bias_ih_l{k}`, `bias_hh_l{k}`
(gates*H,), suffix `_reverse` for the reverse direction; gate rows in PyTorch's order. Tensors are
kept as float32 NumPy arrays; executors convert them to the plan's dtype and layout once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rnnplan.ir.build import param_shapes
from rnnplan.spec import RNNSpec

_ARCH_KEY = "__rnnplan_arch__"
_TORCH_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
ARCH_FIELDS = ("cell", "input_size", "hidden_size", "num_layers", "bidirectional", "bias", "batch_first")


class WeightsError(ValueError):
    """Weights do not fit a spec; the message names every offending tensor or hyper-parameter."""


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor: bfloat16 has no NumPy dtype, so go through float32
        t = t.detach().cpu().float().numpy()
    return np.array(t, dtype=np.float32, copy=True)


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
        """PyTorch's default initialisation: uniform in [-1/sqrt(H), 1/sqrt(H)]."""
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(spec.hidden_size)
        tensors = {name: rng.uniform(-k, k, size=shape).astype(np.float32)
                   for name, shape in param_shapes(spec).items()}
        return cls(tensors, {f: getattr(spec, f) for f in ARCH_FIELDS})

    @classmethod
    def from_torch(cls, module_or_state_dict, spec: RNNSpec | None = None) -> Weights:
        """From a `torch.nn.LSTM`/`GRU`/`RNN` (hyper-parameters checked against `spec` if given) or a
        state dict with PyTorch's names."""
        obj = module_or_state_dict
        if isinstance(obj, Mapping):
            weights = cls(obj)
        elif hasattr(obj, "state_dict") and hasattr(obj, "mode"):
            if obj.mode not in _TORCH_MODES:
                raise WeightsError(f"unsupported torch RNN mode {obj.mode!r}; supported: {list(_TORCH_MODES)}")
            if getattr(obj, "proj_size", 0):
                raise WeightsError(f"LSTM with proj_size={obj.proj_size} is not supported (needs 0)")
            arch = {"cell": _TORCH_MODES[obj.mode], **{f: getattr(obj, f) for f in ARCH_FIELDS[1:]}}
            weights = cls(obj.state_dict(), arch)
        else:
            raise WeightsError(f"from_torch takes a torch.nn.LSTM/GRU/RNN or a state dict, got "
                               f"{type(obj).__name__}")
        if spec is not None:
            weights.check(spec)
        return weights

    # ---- persistence ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        extra = {_ARCH_KEY: np.frombuffer(json.dumps(self.arch).encode(), dtype=np.uint8)}
        np.savez(path, **self.tensors, **extra)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Weights:
        try:
            with np.load(path, allow_pickle=False) as npz:
                tensors = {k: npz[k] for k in npz.files if k != _ARCH_KEY}
                arch = json.loads(npz[_ARCH_KEY].tobytes()) if _ARCH_KEY in npz.files else None
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot read weights from {path}: {e}") from None
        return cls(tensors, arch)

    # ---- checking ---------------------------------------------------------------------------------

    def check(self, spec: RNNSpec) -> Weights:
        """Raise one WeightsError naming every hyper-parameter and tensor that disagrees with `spec`."""
        problems = []
        if self.arch:
            problems += [f"hyper-parameter {f}: weights come from a module with {f}={self.arch[f]!r}, "
                         f"the spec has {f}={getattr(spec, f)!r}"
                         for f in ARCH_FIELDS if f in self.arch and self.arch[f] != getattr(spec, f)]
        expected = param_shapes(spec)
        for name, shape in expected.items():
            if name not in self.tensors:
                problems.append(f"missing tensor {name}: expected shape {shape}")
            elif self.tensors[name].shape != shape:
                problems.append(f"tensor {name}: expected shape {shape}, got {self.tensors[name].shape}")
        problems += [f"unexpected tensor {name} of shape {self.tensors[name].shape}"
                     for name in self.tensors if name not in expected]
        if problems:
            raise WeightsError(f"weights do not fit {spec.short()}:\n  " + "\n  ".join(problems))
        return self

    def layout(self, source: str, transform: str) -> np.ndarray:
        """A tensor as a 2-D matrix (biases as one row), transposed if the plan asks for it."""
        t = self.tensors[source]
        t = t.reshape(1, -1) if t.ndim == 1 else t
        return np.ascontiguousarray(t.T) if transform == "transpose" else t
