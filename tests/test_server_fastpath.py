"""The lean request path: the search fast path in front of FastAPI, searches on the event loop,
FAISS threads in search threads, the uvicorn protocol choice, cancelled micro-batcher requests."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from starlette.responses import Response  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.batching import MicroBatcher  # noqa: E402
from serving.errors import ApiError  # noqa: E402
from serving.fastpath import FastPath, FastRoute  # noqa: E402
from serving.limits import InlinePolicy  # noqa: E402
from serving.state import Retriever  # noqa: E402
from test_server_kit import config_for  # noqa: E402

QUERY = "why does the moon cause tides"


# ---------------------------------------------------------------------- the fast path, alone
class Query(BaseModel):
    query: str


def _call(app, body: bytes, content_type: bytes | None = b"application/json", chunks: int = 1) -> tuple[int, bytes]:
    """One POST /search through ``app``; the body split into ``chunks`` messages."""
    headers = [(b"content-type", content_type)] if content_type else []
    scope = {"type": "http", "method": "POST", "path": "/search", "headers": headers, "root_path": ""}
    step = max(1, -(-len(body) // chunks))
    parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _fast_path(handler, authorized=True):
    behind = []

    async def fallback(scope, receive, send):   # stands for FastAPI: echoes the body it was handed
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        behind.append(body)
        await Response(b"routed:" + body, status_code=299)(scope, receive, send)

    def error_response(scope, exc):
        status = exc.status_code if isinstance(exc, ApiError) else 500
        return Response(json.dumps({"error": str(exc)}).encode(), status_code=status)

    app = FastPath(fallback, {"/search": FastRoute(Query, handler)}, lambda scope: authorized, error_response)
    return app, behind


async def _echo(body: Query) -> bytes:
    return json.dumps({"q": body.query}).encode()


def test_fast_path_answers_valid_requests_itself():
    app, behind = _fast_path(_echo)
    assert _call(app, b'{"query": "tides"}') == (200, b'{"q": "tides"}')
    assert _call(app, b'{"query": "tides"}', b"application/vnd.api+json; charset=utf-8", chunks=3)[0] == 200
    assert behind == []


@pytest.mark.parametrize("body, content_type", [
    (b'{"query": 3}', b"application/json"),          # does not validate
    (b'{"query": "x"', b"application/json"),         # not JSON
    (b"", b"application/json"),                      # no body
    (b'{"query": "x"}', b"text/plain"),              # not a JSON content type
    (b'{"query": "x"}', None),                       # no content type
])
def test_fast_path_replays_everything_else_to_the_app(body, content_type):
    app, behind = _fast_path(_echo)
    status, answer = _call(app, body, content_type, chunks=2)
    assert status == 299 and answer == b"routed:" + body
    assert behind == [body]                          # the app read exactly the client's body


def test_fast_path_leaves_unauthorized_requests_to_the_app():
    app, behind = _fast_path(_echo, authorized=False)
    assert _call(app, b'{"query": "tides"}')[0] == 299 and behind == [b'{"query": "tides"}']


def test_fast_path_answers_handler_errors_as_the_app_would():
    async def fails(body):
        raise ApiError(404, "not_found", "no such thing")

    async def breaks(body):
        raise RuntimeError("bug")

    assert _call(_fast_path(fails)[0], b'{"query": "x"}')[0] == 404
    assert _call(_fast_path(breaks)[0], b'{"query": "x"}')[0] == 500


# ---------------------------------------------------------------------- through the app
def _without_fast_path(app):
    """The same app with FastAPI's routes answering every request (before its first request)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not FastPath]
    return app


def _answer(r) -> tuple:
    body = r.json()
    body.pop("timings", None)
    return r.status_code, r.headers["content-type"], body


REQUESTS = [
    ("/v1/search", {"query": QUERY, "k": 5, "mode": "sparse"}),
    ("/v1/search", {"query": QUERY, "k": 3}),                                   # hybrid, the default
    ("/v1/search", {"query": QUERY, "mode": "dense", "fields": []}),
    ("/v1/search", {"query": "the of and", "mode": "sparse"}),
    ("/v1/search/batch", {"queries": [QUERY, "black holes"], "k": 2, "fields": ["title"]}),
    ("/v1/search/vector", {"sparse": {"moon": 1.0, "tides": 1.0}, "k": 4}),
    ("/v1/search/vector/batch", {"queries": [{"sparse": {"moon": 1.0}}, {"dense": [0.1] * 32}], "k": 2}),
    ("/v1/search", {"query": QUERY, "collection": "nope"}),                      # 404 from the handler
    ("/v1/search", {"query": QUERY, "k": 0}),                                    # 422 from validation
    ("/v1/search/vector", {"dense": [0.1] * 8}),                                 # 400 from the search
    ("/v1/search", {"query": QUERY, "mode": "hybrid", "fusion": {"method": "linear", "alpha": 0.2}}),
]


def test_fast_path_and_routes_give_the_same_answers(workspace):
    with TestClient(create_app(config_for(workspace))) as fast, \
            TestClient(_without_fast_path(create_app(config_for(workspace)))) as routed:
        for path, body in REQUESTS:
            assert _answer(fast.post(path, json=body)) == _answer(routed.post(path, json=body)), (path, body)
        text = fast.get("/metrics").text
    assert 'embedx_http_requests_total{endpoint="/v1/search",method="POST",status="200"} 5.0' in text
    assert 'embedx_http_errors_total{endpoint="/v1/search",type="not_found"} 1.0' in text
    assert 'embedx_http_errors_total{endpoint="/v1/search/vector",type="invalid_input"} 1.0' in text


