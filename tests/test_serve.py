"""Serving (issue 20): one packed call for requests of different lengths (against torch, request by
request), bodies refused by field, the thread batcher without Ray, and the application on a local Ray
(concurrent HTTP requests of mixed lengths, a replica killed mid-test, a clean shutdown)."""

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import rnnplan as rp
from rnnplan.backends import cupy_unavailable_reason
from rnnplan.serve import Batcher, Request, load_model
from rnnplan.serve.protocol import RequestError, answer, parse


def _saved(tmp_path, cell="lstm", bidirectional=False, proj=0, seed=0):
    torch.manual_seed(seed)
    kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    m = kind(6, 10, num_layers=2, bidirectional=bidirectional, **({"proj_size": proj} if proj else {})).eval()
    path = tmp_path / f"{cell}.npz"
    rp.Weights.from_torch(m).save(path)
    return m, path


def _torch_answer(m, r: Request):
    """torch's run of one request alone (the reference of a batched answer)."""
    x = torch.from_numpy(r.x if r.x.ndim == 3 else r.x[:, None])
    lift = (lambda a: torch.from_numpy(a if a.ndim == 3 else a[:, None])) if r.h is not None else None
    hx = None if lift is None else ((lift(r.h), lift(r.c)) if isinstance(m, torch.nn.LSTM) else lift(r.h))
    with torch.no_grad():
        out, st = m(x, hx)
    h, c = st if isinstance(m, torch.nn.LSTM) else (st, None)
    drop = (lambda t: t.numpy()) if r.x.ndim == 3 else (lambda t: t[:, 0].numpy())  # (T, 1, W) -> (T, W)
    return drop(out), drop(h), None if c is None else drop(c)


def _requests(m, rng, lengths=(5, 1, 17, 3)):
    lstm, layers = isinstance(m, torch.nn.LSTM), m.num_layers * (2 if m.bidirectional else 1)
    width = m.proj_size or m.hidden_size if lstm else m.hidden_size
    rs = [Request(rng.standard_normal((T, 6)).astype(np.float32)) for T in lengths]
    h = rng.standard_normal((layers, 2, width)).astype(np.float32)
    c = rng.standard_normal((layers, 2, m.hidden_size)).astype(np.float32) if lstm else None
    rs.append(Request(rng.standard_normal((4, 2, 6)).astype(np.float32), h, c))  # two sequences, a state
    rs.append(Request(rng.standard_normal((9, 6)).astype(np.float32), h[:, 0], None if c is None else c[:, 0]))
    return rs


def _close(answer_, want, tol=1e-5):
    out, h, c = want
    assert answer_.out.shape == out.shape and np.abs(answer_.out - out).max() <= tol
    assert answer_.h.shape == h.shape and np.abs(answer_.h - h).max() <= tol
    assert (answer_.c is None) == (c is None) and (c is None or np.abs(answer_.c - c).max() <= tol)


@pytest.mark.parametrize("cell, bidirectional, proj", [("lstm", False, 0), ("gru", True, 0), ("rnn", False, 0),
                                                      ("lstm", True, 4)])
def test_one_batched_call_answers_each_request_as_torch_alone(tmp_path, cell, bidirectional, proj):
    m, path = _saved(tmp_path, cell, bidirectional, proj)
    model = load_model(path, "numpy")
    rs = _requests(m, np.random.default_rng(1))
    for got, r in zip(model.run_batch(rs), rs):
        _close(got, _torch_answer(m, r))
    model.batch_buckets = (4, 16)  # 8 sequences padded to 16 with one-step dummies, their rows dropped
    for got, r in zip(model.run_batch(rs), rs):
        _close(got, _torch_answer(m, r))
    model.batch_buckets = ()
    if bidirectional:  # (a reverse direction reads the future: chunks of it are not the whole)
        return
    # the answer's state continues the sequence: two chunks equal the whole
    whole = rs[0].x
    first = model.run_batch([Request(whole[:2])])[0]
    second = model.run_batch([Request(whole[2:], first.h, first.c)])[0]
    alone = model.run_batch([Request(whole)])[0]
    assert np.abs(np.concatenate([first.out, second.out]) - alone.out).max() <= 1e-5
    assert np.abs(second.h - alone.h).max() <= 1e-5


def test_json_and_binary_bodies_give_the_same_request(tmp_path):
    m, path = _saved(tmp_path)
    t = load_model(path, "numpy").template
    rng = np.random.default_rng(2)
    x, h, c = (rng.standard_normal(s).astype(np.float32) for s in ((7, 6), (2, 10), (2, 10)))
    from_json = parse(json.dumps({"x": x.tolist(), "state": {"h": h.tolist(), "c": c.tolist()}}).encode(),
                      "application/json", t, 2**20)
    npz = io.BytesIO()
    np.savez(npz, x=x, h=h, c=c)
    from_npy = parse(_npy(x), "application/octet-stream", t, 2**20)
    from_npz = parse(npz.getvalue(), "application/x-npz", t, 2**20)
    assert np.array_equal(from_json.x, x) and np.array_equal(from_npy.x, x) and from_npy.h is None
    assert np.array_equal(from_npz.h, h) and np.array_equal(from_json.c, c)
    doc = answer(load_model(path, "numpy").run_batch([from_json])[0])
    assert np.asarray(doc["out"]).shape == (7, 10) and set(doc["state"]) == {"h", "c"}


