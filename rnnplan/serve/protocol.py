"""What a client sends and gets back, checked before anything runs: a body becomes a `model.Request`
or a `RequestError` (its HTTP status and one line naming the field), so that no body can reach the
model malformed or crash a replica.

Bodies: JSON `{"x": [[...]], "state": {"h": [...], "c": [...]}}` (x of shape (T, I) or (T, B, I),
time-major; state optional: zeros), or binary: an `.npy` of x alone, or an `.npz` of `x` and
optionally `h` and `c`. Answers: JSON `{"out": [...], "state": {"h": [...], "c": [...]}}`, or an
.npz of `out`, `h`, `c` where the client's Accept header names application/x-npz; the state in the
shape a next request takes back (a streaming client sends it with its next chunk; the
server keeps nothing between requests).
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np

from rnnplan.serve.model import Answer, Request

MAX_STEPS = 100_000  # per request: a bound on the work one body can ask for


class RequestError(ValueError):
    """A body the server refuses: HTTP `status` (400, 413) and a message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse(body: bytes, content_type: str, template, max_bytes: int) -> Request:
    """The request in `body` for the model `template` (an RNNSpec), or RequestError."""
    if len(body) > max_bytes:
        raise RequestError(413, f"the body has {len(body)} bytes, over this server's limit of {max_bytes}")
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("application/x-npy", "application/x-npz", "application/octet-stream"):
        arrays = _binary(body)
    elif kind in ("application/json", "", "text/plain"):
        arrays = _json(body)
    else:
        raise RequestError(400, f"content type {kind!r}: send application/json, or an .npy / .npz body as "
                                "application/octet-stream")
    return _request(arrays, template)


def _json(body: bytes) -> dict:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"the body is not JSON ({e})") from None
    except RecursionError:
        raise RequestError(400, "the body's JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"the body must be a JSON object with field 'x', got a {type(doc).__name__}")
    unknown = set(doc) - {"x", "state"}
    if unknown:
        raise RequestError(400, f"unknown field(s) {sorted(unknown)}: a request has 'x' and optionally 'state'")
    if "x" not in doc:
        raise RequestError(400, "field 'x' is required: the input sequence, (T, I) or (T, B, I)")
    arrays = {"x": _array("x", doc["x"])}
    state = doc.get("state")
    if state is not None:
        if not isinstance(state, dict) or not set(state) <= {"h", "c"}:
            raise RequestError(400, "field 'state' must be an object with 'h' (and 'c' for an LSTM)")
        arrays |= {f"state.{k}": _array(f"state.{k}", v) for k, v in state.items()}
    return arrays


def _array(field: str, value) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, RecursionError):
        raise RequestError(400, f"field '{field}' must be a rectangular array of numbers") from None
    return a


def _finite(field: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise RequestError(400, f"field '{field}' holds values that are not finite numbers (null, NaN or infinity)")


def _binary(body: bytes) -> dict:
    try:
        if body[:2] == b"PK":
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                unknown = set(npz.files) - {"x", "h", "c"}
                if unknown:
                    raise RequestError(400, f"unknown array(s) {sorted(unknown)} in the .npz: it holds 'x', 'h', 'c'")
                if "x" not in npz.files:
                    raise RequestError(400, "field 'x' is required: the .npz holds no array 'x'")
                return {("x" if k == "x" else f"state.{k}"): npz[k] for k in npz.files}
        return {"x": np.load(io.BytesIO(body), allow_pickle=False)}
    except RequestError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise RequestError(400, f"the body is not a readable .npy or .npz ({type(e).__name__}: {e})") from None


def _request(arrays: dict, t) -> Request:
    x = arrays["x"]
    if x.dtype.kind not in "fiu":
        raise RequestError(400, f"field 'x' must hold numbers, got dtype {x.dtype}")
    if x.ndim not in (2, 3) or x.shape[-1] != t.input_size:
        raise RequestError(400, f"field 'x' must have shape (T, {t.input_size}) or (T, B, {t.input_size}), got "
                                f"{tuple(x.shape)}")
    if x.shape[0] == 0 or (x.ndim == 3 and x.shape[1] == 0):
        raise RequestError(400, f"field 'x' has shape {tuple(x.shape)}: at least one step of one sequence")
    _finite("x", x)
    if x.shape[0] > MAX_STEPS:
        raise RequestError(413, f"field 'x' has {x.shape[0]} steps, over this server's limit of {MAX_STEPS}")
    layers = t.num_layers * (2 if t.bidirectional else 1)
    batch = () if x.ndim == 2 else (x.shape[1],)
    lstm = t.cell == "lstm"
    state = {k[6:]: v for k, v in arrays.items() if k.startswith("state.")}
    if state and lstm and set(state) != {"h", "c"}:
        raise RequestError(400, "field 'state' of an LSTM needs both 'h' and 'c'")
    if "c" in state and not lstm:
        raise RequestError(400, f"field 'state.c': a {t.cell.upper()} has no cell state, send 'h' alone")
    widths = {"h": t.proj_size or t.hidden_size, "c": t.hidden_size}
    for k, v in state.items():
        want = (layers, *batch, widths[k])
        if v.dtype.kind not in "fiu" or v.shape != want:
            raise RequestError(400, f"field 'state.{k}' must have shape {want} (layers x directions, "
                                    f"{'batch, ' if batch else ''}width), got {tuple(v.shape)}")
        _finite(f"state.{k}", v)
    cast = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
    return Request(np.ascontiguousarray(x, dtype=np.float32), cast.get("h"), cast.get("c"))


def answer(a: Answer) -> dict:
    """The JSON-ready answer of one request."""
    state = {"h": a.h.tolist()} | ({"c": a.c.tolist()} if a.c is not None else {})
    return {"out": a.out.tolist(), "state": state}


def answer_npz(a: Answer) -> bytes:
    """The answer as an .npz of `out`, `h` (and `c`), for a client that accepts application/x-npz:
    no JSON to write and read, which at lengths of hundreds of steps costs more than the call."""
    buffer = io.BytesIO()
    np.savez(buffer, out=a.out, h=a.h, **({"c": a.c} if a.c is not None else {}))
    return buffer.getvalue()