def _search_threads(monkeypatch) -> list[str]:
    """Record the name of the thread each index search runs in."""
    names: list[str] = []
    search = Retriever.search

    def spy(self, queries, k):
        names.append(threading.current_thread().name)
        return search(self, queries, k)
    monkeypatch.setattr(Retriever, "search", spy)
    return names


@pytest.mark.parametrize("mode", ["sparse", "dense", "hybrid"])
def test_short_searches_run_on_the_event_loop_once_timed(workspace, monkeypatch, mode):
    names = _search_threads(monkeypatch)
    with TestClient(create_app(config_for(workspace))) as c:
        for _ in range(4):
            assert c.post("/v1/search", json={"query": QUERY, "mode": mode}).status_code == 200
        assert c.post("/v1/search/batch", json={"queries": [QUERY, QUERY], "mode": mode}).status_code == 200
    per_request = 2 if mode == "hybrid" else 1
    first, last, batch = names[:per_request], names[3 * per_request:4 * per_request], names[4 * per_request:]
    assert all(n.startswith("embedx-search") for n in first)        # not timed yet: the pool
    assert not any(n.startswith("embedx-search") for n in last)     # timed short: on the loop
    assert all(n.startswith("embedx-search") for n in batch)        # batches always go to the pool


def test_inline_max_ms_zero_keeps_every_search_in_the_pool(workspace, monkeypatch):
    names = _search_threads(monkeypatch)
    with TestClient(create_app(config_for(workspace, inline_max_ms=0))) as c:
        answers = [c.post("/v1/search", json={"query": QUERY, "mode": "hybrid"}).json()["hits"] for _ in range(3)]
    assert names and all(n.startswith("embedx-search") for n in names)
    with TestClient(create_app(config_for(workspace))) as c:
        inline = [c.post("/v1/search", json={"query": QUERY, "mode": "hybrid"}).json()["hits"] for _ in range(3)]
    assert answers == inline


def test_search_on_the_loop_times_out_while_it_waits_for_the_encoder(workspace):
    data = config_for(workspace, limits={"request_timeout_s": 0.2}).model_dump()
    data.pop("base_dir")
    data["collections"]["demo"]["dense"]["encoder"] = "enc-slow"        # sleeps 0.5 s per call
    from serving.config import parse_config
    with TestClient(create_app(parse_config(data, workspace))) as c:
        c.app.state.server.inline.record(("demo", True, "dense"), 0.0)  # as if timed short before
        t = time.perf_counter()
        r = c.post("/v1/search", json={"query": "sun", "mode": "dense"})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert time.perf_counter() - t < 0.45
        assert c.app.state.server.limiter.count == 0
        assert c.post("/v1/search", json={"query": "sun", "mode": "sparse"}).status_code == 200


def test_inline_policy_follows_measured_times():
    policy = InlinePolicy(max_ms=1.0, window=4)
    assert not policy.allows("a")                   # never timed
    policy.record("a", 0.050)                       # a cold first run
    assert not policy.allows("a")
    policy.record("a", 0.0004)
    assert policy.allows("a") and not policy.allows("b")
    for _ in range(2):
        policy.record("a", 0.004)                   # grew slow: back to the pool
    assert not policy.allows("a")
    off = InlinePolicy(max_ms=0)
    off.record("a", 0.0)
    assert not off.allows("a")


# ---------------------------------------------------------------------- threads, protocols, batcher
def test_search_threads_use_the_configured_faiss_threads(workspace, monkeypatch):
    faiss = pytest.importorskip("faiss")
    seen: list[int] = []
    search = Retriever.search

    def spy(self, queries, k):
        seen.append(faiss.omp_get_max_threads())
        return search(self, queries, k)
    monkeypatch.setattr(Retriever, "search", spy)
    saved = faiss.omp_get_max_threads()
    try:
        with TestClient(create_app(config_for(workspace, faiss_threads=3, inline_max_ms=0))) as c:
            assert c.post("/v1/search", json={"query": QUERY, "mode": "dense"}).status_code == 200
    finally:
        faiss.omp_set_num_threads(saved)
    assert seen == [3]      # a fresh pool thread, whose OpenMP default would be the core count


def test_serve_uses_httptools_and_uvloop_when_they_import(monkeypatch):
    import builtins

    from serving.cli import fast_protocols
    for module in ("httptools", "uvloop"):
        try:
            __import__(module)
        except ImportError:
            break
    else:
        assert fast_protocols() == {"http": "httptools", "loop": "uvloop"}
    real_import = builtins.__import__

    def no_extras(name, *args, **kwargs):
        if name in ("httptools", "uvloop"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_extras)
    import importlib
    monkeypatch.setattr(importlib, "import_module", lambda name: no_extras(name))
    assert fast_protocols() == {"http": "h11", "loop": "asyncio"}


def test_micro_batcher_drops_requests_cancelled_while_queued():
    gate = threading.Event()

    def encode(texts):
        gate.wait(5)
        import numpy as np
        return np.zeros((len(texts), 2), dtype=np.float32)

    b = MicroBatcher(encode, max_batch=1, max_wait_ms=0)
    try:
        busy = b.submit(["first"])              # occupies the only worker
        time.sleep(0.05)
        queued = b.submit(["second"])
        assert queued.cancel()                  # its caller gave up before it ran
        gate.set()
        assert busy.result(5).shape == (1, 2)
        assert b.submit(["third"]).result(5).shape == (1, 2)   # the worker lives on
    finally:
        gate.set()
        b.close()
