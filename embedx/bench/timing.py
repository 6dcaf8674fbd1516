"""Latency measurement helpers: per-call timings, medians and tail percentiles, alternated
rounds so that two systems compared in one run see the same machine conditions."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def time_calls(fn: Callable[[int], object], n: int) -> np.ndarray:
    """Seconds taken by ``fn(i)`` for i in range(n), one timing per call."""
    out = np.empty(n, dtype=np.float64)
    clock = time.perf_counter
    for i in range(n):
        t = clock()
        fn(i)
        out[i] = clock() - t
    return out


def alternate(fns: dict[str, Callable[[int], object]], n: int, rounds: int) -> dict[str, np.ndarray]:
    """Run each system's n calls in turn, for several rounds; returns all per-call timings
    (rounds x n) per system. Alternating rounds spreads machine noise evenly."""
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(time_calls(fn, n))
    return {name: np.stack(v) for name, v in out.items()}


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
