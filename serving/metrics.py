"""Prometheus metrics for ``GET /metrics``: requests, latencies, errors, encoder batches, swaps.

Each app gets its own ``CollectorRegistry``, so several servers in one process (tests) never
share counters. Request metrics are recorded by a small ASGI middleware that sees every
response, including the ones other middleware (body limit, auth) answer early; the endpoint
label is the route's path template, so ``/v1/search`` and an unknown path ``/x/y`` stay a
bounded set of label values.
"""

from __future__ import annotations

import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from starlette.routing import Match

STAGES = ("encode", "search", "fuse", "fields")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

disable_created_metrics()  # no *_created series: they double the output and nobody graphs them


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("embedx_http_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("embedx_http_request_duration_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("embedx_http_errors", "Error responses by endpoint and error type",
                              ["endpoint", "type"], registry=r)
        self.in_flight = Gauge("embedx_searches_in_flight", "Searches being served now", registry=r)
        self.stage = Histogram("embedx_search_stage_seconds", "Time per search stage (encode, search, fuse, fields)",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.stages = {s: self.stage.labels(s) for s in STAGES}   # looked up once, observed per search
        self.queries = Counter("embedx_queries", "Queries searched, by collection and mode",
                               ["collection", "mode"], registry=r)
        self.batch_texts = Histogram("embedx_encoder_batch_texts", "Texts per encoder call (micro-batching)",
                                     ["collection", "side"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("embedx_encoder_batch_requests", "Requests sharing one encoder call",
                                        ["collection", "side"], buckets=BATCH_BUCKETS, registry=r)
        self.generation = Gauge("embedx_collection_generation", "Version of each collection (1 + swaps)",
                                ["collection"], registry=r)
        self.swaps = Counter("embedx_swaps", "Hot swaps by collection and result", ["collection", "result"],
                             registry=r)

    def batch_callback(self, collection: str, side: str):
        texts, requests = self.batch_texts.labels(collection, side), self.batch_requests.labels(collection, side)

        def record(n_texts: int, n_requests: int, seconds: float) -> None:
            texts.observe(n_texts)
            requests.observe(n_requests)
        return record

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP response by route template and status."""

    def __init__(self, app, metrics: Metrics, routes_app):
        self.app = app
        self.metrics = metrics
        self.routes_app = routes_app   # the FastAPI app, whose routes name the endpoint label
        self._known: dict[tuple[str, str], str] = {}   # (method, path) -> label, for routes without parameters
        self._children: dict[tuple, tuple] = {}          # (endpoint, method, status) -> its two series

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = self._endpoint(scope)
            requests, latency = self._series(endpoint, scope.get("method", ""), status)
            requests.inc()
            latency.observe(time.perf_counter() - t0)
            error_type = scope.get("state", {}).get("error_type") if isinstance(scope.get("state"), dict) else None
            if status >= 400:
                self.metrics.errors.labels(endpoint, error_type or str(status)).inc()

    def _series(self, endpoint: str, method: str, status: int) -> tuple:
        """The request counter and latency histogram of one label set (a bounded set: route
        templates x methods x statuses), looked up in prometheus_client once."""
        key = (endpoint, method, status)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = (self.metrics.requests.labels(endpoint, method, str(status)),
                                           self.metrics.latency.labels(endpoint))
        return found

    def _endpoint(self, scope) -> str:
        key = (scope.get("method", ""), scope.get("path", ""))
        label = self._known.get(key)
        if label is None:
            label = "other"
            for route in self.routes_app.router.routes:
                match, _ = route.matches(scope)
                if match == Match.FULL:
                    label = getattr(route, "path", "other")
                    break
            if label == key[1] and not scope.get("root_path"):   # a fixed path: remember it (a bounded set)
                self._known[key] = label
        return label
