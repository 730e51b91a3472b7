"""The Ray Serve application: replicas (one a GPU where the cluster has GPUs, `num_gpus=1` each) that
answer HTTP `POST /` bodies (`serve.protocol`) by batches of concurrent requests (`@serve.batch`,
counting sequences) run as one packed call each (`ServedModel.run_batch`), and `GET /` with what they
serve. The model file travels to the replicas as bytes, so a cluster's nodes need no copy of it.
Ray is imported here only: the rest of `rnnplan.serve` runs without it."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path

from ray import serve
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from rnnplan.serve.model import Answer, Request, load_model
from rnnplan.serve.options import ServeOptions
from rnnplan.serve.protocol import RequestError, answer, answer_npz, parse

SHUTDOWN_S = 30  # how long `rnnplan serve` waits for Serve to shut down after Ctrl-C


class RNNServer:
    """One replica: the model loaded once, requests parsed, batched and answered."""

    def __init__(self, name: str, data: bytes, options: ServeOptions, compile_options: dict):
        with tempfile.TemporaryDirectory() as tmp:  # (load_model reads a path: .npz or .onnx by its suffix)
            path = Path(tmp) / Path(name).name
            path.write_bytes(data)
            bucket = {"bucket": options.bucket} if options.bucket else {}
            self.model = load_model(path, options.backend, **bucket, build=options.build, **compile_options)
        self.model.batch_buckets = options.buckets_on(self.model.device)  # few batch sizes: few executors
        if options.warm_up_steps:  # every shape built before the replica takes requests
            self.model.warm_up(options.warm_up_steps, options.bucket)
        self.max_body_bytes, self.max_batch = options.max_body_bytes, options.max_batch
        self.batched.set_max_batch_size(options.max_batch)
        self.batched.set_batch_wait_timeout_s(options.batch_wait_ms / 1e3)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, batch_size_fn=lambda rs: sum(r.sequences for r in rs))
    async def batched(self, requests: list[Request]) -> list[Answer]:
        # in a thread: the replica's event loop keeps taking requests (the next batch) meanwhile
        return await asyncio.to_thread(self.model.run_batch, requests)

    async def __call__(self, http: HTTPRequest):
        if http.method == "GET":
            t = self.model.template
            info = getattr(self.model.module, "cache_info", None)  # (rnnplan.compile's: the shapes built)
            return JSONResponse({"model": self.model.description, "input_size": t.input_size,
                                 "state": ["h", "c"] if t.cell == "lstm" else ["h"],
                                 "max_body_bytes": self.max_body_bytes,
                                 "shapes_built": info().executors if info else None})
        if http.method != "POST":
            return JSONResponse({"error": f"method {http.method}: POST a request, or GET a description"},
                                status_code=405)
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return JSONResponse({"error": f"the body has {declared} bytes, over this server's limit of "
                                          f"{self.max_body_bytes}"}, status_code=413)
        try:
            request = parse(await http.body(), http.headers.get("content-type", ""), self.model.template,
                            self.max_body_bytes)
        except RequestError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        if request.sequences > self.max_batch:  # (a batch holds at most max_batch sequences)
            return JSONResponse({"error": f"field 'x' holds {request.sequences} sequences, over this server's "
                                          f"--max-batch of {self.max_batch}"}, status_code=413)
        try:
            result = await self.batched(request)
            if "application/x-npz" in http.headers.get("accept", ""):
                return Response(answer_npz(result), media_type="application/x-npz")
            return JSONResponse(answer(result))
        except Exception as e:  # noqa: BLE001 (a failing call answers 500; the replica stays up)
            return JSONResponse({"error": f"the model failed on this batch: {type(e).__name__}: {e}"},
                                status_code=500)


def app(model: str | Path, *, replicas: int | None = None, compile_options: dict | None = None,
        **options) -> serve.Application:
    """The application serving `model` (a Weights .npz or an .onnx file), for `serve.run`. `replicas`:
    by default one a GPU of the Ray cluster (`num_gpus=1` each) where it has GPUs and the backend is
    not "numpy", else one; `options`: the fields of `ServeOptions` (backend, max_batch, batch_wait_ms,
    max_body_mb, batch_buckets, bucket, warm_up_steps); `compile_options` go to `rnnplan.compile`."""
    import ray

    checked = ServeOptions(**options)
    path = Path(model)
    if path.suffix not in (".npz", ".onnx"):
        raise ValueError(f"{path}: serve takes a Weights .npz or an .onnx file")
    data = path.read_bytes()
    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() and checked.backend != "numpy" else 0
    per_replica = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    count = replicas or max(1, gpus)
    deployment = serve.deployment(RNNServer, name="rnnplan", num_replicas=count, ray_actor_options=per_replica,
                                  max_ongoing_requests=max(64, 4 * checked.max_batch))
    return deployment.bind(path.name, data, checked, dict(compile_options or {}))


def serve_forever(model: str | Path, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                  announce=None, **app_options) -> None:
    """`rnnplan serve MODEL`: a local Ray (or the cluster at `address`), Serve's HTTP proxy on
    host:port, the application at `/`, until interrupted (then Serve and Ray shut down)."""
    import time

    import ray

    if not Path(model).is_file():  # (before Ray starts: a wrong path or option is named at once)
        raise ValueError(f"{model}: no such file (serve takes a Weights .npz or an .onnx file)")
    ServeOptions(**{k: v for k, v in app_options.items() if k not in ("replicas", "compile_options")})
    ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    try:
        serve.start(http_options={"host": host, "port": port})
        application = app(model, **app_options)  # (after ray.init: replicas follow the cluster's GPUs)
        serve.run(application, name="rnnplan", route_prefix="/")
        line = f"serving {Path(model).name} at http://{host}:{port}/ (POST a JSON or .npy body; Ctrl-C stops)"
        (announce or (lambda text: print(text, flush=True)))(line)  # (flushed: a pipe may be all a log reads)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # Serve's shutdown waits on its controller, which can retry without end where an actor is
        # already gone: bounded, then Ray goes down anyway (a local Ray takes every actor with it).
        stopper = threading.Thread(target=serve.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=SHUTDOWN_S)
        if stopper.is_alive():
            print(f"Serve did not shut down within {SHUTDOWN_S} s; stopping Ray", flush=True)
        ray.shutdown()
