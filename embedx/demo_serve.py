"""The demo's last step: serve the bundle it just built over HTTP and query it like a client.

The server runs in this process on a free loopback port (uvicorn in a thread) with the same app
``embedx serve`` builds, so the demo proves the whole path: bundle -> server -> JSON over HTTP.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Sequence


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_query(bundle_path: Path, texts: Sequence[str], k: int, echo: Callable[[str], None] = print,
                    *, startup_timeout_s: float = 30.0) -> list[dict]:
    """Start the server on ``bundle_path``, POST each text to ``/v1/search``, stop; returns the responses."""
    try:
        import uvicorn

        from serving.app import create_app
        from serving.config import parse_config
    except ImportError as e:  # the `serve` extra is not installed
        echo(f"\nserver step skipped: {e} (pip install 'embedx[serve]')")
        return []

    port = _free_port()
    config = parse_config({"port": port, "collections": {
        "demo": {"sparse": {"bundle": str(Path(bundle_path).resolve()), "encoder": "bundle"},
                 "fields": ["title"]}}})
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="embedx-demo-server", daemon=True)
    thread.start()
    responses = []
    try:
        conn = _wait_ready(port, startup_timeout_s)
        echo(f"\nserver: http://127.0.0.1:{port}  (embedx serve --config serving/example-server.yaml serves the same bundle)")
        for text in texts:
            t = time.perf_counter()
            conn.request("POST", "/v1/search", json.dumps({"query": text, "k": k, "fields": ["title"]}),
                         {"Content-Type": "application/json"})
            reply = conn.getresponse()
            body = json.loads(reply.read())
            ms = (time.perf_counter() - t) * 1e3
            if reply.status != 200:
                raise RuntimeError(f"server answered {reply.status}: {body}")
            responses.append(body)
            top = body["hits"][0] if body["hits"] else None
            echo(f"  POST /v1/search {text!r}: {len(body['hits'])} hits in {ms:.1f} ms (server "
                 f"{body['timings']['total_ms']:.2f} ms)" + (f"; top: [{top['id']}] {top['fields'].get('title', '')}"
                                                             if top else ""))
        conn.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return responses


def _wait_ready(port: int, timeout_s: float) -> http.client.HTTPConnection:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/readyz")
            reply = conn.getresponse()
            reply.read()
            if reply.status == 200:
                return conn
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the demo server did not become ready on port {port} in {timeout_s:.0f} s")
        time.sleep(0.1)
