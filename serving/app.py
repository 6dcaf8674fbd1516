"""The HTTP API: FastAPI over the loaded collections.

``create_app(config)`` loads and checks every bundle and encoder before it returns (a bad
config fails at startup, not on the first request), and wires:

* ``POST /v1/search``, ``/v1/search/batch``, ``/v1/search/vector``, ``/v1/search/vector/batch``
* ``GET /v1/indexes``; ``POST /v1/admin/swap`` (hot swap)
* ``GET /healthz``, ``/readyz``, ``/metrics``; the search page at ``/``; ``/openapi.json``

Blocking work (encoders, indexes, the document store) runs in a thread pool under a timeout
and an in-flight limit, so the event loop only parses, routes and answers. The exception is a
lone single-query search on in-process indexes whose own work has been measured short
(``inline_max_ms``): it runs on the event loop, and awaits a micro-batcher's encoder there
instead of blocking a pool thread on it, so it makes no more thread hops than the same search
in-process. Well-formed search requests take a fast path past FastAPI's generic request
handling (:mod:`serving.fastpath`); the routes stay the contract and answer everything else.
Every error is ``{"error": {"type", "message"}}`` with its status; nothing a client sends can
produce a 500.
"""

import asyncio
import hmac
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.config import ServerConfig, load_config
from serving.errors import (STATUS_TYPES, ApiError, Timeout, Unauthorized, bad_request, error_body, incompatible,
                            not_found)
from serving.fastpath import FastPath, FastRoute
from serving.limits import BodySizeLimit, InFlightLimiter, InlinePolicy, run_blocking
from serving.metrics import Metrics, MetricsMiddleware
from serving.schemas import (BatchSearchResponse, ErrorResponse, SearchResponse, SwapRequest, SwapResponse,
                             build_models, vector_item)
from serving.search import Options, TextSearch, Timings, encoded, search_texts, search_vectors
from serving.state import IncompatibleError, LoadError, ServerState

log = logging.getLogger(__name__)

try:  # several times faster than json.dumps for a page of hits; the stdlib stays the fallback
    import orjson
except ImportError:  # pragma: no cover - orjson comes with ranx, a core dependency
    orjson = None

