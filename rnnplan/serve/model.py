"""The model a server runs, and one batched call of it: every request's sequences of one batch, of
any lengths, packed into one PackedSequence and run by one call of `rnnplan.compile`'s module
(variable lengths in one executor call, the idea of cellular batching), then split back into one
answer per request. Plain Python and torch: no Ray here (`serve/ray_app.py` wraps it, and
`serve/batching.py` batches concurrent calls without Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Request:
    """One client's input: `x` (T, I) or (T, B, I) in the model's dtype (time-major), and its state
    (`h`, and `c` for LSTMs: (L*D, H) for (T, I), (L*D, B, H) for (T, B, I)), or None for zeros."""

    x: np.ndarray
    h: np.ndarray | None = None
    c: np.ndarray | None = None

    @property
    def sequences(self) -> int:
        return 1 if self.x.ndim == 2 else self.x.shape[1]


@dataclass(frozen=True)
class Answer:
    """`out` shaped as the request's x with the model's output width; the final state (c None but for LSTMs)."""

    out: np.ndarray
    h: np.ndarray
    c: np.ndarray | None


class ServedModel:
    """A torch RNN module (or one read from a file, `load_model`) behind `run_batch`. `module` runs the
    calls: `rnnplan.compile`'s, or a plain torch module (the baseline a benchmark compares against)."""

    def __init__(self, module, template, device: str, description: str, batch_buckets: tuple[int, ...] = ()):
        self.module, self.template, self.device, self.description = module, template, device, description
        # A call's sequences are padded (with one-step dummies) up to the smallest of these that holds
        # them, so that a GPU sees few batch sizes: each new one is an executor to build (its plan,
        # autotuning, for the persistent kernel a compile).
        self.batch_buckets = tuple(batch_buckets)
        t = template
        self.layers = t.num_layers * t.directions
        self.lstm = t.cell == "lstm"

    def run_batch(self, requests: list[Request]) -> list[Answer]:
        """One call for all `requests` (each already checked against the model by `serve.protocol`)."""
        import torch
        from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

        t, dev = self.template, torch.device(self.device)
        torch_dtype = getattr(torch, t.dtype)
        seqs, h, c = [], [], []
        for r in requests:
            x = r.x if r.x.ndim == 3 else r.x[:, None, :]
            n = x.shape[1]
            seqs += [torch.from_numpy(np.ascontiguousarray(x[:, b])) for b in range(n)]
            for given, out, width in ((r.h, h, t.output_size), (r.c, c, t.hidden_size)):
                if given is None:
                    out.append(np.zeros((self.layers, n, width), np.float32))
                else:
                    out.append(given if given.ndim == 3 else given[:, None, :])
        n = len(seqs)
        pad = min((b for b in self.batch_buckets if b >= n), default=n) - n
        seqs += [torch.zeros((1, t.input_size))] * pad
        h += [np.zeros((self.layers, pad, t.output_size), np.float32)]
        c += [np.zeros((self.layers, pad, t.hidden_size), np.float32)]
        packed = pack_sequence([s.to(dev, torch_dtype) for s in seqs], enforce_sorted=False)
        h0 = torch.from_numpy(np.concatenate(h, axis=1).astype(np.float32, copy=False)).to(dev, torch_dtype)
        hx = (h0, torch.from_numpy(np.concatenate(c, axis=1).astype(np.float32, copy=False)).to(dev, torch_dtype)) \
            if self.lstm else h0
        with torch.no_grad():
            out, state = self.module(packed, hx)
        padded, _ = pad_packed_sequence(out)
        padded = padded.float().cpu().numpy()
        h_n, c_n = state if self.lstm else (state, None)
        h_n = h_n.float().cpu().numpy()
        c_n = None if c_n is None else c_n.float().cpu().numpy()
        answers, at = [], 0  # (the dummies, last, are dropped)
        for r in requests:
            n, steps = r.sequences, r.x.shape[0]
            rows = slice(at, at + n)
            o, hs = padded[:steps, rows], h_n[:, rows]
            cs = None if c_n is None else c_n[:, rows]
            if r.x.ndim == 2:
                o, hs, cs = o[:, 0], hs[:, 0], None if cs is None else cs[:, 0]
            answers.append(Answer(o, hs, cs))
            at += n
        return answers

    def warm_up(self, max_steps: int, step: int) -> float:
        """Run every shape a call of at most `max_steps` steps can take (lengths in multiples of `step`,
        the compiled module's bucket; each batch bucket), so that no client waits for a set-up; returns
        the seconds it took."""
        import time

        t0 = time.perf_counter()
        shapes = [(steps, b) for b in self.batch_buckets or (1,) for steps in range(step, max_steps + step, step)]

        def every_shape():
            for steps, b in shapes:
                self.run_batch([Request(np.zeros((steps, b, self.template.input_size), np.float32))])
        every_shape()
        wait = getattr(self.module, "wait", None)
        if wait is not None and self.module.cache_info().building:  # build="background": the builds, then
            wait()
            every_shape()  # a call at each shape installs its executor
        return time.perf_counter() - t0


def load_model(path: str | Path, backend: str = "auto", compiled: bool = True, **options) -> ServedModel:
    """The model in `path` (a Weights .npz written by `Weights.save`, which holds its architecture, or
    an .onnx file) as a ServedModel on `backend` ("auto": the GPU where torch sees one, else the CPU;
    "numpy": the CPU; "cupy": the GPU). `compiled=False` serves the plain torch module (a baseline);
    `options` go to `rnnplan.compile`; set `batch_buckets` on the result (its device decides them)."""
    import torch

    from rnnplan.dropin import compile as compile_module
    from rnnplan.spec import RNNSpec

    if backend not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be auto, numpy or cupy, got {backend!r}")
    gpu = torch.cuda.is_available()
    if backend == "cupy" and not gpu:
        raise ValueError("backend 'cupy' needs a CUDA GPU that torch can use; none is here")
    device = "cuda" if backend == "cupy" or (backend == "auto" and gpu) else "cpu"
    path = Path(path)
    if path.suffix == ".onnx":
        from rnnplan.importers.onnx_rnn import torch_module

        module = torch_module(str(path))
        if getattr(module, "onnx_reverse", False):
            raise ValueError(f"{path}: a reverse-only ONNX layer is not served yet (run it with rnnplan.from_onnx)")
    else:
        from rnnplan.weights import Weights

        weights = Weights.load(path)
        if not weights.arch:
            raise ValueError(f"{path} holds no architecture (save it with Weights.from_torch(module).save)")
        module = _module_of(weights)
    module = module.to(device).eval()
    spec = RNNSpec.from_torch(module, seq_len=1, batch=1)
    if spec.batch_first:
        raise ValueError(f"{path}: a batch-first module; serve takes time-major sequences (save it batch_first=False)")
    served = compile_module(module, **options) if compiled else module
    what = f"{spec.short().split(' in=')[0]} in={spec.input_size} {spec.dtype} on {device}" + \
        ("" if compiled else " (torch's own module)")
    return ServedModel(served, spec, device, what)


def _module_of(weights):
    """The torch module of a Weights file's architecture and tensors."""
    import torch

    from rnnplan.spec import RNNSpec

    spec = RNNSpec(**weights.arch, seq_len=1, batch=1)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.tensors.items()}
    return spec.to_torch(state_dict=state, dtype=state["weight_hh_l0"].dtype)
