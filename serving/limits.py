"""Request limits that the schema cannot express: body size, concurrency, time.

Sizes that the schema can express (query length, ``k``, batch size, vector width) are
constraints on the pydantic request models, so they show in ``/openapi.json`` and fail
with 422; these guards cover the rest.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from concurrent.futures import Executor
from typing import Callable, TypeVar

from serving.errors import Overloaded, PayloadTooLarge, Timeout, error_body

T = TypeVar("T")


class BodySizeLimit:
    """Pure ASGI middleware: refuse a body over ``max_bytes`` with 413 before reading it all.

    A declared ``Content-Length`` over the limit is answered at once; a chunked body is
    counted as it streams and the request fails with 413 when it passes the limit.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await _send_json(scope, send, PayloadTooLarge(self.max_bytes))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(scope, send, err) -> None:
    scope.setdefault("state", {})["error_type"] = err.type
    body = json.dumps(error_body(err.type, err.message)).encode()
    await send({"type": "http.response.start", "status": err.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class InFlightLimiter:
    """At most ``limit`` searches at once; the next one gets 503 instead of queueing forever."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "InFlightLimiter":
        with self._lock:
            if self._count >= self.limit:
                raise Overloaded(self.limit)
            self._count += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count


async def run_blocking(executor: Executor, limiter: InFlightLimiter | None, timeout_s: float,
                       fn: Callable[..., T], *args) -> T:
    """Run blocking ``fn`` in the thread pool under the in-flight limit; 504 after ``timeout_s``.

    The limit is checked before queueing (503 at once when full) and released when the call
    really ends (or is cancelled before it started: a call still queued at its deadline never
    runs). A timed-out call that has started keeps running in its thread (Python cannot stop a
    thread) and keeps its lease on the collection it searches, so a hot swap never closes a
    bundle under it.
    """
    if limiter is not None:
        limiter.__enter__()
    try:
        done = executor.submit(fn, *args)
    except BaseException:
        if limiter is not None:
            limiter.__exit__(None, None, None)
        raise
    if limiter is not None:
        done.add_done_callback(lambda _: limiter.__exit__(None, None, None))
    try:
        async with asyncio.timeout(timeout_s):   # a timer on this task: cheaper than wait_for + shield
            return await asyncio.wrap_future(done)
    except TimeoutError:
        raise Timeout(timeout_s) from None


class InlinePolicy:
    """Which kinds of search may run on the event loop instead of the thread pool.

    A hop to the pool and back costs two thread wake-ups, about as much as a sparse search of
    a SciFact-sized index. So work that needs no model and has been *measured* to be short (the
    median of its last ``window`` runs under ``max_ms``) runs inline; work not timed yet, or
    grown slow (a large index, a loaded machine), goes back to the pool by itself. A median
    shrugs off the slow first run of a cold cache and the odd stall. ``max_ms`` 0 turns it off.
    """

    def __init__(self, max_ms: float, window: int = 8):
        self.max_s = float(max_ms) / 1e3
        self._recent: dict = {}           # key -> deque of the last run times (seconds)
        self._window = int(window)
        self._lock = threading.Lock()

    def allows(self, key) -> bool:
        if self.max_s <= 0:
            return False
        with self._lock:
            runs = sorted(self._recent.get(key, ()))
        return bool(runs) and runs[(len(runs) - 1) // 2] <= self.max_s

    def record(self, key, seconds: float) -> None:
        with self._lock:
            runs = self._recent.get(key)
            if runs is None:
                runs = self._recent[key] = deque(maxlen=self._window)
            runs.append(seconds)