def _npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


@pytest.mark.parametrize("body, status, words", [
    (b"{", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object with field 'x'"),
    (b'{"y": 1}', 400, "unknown field"),
    (b'{"state": null}', 400, "field 'x' is required"),
    (b'{"x": "abc"}', 400, "field 'x' must be a rectangular array of numbers"),
    (b'{"x": [[1, 2], [3]]}', 400, "rectangular array"),
    (b'{"x": [[1, 2, 3]]}', 400, "field 'x' must have shape (T, 6)"),
    (b'{"x": []}', 400, "field 'x' must have shape"),
    (_npy(np.zeros((0, 6), np.float32)), 400, "at least one step"),  # (JSON cannot hold a (0, I) array)
    (json.dumps({"x": np.zeros((2, 6)).tolist(), "state": {"h": np.zeros((2, 10)).tolist()}}).encode(), 400,
     "needs both 'h' and 'c'"),
    (json.dumps({"x": np.zeros((2, 6)).tolist(), "state": {"h": np.zeros((1, 10)).tolist(),
                                                            "c": np.zeros((2, 10)).tolist()}}).encode(), 400,
     "field 'state.h' must have shape (2, 10)"),
    (json.dumps({"x": np.zeros((2, 6)).tolist(), "state": [1]}).encode(), 400, "field 'state' must be an object"),
    (b"\x93NUMPY garbage", 400, "not a readable .npy"),
    (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
    (b'{"x": [[null, 1, 2, 3, 4, 5]]}', 400, "field 'x' holds values that are not finite"),
    (b"x" * 2000, 413, "over this server's limit of 1000"),
])
def test_bad_bodies_are_refused_naming_the_field(tmp_path, body, status, words):
    _, path = _saved(tmp_path)
    t = load_model(path, "numpy").template
    kind = "application/octet-stream" if body.startswith(b"\x93") else "application/json"
    with pytest.raises(RequestError) as e:
        parse(body, kind, t, 1000 if status == 413 else 2**20)
    assert e.value.status == status and words in str(e.value), str(e.value)


def test_the_batcher_batches_concurrent_requests_and_survives_a_failing_batch(tmp_path):
    m, path = _saved(tmp_path, "gru")
    model = load_model(path, "numpy")
    batcher = Batcher(model, max_batch=16, wait_ms=20)
    rng = np.random.default_rng(3)
    rs = _requests(m, rng) * 3
    results: dict[int, object] = {}

    def client(i):
        results[i] = batcher.submit(rs[i]).result(timeout=60)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(rs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i, r in enumerate(rs):
        _close(results[i], _torch_answer(m, r))
    assert sum(batcher.batches) == sum(r.sequences for r in rs) and max(batcher.batches) > 1
    assert max(batcher.batches) <= 16
    broken = Request(np.zeros((3, 5), np.float32))  # (not checked by protocol: the model's call fails)
    with pytest.raises(ValueError, match="must be"):
        batcher.submit(broken).result(timeout=60)
    _close(batcher.submit(rs[0]).result(timeout=60), _torch_answer(m, rs[0]))  # the worker goes on
    batcher.close()


def test_serve_options_are_checked_by_field():
    from pydantic import ValidationError

    from rnnplan.serve.options import ServeOptions

    assert ServeOptions(max_batch=64).buckets_on("cuda") == (8, 64) and ServeOptions().buckets_on("cpu") == ()
    assert ServeOptions(batch_buckets=(16, 4, 16)).buckets_on("cpu") == (4, 16)
    for bad, words in ((dict(max_batch=0), "max_batch"), (dict(backend="tpu"), "backend"),
                       (dict(warm_up_steps=50), "needs bucket"), (dict(batch_buckets=(0,)), "positive"),
                       (dict(max_body_mb=0), "max_body_mb"), (dict(replicas=2), "replicas")):
        with pytest.raises(ValidationError, match=words):
            ServeOptions(**bad)


@pytest.mark.parametrize("build", ["blocking", "background"])
def test_warm_up_builds_every_shape_before_the_first_request(tmp_path, build):
    m, path = _saved(tmp_path)
    model = load_model(path, "numpy", bucket=16, build=build)
    model.batch_buckets = (1, 4)
    assert model.warm_up(48, 16) >= 0 and model.module.cache_info().executors == 6  # 3 lengths x 2 batch sizes
    assert model.module.cache_info().building == 0  # (in the background: waited for, and installed)
    model.run_batch([Request(np.zeros((20, 6), np.float32)), Request(np.zeros((33, 6), np.float32))])
    assert model.module.cache_info().executors == 6  # nothing new built: (48 steps, 4 sequences) was warm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, body: bytes, kind="application/json", timeout=60):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_application_on_a_local_ray(tmp_path):
    """Concurrent requests of mixed lengths from several threads, each checked against torch; bad bodies
    answered 400 / 413; a replica killed mid-test is restarted by Ray and later requests answer; clean
    shutdown. Traffic only to 127.0.0.1, bounded in count and time."""
    import ray  # (the test command installs rnnplan[serve]: this runs on CI)
    from ray import serve

    import rnnplan.serve

    m, path = _saved(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(rnnplan.serve.app(path, backend="numpy", replicas=1, max_batch=8, batch_wait_ms=20,
                                    max_body_mb=1, bucket=8, warm_up_steps=40), name="rnnplan", route_prefix="/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert json.loads(r.read())["shapes_built"] == 5  # warmed up: lengths 8 ... 40, before any request
        rng = np.random.default_rng(4)
        xs = [rng.standard_normal((int(T), 6)).astype(np.float32) for T in rng.integers(1, 40, 24)]
        got: dict[int, tuple] = {}

        def client(i):
            got[i] = _post(port, json.dumps({"x": xs[i].tolist()}).encode())
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(xs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        for i, x in enumerate(xs):
            status, doc = got[i]
            assert status == 200, doc
            want_out, want_h, want_c = _torch_answer(m, Request(x))
            assert np.abs(np.asarray(doc["out"]) - want_out).max() <= 1e-5
            assert np.abs(np.asarray(doc["state"]["c"]) - want_c).max() <= 1e-5
        # a binary body, and an .npz answer where the client accepts one
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=_npy(xs[1]), headers={
            "Content-Type": "application/octet-stream", "Accept": "application/x-npz"})
        with urllib.request.urlopen(request, timeout=60) as r, np.load(io.BytesIO(r.read())) as npz:
            assert np.abs(npz["out"] - _torch_answer(m, Request(xs[1]))[0]).max() <= 1e-5 and "c" in npz.files
        assert _post(port, b'{"x": [[1]]}')[0] == 400
        status, doc = _post(port, json.dumps({"x": np.zeros((2, 9, 6)).tolist()}).encode())  # 9 > max_batch 8
        assert status == 413 and "9 sequences" in doc["error"]
        status, doc = _post(port, b"0" * (2**20 + 1))
        assert status == 413 and "limit" in doc["error"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert json.loads(r.read())["input_size"] == 6
        # a replica killed: Ray's Serve controller starts another, and requests answer again
        (replica,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=False)
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            try:
                status, doc = _post(port, json.dumps({"x": xs[0].tolist()}).encode(), timeout=10)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200 and np.abs(np.asarray(doc["out"]) - _torch_answer(m, Request(xs[0]))[0]).max() <= 1e-5
    finally:
        serve.shutdown()
        ray.shutdown()
    assert not ray.is_initialized()


GPU = cupy_unavailable_reason() is None and torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
def test_gpu_a_batched_call_on_the_gpu_answers_each_request_as_torch(tmp_path):
    """The served model on CUDA tensors (rnnplan.compile's packed calls), its batch padded to a bucket."""
    m, path = _saved(tmp_path, "lstm", proj=4)
    model = load_model(path, "cupy", bucket=8)
    assert model.device == "cuda"
    model.batch_buckets = (8, 16)
    torch.backends.cudnn.allow_tf32 = False
    rs = _requests(m, np.random.default_rng(5)) * 2
    for _ in range(2):
        for got, r in zip(model.run_batch(rs), rs):
            _close(got, _torch_answer(m, r), 1e-4)
    torch.backends.cudnn.allow_tf32 = True


def test_rnnplan_serve_on_the_command_line(tmp_path):
    """`rnnplan serve MODEL` as a user starts it: it answers over HTTP, and Ctrl-C stops it (Serve and
    Ray shut down, exit status 0); a missing model file is named at once, before Ray starts."""
    import signal
    import subprocess
    import sys

    from rnnplan.cli import main

    assert main(["serve", str(tmp_path / "missing.npz")]) == 2
    m, path = _saved(tmp_path, "gru")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "rnnplan.cli", "serve", str(path), "--port", str(port),
                               "--backend", "numpy", "--replicas", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120  # until it says where it serves, as a user would wait
        while time.monotonic() < deadline and server.poll() is None and not any("serving " in x for x in lines):
            time.sleep(0.5)
        assert any(f"serving {path.name} at http://127.0.0.1:{port}/" in x for x in lines), "".join(lines)[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert json.loads(r.read())["state"] == ["h"]
        x = np.random.default_rng(6).standard_normal((11, 6)).astype(np.float32)
        status, answer_ = _post(port, json.dumps({"x": x.tolist()}).encode())
        assert status == 200 and np.abs(np.asarray(answer_["out"]) - _torch_answer(m, Request(x))[0]).max() <= 1e-5
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=150)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        reader.join(timeout=30)
    assert server.returncode == 0, "".join(lines)[-3000:]
