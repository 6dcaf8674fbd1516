"""Encoding throughput (texts per second), torch against ONNX, for benchmarks and reports.

Compared encoders run in alternating rounds on the same texts, so on a shared machine they see
the same conditions; each is warmed up first (session initialisation and allocator growth are
not throughput). Thread counts are the caller's business: set ``torch.set_num_threads`` and
the ONNX encoder's ``threads`` before measuring, and say which in the report.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from embedx.bench.timing import alternate


def _encode_fn(encoder: Any, texts: Sequence[str], batch_size: int | None) -> Callable[[], object]:
    if callable(encoder) and not hasattr(encoder, "encode"):
        return lambda: encoder(texts)
    kwargs = {"batch_size": batch_size} if batch_size else {}
    return lambda: encoder.encode(texts, **kwargs)


def _summary(seconds: np.ndarray, n: int) -> dict[str, float]:
    seconds = np.asarray(seconds, dtype=np.float64).ravel()
    return {"texts": n, "rounds": int(seconds.size), "median_s": float(np.median(seconds)),
            "docs_per_s": float(n / np.median(seconds)), "best_docs_per_s": float(n / seconds.min())}


def measure_throughput(encoder: Any, texts: Sequence[str], *, batch_size: int | None = None,
                       rounds: int = 3, warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Texts per second of ``encoder.encode(texts)`` (or ``encoder(texts)`` for a function)."""
    return compare_throughput({"encoder": encoder}, texts, batch_size=batch_size, rounds=rounds,
                              warmup=warmup, clock=clock)["encoder"]


def compare_throughput(encoders: Mapping[str, Any], texts: Sequence[str], *, batch_size: int | None = None,
                       rounds: int = 3, warmup: int = 1,
                       clock: Callable[[], float] = time.perf_counter) -> dict[str, dict]:
    """Per encoder: texts/s (median and best of ``rounds``), rounds alternating between encoders.

    Each entry also carries ``speedup`` against the first encoder named (the baseline)."""
    texts = list(texts)
    if not texts:
        raise ValueError("throughput needs at least one text")
    if rounds < 1:
        raise ValueError(f"rounds must be positive, got {rounds}")
    fns = {name: _encode_fn(enc, texts, batch_size) for name, enc in encoders.items()}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    timings = alternate({name: (lambda _, fn=fn: fn()) for name, fn in fns.items()}, 1, rounds, clock)
    out = {name: _summary(t, len(texts)) for name, t in timings.items()}
    base = next(iter(out.values()))["docs_per_s"]
    for stats in out.values():
        stats["speedup"] = stats["docs_per_s"] / base
    return out
