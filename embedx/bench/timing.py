"""Latency measurement helpers: per-call timings, medians and tail percentiles, alternated
rounds so that two systems compared in one run see the same machine conditions."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def time_calls(fn: Callable[[int], object], n: int, clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Seconds taken by ``fn(i)`` for i in range(n), one timing per call.

    ``clock`` is wall time by default; ``time.thread_time`` (CPU time of this thread) suits
    single-threaded overhead ratios on a shared machine, where wall time also counts the
    time another process held the core.
    """
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        t = clock()
        fn(i)
        out[i] = clock() - t
    return out


def alternate(fns: dict[str, Callable[[int], object]], n: int, rounds: int,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, np.ndarray]:
    """Run each system's n calls in turn, for several rounds; returns all per-call timings
    (rounds x n) per system. Alternating rounds spreads machine noise evenly."""
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(time_calls(fn, n, clock))
    return {name: np.stack(v) for name, v in out.items()}


def interleaved(a: Callable[[int], object], b: Callable[[int], object], n: int, rounds: int,
                clock: Callable[[], float] = time.perf_counter) -> tuple[np.ndarray, np.ndarray]:
    """Per-call timings (rounds x n) of two systems called on the same input back to back,
    the order swapped on every call: both see the same machine state and the same warm
    caches, so their ratio measures the systems rather than the noise between rounds."""
    ta, tb = np.empty((rounds, n)), np.empty((rounds, n))
    for r in range(rounds):
        for i in range(n):
            if (i + r) % 2:
                t0 = clock(); a(i); t1 = clock(); b(i); t2 = clock()  # noqa: E702
                ta[r, i], tb[r, i] = t1 - t0, t2 - t1
            else:
                t0 = clock(); b(i); t1 = clock(); a(i); t2 = clock()  # noqa: E702
                tb[r, i], ta[r, i] = t1 - t0, t2 - t1
    return ta, tb


def latency_stats(per_call_s: np.ndarray) -> dict[str, float]:
    """p50/p95/p99 in microseconds and queries per second (from the median round's total)."""
    flat = per_call_s.ravel()
    totals = per_call_s.sum(axis=-1) if per_call_s.ndim > 1 else np.array([flat.sum()])
    n = per_call_s.shape[-1]
    return {
        "p50_us": float(np.percentile(flat, 50) * 1e6),
        "p95_us": float(np.percentile(flat, 95) * 1e6),
        "p99_us": float(np.percentile(flat, 99) * 1e6),
        "qps": float(n / np.median(totals)),
    }


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` over repeats."""
    return float(np.median(time_calls(lambda _: fn(), repeats)))


def ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of per-repeat ratios a_i / b_i, measured pairwise (robust to drift)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.median(a / b))
