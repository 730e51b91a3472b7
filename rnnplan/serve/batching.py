"""Concurrent requests batched into one call, without Ray: `Batcher(model).submit(request)` returns a
future; one worker thread takes the requests queued when it is free, waits up to `wait_ms` after the
first for more (up to `max_batch` sequences), and runs them as one `ServedModel.run_batch` (their
lengths may differ: one packed call). Ray Serve's `@serve.batch` does the same inside a replica
(`serve/ray_app.py`); this one is for a process of its own and for measuring the batching alone.
A failing batch fails each of its requests with the error; the worker goes on."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from rnnplan.serve.model import Request, ServedModel


class Batcher:
    def __init__(self, model: ServedModel, max_batch: int = 32, wait_ms: float = 2.0):
        if max_batch < 1 or wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_ms >= 0, got {max_batch} and {wait_ms}")
        self.model, self.max_batch, self.wait_s = model, max_batch, wait_ms / 1e3
        self.batches: list[int] = []  # sequences in each call, for inspection and benchmarks
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="rnnplan-batcher", daemon=True)
        self._worker.start()

    def submit(self, request: Request) -> Future:
        if self._closed:
            raise RuntimeError("the Batcher is closed")
        done: Future = Future()
        self._queue.put((request, done))
        return done

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        self._closed = True
        self._queue.put(None)
        self._worker.join()

    def _run(self) -> None:
        pending = None
        while True:
            first = pending or self._queue.get()
            pending = None
            if first is None:
                return
            batch, sequences = [first], first[0].sequences
            deadline = time.perf_counter() + self.wait_s
            while sequences < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # close after this batch
                    break
                if sequences + item[0].sequences > self.max_batch:
                    pending = item  # the next batch's first
                    break
                batch.append(item)
                sequences += item[0].sequences
            self.batches.append(sequences)
            try:
                answers = self.model.run_batch([r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 (every request of the batch gets the error; the worker goes on)
                for _, done in batch:
                    done.set_exception(e)
                continue
            for (_, done), a in zip(batch, answers):
                done.set_result(a)