ERROR_STATUSES = (400, 401, 404, 409, 413, 422, 503, 504)
ERRORS = {code: {"model": ErrorResponse} for code in ERROR_STATUSES}
STATIC = Path(str(resources.files("serving") / "static"))
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' https: http: data:; "
                                           "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class Server:
    """Everything a request needs, kept on ``app.state.server``.

    (This module does without ``from __future__ import annotations``: FastAPI reads the
    request models, which are built per app, from the handlers' real annotations.)
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        self.api_key = config.resolved_api_key()
        self.metrics = Metrics()
        self.limiter = InFlightLimiter(config.limits.max_in_flight)
        self.inline = InlinePolicy(config.inline_max_ms)
        self.metrics.in_flight.set_function(lambda: self.limiter.count)
        self.started = time.time()
        self.state = ServerState(config, self.metrics)
        self.executor = None
        self.open()

    def open(self) -> None:
        """Load every collection (again, after a shutdown: an ASGI app may see several lifespans)."""
        if self.state.closed:
            self.state = ServerState(self.config, self.metrics)
        if not self.state.ready:
            self.state.load_all()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="embedx-search")

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the thread pool, under the in-flight limit and the request timeout."""
        return await run_blocking(self.executor, self.limiter, self.config.limits.request_timeout_s, fn)

    async def run_here(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``await fn()`` on the event loop, under the in-flight limit and the request timeout (which
        can only fire while it awaits: the caller runs here only work measured to be short)."""
        with self.limiter:
            try:
                async with asyncio.timeout(self.config.limits.request_timeout_s):
                    return await fn()
            except TimeoutError:
                raise Timeout(self.config.limits.request_timeout_s) from None

    def authorized(self, headers) -> bool:
        """The request carries the API key (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``), or none is set."""
        if self.api_key is None:
            return True
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                         self.api_key.encode("utf-8"))

    def collection(self, name: str | None) -> str:
        if self.state.closed:
            raise ApiError(503, "not_ready", "the server is shutting down or not started")
        if name is None:
            name = self.config.default_collection
            if name is None:
                raise bad_request(f"name a collection: one of {sorted(self.state.names)}")
        if self.state.current(name) is None:
            raise not_found(f"no collection {name!r}; loaded: {sorted(self.state.names)}")
        return name

    @contextmanager
    def lease(self, name: str):
        """Hold the current version of a collection for one request (503 if it went away: shutdown)."""
        try:
            lease = self.state.lease(name)
            version = lease.__enter__()
        except KeyError:
            raise ApiError(503, "not_ready", f"collection {name!r} is not loaded (the server is shutting down)") \
                from None
        try:
            yield version
        finally:
            lease.__exit__(None, None, None)

    def close(self) -> None:
        self.state.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


def create_app(config: ServerConfig | str | Path) -> FastAPI:
    """Load everything ``config`` names and return the app (raises ``ConfigError`` on a bad config)."""
    if not isinstance(config, ServerConfig):
        config = load_config(config)
    server = Server(config)
    models = build_models(config.limits)

    @asynccontextmanager
    async def lifespan(app):
        server.open()
        yield
        server.close()

    app = FastAPI(title="embedx retrieval server", version=_version(), lifespan=lifespan,
                  description="Sparse, dense and hybrid search over embedx index bundles. "
                              "Errors are {\"error\": {\"type\", \"message\"}}.")
    app.state.server = server

    async def require_key(request: Request) -> None:
        if not server.authorized(request.headers):
            raise Unauthorized()

    keyed = [Depends(require_key)]

    # ------------------------------------------------------------------ search
    SearchRequest, BatchRequest = models.search, models.batch
    VectorRequest, VectorBatchRequest = models.vector, models.vector_batch

    def job(body, queries: list, text: bool, mode_of: Callable, sides_of: Callable):
        """A search request ready to run: ``await run()`` gives (head, hits, timings); and its start time.

        It runs on the event loop when it can (one query; every side searched in this process, its
        text encoded by the bundle itself or by a micro-batcher the loop awaits; its own work, the
        encoding aside, measured short; nothing else in flight), else in the thread pool.
        """
        name = server.collection(body.collection)
        opts = _options(body)
        t0 = time.perf_counter()
        current = server.state.current(name)
        mode = mode_of(current, opts) if current is not None else None
        sides = [current.side(s) for s in sides_of(mode)] if current is not None else [None]
        eligible = len(queries) == 1 and all(r is not None and r.fits_event_loop(text) for r in sides)
        key = (name, text, mode)

        def done(version, hits, timings: Timings, started: float):
            if eligible:   # the time the work itself held its thread: what it would hold the loop for
                server.inline.record(key, time.perf_counter() - started - timings.encode)
            mode = mode_of(version, opts)
            server.metrics.queries.labels(name, mode).inc(len(queries))
            _observe(server.metrics, timings)
            return {"collection": name, "generation": version.generation, "mode": mode}, hits, timings

        def in_pool():
            with server.lease(name) as version:
                started, timings = time.perf_counter(), Timings()
                hits = (search_texts if text else search_vectors)(version, queries, opts, timings)
                return done(version, hits, timings, started)

        async def on_loop():
            with server.lease(name) as version:
                started, timings = time.perf_counter(), Timings()
                if text:
                    search = TextSearch(version, queries, opts)
                    pending = search.start()
                    for future in pending:
                        await _until_done(future)
                    encoded_queries = [encoded(f) for f in pending]
                    timings.encode += time.perf_counter() - started
                    hits = search.finish(encoded_queries, timings)
                else:
                    hits = search_vectors(version, queries, opts, timings)
                return done(version, hits, timings, started)

        async def run():
            if eligible and server.limiter.count == 0 and server.inline.allows(key):
                return await server.run_here(on_loop)
            return await server.run(in_pool)
        return run, t0

    def text_search(body, texts: list[str]):
        return job(body, texts, True, lambda version, opts: opts.mode or version.default_mode,
                   lambda mode: ("sparse", "dense") if mode == "hybrid" else (mode,))

    def vector_search(body, items: list[dict]):
        per_item = {tuple(s for s in ("sparse", "dense") if item.get(s) is not None) for item in items}
        only = per_item.pop() if len(per_item) == 1 else None
        mode = "mixed" if only is None else "hybrid" if len(only) == 2 else only[0]
        return job(body, items, False, lambda version, opts: mode, lambda mode: only or ("sparse", "dense"))

    async def single(run, t0) -> bytes:
        head, hits, timings = await run()
        return _dumps({**head, "hits": hits[0], "timings": timings.as_ms(time.perf_counter() - t0)})

    async def batch(run, t0) -> bytes:
        head, hits, timings = await run()
        return _dumps({**head, "results": [{"hits": h} for h in hits],
                       "timings": timings.as_ms(time.perf_counter() - t0)})

    # One handler per search route, shared by the route and the fast path in front of it.
    async def search_one(body) -> bytes:
        return await single(*text_search(body, [body.query]))

    async def search_many(body) -> bytes:
        return await batch(*text_search(body, list(body.queries)))

    async def vector_one(body) -> bytes:
        return await single(*vector_search(body, [vector_item(body)]))

    async def vector_many(body) -> bytes:
        return await batch(*vector_search(body, [vector_item(q) for q in body.queries]))

    fast_routes = {"/v1/search": FastRoute(SearchRequest, search_one),
                   "/v1/search/batch": FastRoute(BatchRequest, search_many),
                   "/v1/search/vector": FastRoute(VectorRequest, vector_one),
                   "/v1/search/vector/batch": FastRoute(VectorBatchRequest, vector_many)}

    @app.post("/v1/search", dependencies=keyed, tags=["search"], responses={200: {"model": SearchResponse}, **ERRORS})
    async def search(body: SearchRequest) -> Response:  # type: ignore[valid-type]
        """Search one text query (mode sparse, dense or hybrid)."""
        return _raw_json(await search_one(body))

    @app.post("/v1/search/batch", dependencies=keyed, tags=["search"],
              responses={200: {"model": BatchSearchResponse}, **ERRORS})
    async def search_batch(body: BatchRequest) -> Response:  # type: ignore[valid-type]
        """Search many text queries in one call (results in the same order)."""
        return _raw_json(await search_many(body))

    @app.post("/v1/search/vector", dependencies=keyed, tags=["search"],
              responses={200: {"model": SearchResponse}, **ERRORS})
    async def search_vector(body: VectorRequest) -> Response:  # type: ignore[valid-type]
        """Search with a dense vector, a sparse vector ({indices, values} or {token: weight}), or both (fused)."""
        return _raw_json(await vector_one(body))

    @app.post("/v1/search/vector/batch", dependencies=keyed, tags=["search"],
              responses={200: {"model": BatchSearchResponse}, **ERRORS})
    async def search_vector_batch(body: VectorBatchRequest) -> Response:  # type: ignore[valid-type]
        """Search many vector queries in one call."""
        return _raw_json(await vector_many(body))

    # ------------------------------------------------------------------ collections, hot swap
    @app.get("/v1/indexes", dependencies=keyed, tags=["collections"], responses=ERRORS)
    async def indexes() -> dict:
        """What is loaded: each collection's generation, modes, fusion, bundles with manifests, encoders."""
        return {"collections": server.state.describe(manifest=True)}

    @app.post("/v1/admin/swap", dependencies=keyed, tags=["admin"], responses={200: {"model": SwapResponse}, **ERRORS})
    async def swap(body: SwapRequest) -> Response:
        """Load a new bundle and/or encoder for a collection and switch to it atomically.

        Requests in flight finish on the old version. An encoder whose representation space
        does not match the bundle's is refused with 409 and nothing changes.
        """
        if not config.admin:
            raise not_found("the admin endpoints are turned off (admin: false in the config)")
        name = server.collection(body.collection)
        sides = {s: getattr(body, s).model_dump() for s in ("sparse", "dense") if getattr(body, s) is not None}

        def work():
            try:
                return server.state.swap(name, sides)
            except KeyError:
                raise not_found(f"no collection {name!r}") from None
            except IncompatibleError as e:
                raise incompatible(str(e)) from None
            except LoadError as e:
                raise bad_request(str(e), "load_failed") from None
        # A swap verifies checksums of whole bundles: give it its own (longer) deadline.
        version = await run_blocking(server.executor, None, max(60.0, config.limits.request_timeout_s), work)
        return _json({"collection": name, "generation": version.generation, "swapped": sorted(sides),
                      "sparse": version.sparse.describe(False) if version.sparse else None,
                      "dense": version.dense.describe(False) if version.dense else None})

    # ------------------------------------------------------------------ operations
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The process is up and answering."""
        return {"status": "ok", "uptime_s": round(time.time() - server.started, 3)}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> Response:
        """Every configured collection is loaded (bundles verified as the config says) and serving."""
        if not server.state.ready:
            return _json(error_body("not_ready", "collections are not loaded"), 503)
        return _json({"status": "ready", "verify": config.verify,
                      "collections": {n: server.state.current(n).generation for n in server.state.names}})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    # ------------------------------------------------------------------ the page
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    _install_error_handlers(app)
    app.add_middleware(FastPath, routes=fast_routes, error_response=_error_response,
                       authorized=lambda scope: server.api_key is None or server.authorized(Headers(scope=scope)))
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics, routes_app=app)
    return app


# ---------------------------------------------------------------------- helpers
def _options(body) -> Options:
    fusion = body.fusion.model_dump() if body.fusion is not None else {}
    return Options(k=body.k, mode=getattr(body, "mode", None), fields=body.fields, fusion=fusion)


def _observe(metrics: Metrics, timings: Timings) -> None:
    for stage, series in metrics.stages.items():
        series.observe(getattr(timings, stage))


async def _until_done(future: Future) -> None:
    """Wait on the event loop for a future that a thread resolves, without ever cancelling it (a
    micro-batcher resolves every future it took, whether or not anyone still waits)."""
    if future.done():
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_):
        try:
            loop.call_soon_threadsafe(_resolve, waiter)
        except RuntimeError:   # the loop has closed meanwhile: nobody waits any more
            pass
    future.add_done_callback(wake)
    await waiter


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON, without a validation pass (the handlers build the documented shapes)."""
    if orjson is not None:
        try:
            return orjson.dumps(payload)
        except TypeError:   # a type orjson does not write (or an int past 64 bits): the stdlib decides
            pass
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _raw_json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _json(payload: Any, status: int = 200) -> Response:
    return _raw_json(_dumps(payload), status)


def _error_response(scope, exc: BaseException) -> Response:
    """The JSON error answer to ``exc`` (an ``HTTPException``, or anything else: a 500), its type
    noted in the request state for the metrics."""
    if isinstance(exc, ApiError):
        status, type, message, headers = exc.status_code, exc.type, exc.message, exc.headers
    elif isinstance(exc, StarletteHTTPException):
        status, type = exc.status_code, STATUS_TYPES.get(exc.status_code, "error")
        message, headers = exc.detail if isinstance(exc.detail, str) else type, getattr(exc, "headers", None)
    else:
        status, type, message, headers = 500, "internal_error", "internal error; see the server log", None
    return _error(scope, status, type, message, headers)


def _error(scope, status: int, type: str, message: str, headers=None, **extra) -> Response:
    state = scope.setdefault("state", {})
    if isinstance(state, dict):
        state["error_type"] = type
    resp = _json(error_body(type, message, **extra), status)
    if headers:
        resp.headers.update(headers)
    return resp


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error_response(request.scope, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        first = details[:3]
        message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in first) or "invalid request"
        if len(details) > 3:
            message += f" (and {len(details) - 3} more)"
        return _error(request.scope, 422, "validation_error", message, details=details[:20])

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(request.scope, exc)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("embedx")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0"
