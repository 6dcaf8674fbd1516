"""A bounded, closed-loop HTTP load generator for the retrieval server.

``concurrency`` clients each hold one keep-alive HTTP/1.1 connection and send their next request
as soon as the previous answer has arrived (closed loop: the offered load adapts to the server,
so a slow server is measured as slow rather than buried under a queue the client built). A run
stops at whichever comes first, ``requests`` sent or ``duration_s`` elapsed; requests in flight
then finish. Latency is measured on the client, from writing the request to reading the last
byte of the answer, so it includes everything HTTP adds.

The client is a few lines of HTTP over ``asyncio`` streams in one thread rather than a general
HTTP library: on a 2-core machine the client shares the CPU with the server, and a client that
spends a millisecond per request in its own code would show up as server latency.

Run it in its own process (``python -m embedx.bench.loadgen --help``), so its work never runs
under the same interpreter lock as what it measures. Standard library only, plus numpy for the
percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


class LoadError(ValueError):
    """Bad settings for a load run."""


@dataclass
class LoadResult:
    """One run: what was sent, what came back, and the client-side latency of each good answer."""

    concurrency: int
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)   # kind ("http_503", "timeout", ...) -> count
    elapsed_s: float = 0.0                                 # first request sent -> last answer read
    latencies_ms: list[float] = field(default_factory=list)  # successful requests, in completion order
    stopped_by: str = "requests"                           # "requests" or "duration"
    cpu_s: float = 0.0                                     # the client's own CPU time over the measured run

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def stats(self) -> dict[str, float]:
        """QPS (good answers per second), p50/p95/p99/mean/max latency in ms, error count."""
        return summarize(self.latencies_ms, self.elapsed_s, self.error_count, self.sent)

    def to_json(self) -> dict:
        return {**asdict(self), "stats": self.stats()}

    @classmethod
    def from_json(cls, data: dict) -> "LoadResult":
        return cls(**{k: data[k] for k in ("concurrency", "sent", "ok", "errors", "elapsed_s", "latencies_ms",
                                           "stopped_by", "cpu_s") if k in data})


def summarize(latencies_ms: Sequence[float], elapsed_s: float, errors: int = 0, sent: int | None = None) -> dict:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    out = {"requests": int(sent if sent is not None else len(lat) + errors), "ok": int(len(lat)),
           "errors": int(errors), "qps": float(len(lat) / elapsed_s) if elapsed_s > 0 else float("nan")}
    for name, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
        out[name] = float(np.percentile(lat, q)) if len(lat) else float("nan")
    out["mean_ms"] = float(lat.mean()) if len(lat) else float("nan")
    out["max_ms"] = float(lat.max()) if len(lat) else float("nan")
    return out


# ---------------------------------------------------------------------- HTTP/1.1 over asyncio streams
class _Connection:
    """One keep-alive connection; reopened after an error or a ``Connection: close``."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ConnectionError(f"not an HTTP response: {lines[0]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:  # no length: the body runs to the end of the connection
            body = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":   # trailers
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``POST`` request with a JSON body (or ``GET`` when ``body`` is empty)."""
    method = "POST" if body else "GET"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------------- the run
async def _run(host: str, port: int, path: str, bodies: list[bytes], concurrency: int, requests: int,
               duration_s: float, warmup: int, timeout_s: float, headers: dict[str, str] | None,
               check_json: bool) -> LoadResult:
    raws = [build_request(host, port, path, b, headers) for b in bodies]
    conns = [_Connection(host, port) for _ in range(concurrency)]
    result = LoadResult(concurrency=concurrency)
    errors: Counter = Counter()
    latencies: list[float] = []
    state = {"next": 0, "deadline": float("inf"), "last": 0.0}

    async def one(conn: _Connection, raw: bytes) -> tuple[str | None, float]:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):   # a timer, not a task per request as wait_for makes
                status, body = await conn.request(raw)
        except TimeoutError:
            conn.close()
            return "timeout", 0.0
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            conn.close()
            return ("connection" if isinstance(e, (OSError, asyncio.IncompleteReadError)) else "protocol"), 0.0
        elapsed = time.perf_counter() - t0
        if not 200 <= status < 300:
            return f"http_{status}", elapsed
        if check_json:
            try:
                json.loads(body)
            except ValueError:
                return "bad_body", elapsed
        return None, elapsed

    async def warm(worker: int) -> None:
        for i in range(warmup):
            await one(conns[worker], raws[(worker * warmup + i) % len(raws)])

    async def client(worker: int) -> None:
        conn = conns[worker]
        while True:
            i = state["next"]
            if i >= requests or time.perf_counter() >= state["deadline"]:
                return
            state["next"] = i + 1
            kind, elapsed = await one(conn, raws[i % len(raws)])
            state["last"] = time.perf_counter()
            if kind is None:
                latencies.append(elapsed * 1e3)
            else:
                errors[kind] += 1

    try:
        if warmup:
            await asyncio.gather(*(warm(w) for w in range(concurrency)))
        cpu = time.process_time()
        start = time.perf_counter()
        state["deadline"] = start + duration_s
        await asyncio.gather(*(client(w) for w in range(concurrency)))
        result.cpu_s = time.process_time() - cpu
    finally:
        for c in conns:
            c.close()
    result.sent = state["next"]
    result.ok = len(latencies)
    result.errors = dict(sorted(errors.items()))
    result.elapsed_s = max(state["last"] - start, 1e-9) if result.sent else 0.0
    result.latencies_ms = latencies
    result.stopped_by = "requests" if result.sent >= requests else "duration"
    return result


def run_load(host: str, port: int, path: str, bodies: Sequence[bytes | str | dict], *, concurrency: int = 1,
             requests: int = 100, duration_s: float = 60.0, warmup: int = 2, timeout_s: float = 30.0,
             headers: dict[str, str] | None = None, check_json: bool = True) -> LoadResult:
    """Send ``requests`` requests (cycling through ``bodies``) from ``concurrency`` closed-loop clients,
    stopping early after ``duration_s``; each client first sends ``warmup`` untimed requests."""
    if concurrency < 1 or requests < 1 or duration_s <= 0 or warmup < 0 or timeout_s <= 0:
        raise LoadError("concurrency and requests must be >= 1, duration_s and timeout_s > 0, warmup >= 0")
    if not bodies:
        raise LoadError("no request bodies given")
    raw = [b if isinstance(b, bytes) else (b.encode() if isinstance(b, str) else json.dumps(b).encode())
           for b in bodies]
    return asyncio.run(_run(host, port, path, raw, int(concurrency), int(requests), float(duration_s),
                            int(warmup), float(timeout_s), headers, check_json))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embedx.bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="http://HOST:PORT/PATH (HTTP only)")
    p.add_argument("--bodies", required=True, type=Path, help="a file with one JSON request body per line")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=100, help="stop after this many requests ...")
    p.add_argument("--duration", type=float, default=60.0, help="... or after this many seconds")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests per client first")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as timed out")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    p.add_argument("--out", type=Path, help="write the result JSON here (default: stdout)")
    args = p.parse_args(argv)
    from urllib.parse import urlsplit
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        p.error(f"--url must be http://HOST:PORT/PATH, got {args.url!r}")
    bodies = [line for line in args.bodies.read_text(encoding="utf-8").splitlines() if line.strip()]
    headers = {k.strip(): v.strip() for k, v in (h.split(":", 1) for h in args.header)}
    try:
        result = run_load(url.hostname, url.port or 80, url.path or "/", [b.encode() for b in bodies],
                          concurrency=args.concurrency, requests=args.requests, duration_s=args.duration,
                          warmup=args.warmup, timeout_s=args.timeout, headers=headers)
    except LoadError as e:
        p.error(str(e))
    text = json.dumps(result.to_json())
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
