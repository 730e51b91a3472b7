"""Serving load test (issue 20, item 4): throughput and p50/p99 latency at 1, 8 and 64 concurrent
clients sending sequences of lengths drawn from 1 to 200, batching on and off, for rnnplan behind the
batching layer and torch's own `nn.LSTM` behind the same layer; through `serve.Batcher` (threads, no
Ray; CPU or GPU) or over HTTP to a local Ray Serve application (`--ray`). Traffic only to 127.0.0.1,
bounded: `--requests` a client (at most 64 clients) and `--seconds` a configuration.

    python3 benchmarks/serve_bench.py [--ray [--binary]] [--backend auto|numpy|cupy] [--out FILE.json]
"""

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

import rnnplan as rp
from rnnplan.serve import Batcher, Request, load_model
from rnnplan.serve.options import ServeOptions

CLIENTS = (1, 8, 64)
MAX_LEN = 200


def _load(model_path, backend, compiled, max_batch, wait_ms, bucket):
    """The batcher and its model; rnnplan's on a GPU with its batch sizes bucketed (8, max_batch) and
    every shape it can take built first (reported as the set-up)."""
    options = {"bucket": bucket} if compiled and bucket else {}
    model = load_model(model_path, backend, compiled=compiled, **options)
    if compiled:  # (ServeOptions' default: 8 and max_batch on a GPU, none on the CPU)
        model.batch_buckets = ServeOptions(max_batch=max_batch).buckets_on(model.device)
    setup = model.warm_up(MAX_LEN, bucket) if compiled else 0.0
    return Batcher(model, max_batch=max_batch, wait_ms=wait_ms), model, setup


def _clients(n: int, per_client: int, seconds: float, call, rng_seed: int) -> tuple[list[float], float]:
    """`n` threads each sending up to `per_client` sequences (lengths 1-200) through `call`, stopping
    at `seconds`; returns (latencies in ms, wall seconds)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(i):
        rng = np.random.default_rng(rng_seed + i)
        for _ in range(per_client):
            if time.perf_counter() > stop:
                return
            x = rng.standard_normal((int(rng.integers(1, MAX_LEN + 1)), 40)).astype(np.float32)
            t0 = time.perf_counter()
            call(x)
            with lock:
                latencies.append((time.perf_counter() - t0) * 1e3)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies, time.perf_counter() - t0


def _row(label: str, latencies: list[float], wall: float) -> dict:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"config": label, "requests": len(latencies), "req_per_s": len(latencies) / wall,
            "p50_ms": statistics.median(latencies), "p99_ms": q[98]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ray", action="store_true", help="over HTTP to a local Ray Serve application")
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--requests", type=int, default=16, help="sequences a client sends")
    ap.add_argument("--seconds", type=float, default=20.0, help="a configuration stops sending after this")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--wait-ms", type=float, default=2.0)
    ap.add_argument("--bucket", type=int, default=16)
    ap.add_argument("--binary", action="store_true", help="with --ray: .npy bodies and .npz answers, not JSON")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.manual_seed(0)
    module = torch.nn.LSTM(40, 256, num_layers=2).eval()  # speech-like: 40 features, LSTM 2x256
    tmp = Path(tempfile.mkdtemp())
    path = rp.Weights.from_torch(module).save(tmp / "lstm2x256.npz")
    rows = []
    env = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "backend": a.backend, "ray": a.ray, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(env))
    for who, compiled in (("rnnplan", True), ("torch nn.LSTM", False)):
        for batching, max_batch in (("on", a.max_batch), ("off", 1)):
            if a.ray:
                rows += _ray_rows(path, a, who, compiled, batching, max_batch)
                continue
            batcher, model, setup = _load(path, a.backend, compiled, max_batch, a.wait_ms, a.bucket)
            print(f"  set-up of {who}, batching {batching}: {setup:.1f} s (every shape built before the clients)")
            call = lambda x, b=batcher: b.submit(Request(x)).result()  # noqa: E731
            _clients(1, 3, a.seconds, call, 999)  # warm-up: plans, first calls
            for n in CLIENTS:
                lat, wall = _clients(n, a.requests if n > 1 else 4 * a.requests, a.seconds, call, 10 * n)
                rows.append(_row(f"{who}, batching {batching}, {n} clients ({model.description})", lat, wall))
                print(_fmt(rows[-1]), flush=True)
            batcher.close()
    if a.out:
        Path(a.out).write_text(json.dumps({"environment": env, "rows": rows}, indent=1))


def _ray_rows(path, a, who, compiled, batching, max_batch) -> list[dict]:
    import socket

    import ray
    from ray import serve

    import rnnplan.serve

    rows = []
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {"bucket": a.bucket} if compiled and a.bucket else {}
        application = rnnplan.serve.app(path, backend=a.backend, replicas=1, max_batch=max_batch,
                                        batch_wait_ms=a.wait_ms, **options) if compiled else \
            _torch_app(path, a, max_batch)
        serve.run(application, name="bench", route_prefix="/")

        def call(x):
            if a.binary:  # an .npy body, an .npz answer
                buffer = io.BytesIO()
                np.save(buffer, x)
                body, headers = buffer.getvalue(), {"Content-Type": "application/octet-stream",
                                                    "Accept": "application/x-npz"}
            else:
                body, headers = json.dumps({"x": x.tolist()}).encode(), {"Content-Type": "application/json"}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers)
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
        _clients(1, 3, a.seconds, call, 999)
        for n in CLIENTS:
            lat, wall = _clients(n, a.requests if n > 1 else 4 * a.requests, a.seconds, call, 10 * n)
            body = "npy/npz" if a.binary else "JSON"
            rows.append(_row(f"{who}, batching {batching}, {n} clients (Ray Serve, HTTP, {body})", lat, wall))
            print(_fmt(rows[-1]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _torch_app(path, a, max_batch):
    """The same application serving torch's own module (the baseline): rnnplan.serve's replica class
    with the plain module behind its batching."""
    from ray import serve

    from rnnplan.serve import ray_app

    class TorchServer(ray_app.RNNServer):
        def __init__(self, *args):
            super().__init__(*args)
            self.model = load_model(path, a.backend, compiled=False)
    deployment = serve.deployment(TorchServer, name="torch", num_replicas=1, max_ongoing_requests=256)
    options = ServeOptions(backend=a.backend, max_batch=max_batch, batch_wait_ms=a.wait_ms)
    return deployment.bind(path.name, path.read_bytes(), options, {})


def _fmt(r: dict) -> str:
    return f"  {r['config']:<80} {r['req_per_s']:8.1f} req/s  p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms"


if __name__ == "__main__":
    main()
