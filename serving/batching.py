"""Micro-batching: concurrent requests share one encoder call.

An ONNX encoder costs much the same for 1 text as for 16, so under concurrent load the
server gathers the texts of requests that arrive together and encodes them in one call,
then hands each request its own rows. The rules:

* a batch is sent when it holds ``max_batch`` texts, or when its first text has waited
  ``max_wait_ms``;
* the wait only happens under concurrent load (the previous batch held more than one
  request, or others are already queued): a lone client never pays for it;
* a request larger than ``max_batch`` is encoded alone, never split;
* ``workers`` batches may run at once (onnxruntime sessions and tokenizers are thread-safe);
* if a shared call fails, each request in it is retried alone, so one bad input fails only
  its own request.

Threads, not asyncio: request handlers already run in a thread pool (search calls block), and
a thread-based batcher works the same under any event loop or none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class _Job:
    __slots__ = ("texts", "future", "queued")

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.future: Future = Future()
        self.queued = time.perf_counter()


class MicroBatcher:
    """Wrap ``fn(texts) -> rows`` (a numpy array or scipy CSR matrix, one row per text)."""

    def __init__(self, fn: Callable[[list[str]], Any], *, max_batch: int = 32, max_wait_ms: float = 2.0,
                 workers: int = 1, name: str = "encoder",
                 on_batch: Callable[[int, int, float], None] | None = None):
        if max_batch < 1 or workers < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and workers must be >= 1, max_wait_ms >= 0")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1e3
        self.name = name
        self.on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._loaded = False      # the last batch held more than one request
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, texts: Sequence[str]) -> Future:
        """Queue ``texts``; the future resolves to their rows (or the encoder's exception)."""
        job = _Job(list(texts))
        with self._cond:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def __call__(self, texts: Sequence[str]) -> Any:
        return self.submit(texts).result()

    def close(self, wait: bool = True) -> None:
        """Stop after the queued requests are done."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            me = threading.current_thread()
            for t in self._threads:
                if t is not me:
                    t.join()

    # ---------------------------------------------------------------- workers
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # a request cancelled while queued (its caller gave up) is dropped, never resolved twice
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, n = [first], len(first.texts)
            wait = self.max_wait if (self._loaded or self._queue) else 0.0
            deadline = first.queued + wait
            while n < self.max_batch:
                if self._queue:
                    if n + len(self._queue[0].texts) > self.max_batch:
                        break
                    job = self._queue.popleft()
                    batch.append(job)
                    n += len(job.texts)
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._loaded = len(batch) > 1
            return batch

    def _run(self, batch: list[_Job]) -> None:
        texts = [t for job in batch for t in job.texts]
        t0 = time.perf_counter()
        try:
            rows = self.fn(texts)
            if rows.shape[0] != len(texts):
                raise RuntimeError(f"{self.name} returned {rows.shape[0]} rows for {len(texts)} texts")
        except BaseException as e:  # noqa: BLE001 - handed to the waiting requests
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            log.debug("batched call of %s failed (%s); retrying its %d requests one by one", self.name, e, len(batch))
            for job in batch:
                self._run([job])
            return
        if self.on_batch is not None:
            self.on_batch(len(texts), len(batch), time.perf_counter() - t0)
        start = 0
        for job in batch:
            end = start + len(job.texts)
            job.future.set_result(rows[start:end] if len(batch) > 1 else rows)
            start = end
