"""Parity of an exported encoder with its torch model, and the thresholds an export must meet.

Statistics are computed per text over batches of varied sizes whose texts are *not* sorted by
length (so every batch carries padding, the case a graph is most likely to get wrong), with a
one-token text and one longer than ``max_length``. A threshold is named after the statistic it
bounds: ``max_*`` statistics are upper bounds, all others (``min_*``, ``mean_*``) lower bounds.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Sequence

import numpy as np

TOP_K = 20
BATCH_SIZES = (1, 2, 3, 5, 8)

DEFAULT_THRESHOLDS: dict[tuple[str, str], dict[str, float]] = {
    ("dense", "fp32"): {"max_abs": 1e-3, "min_cosine": 0.9999},
    ("dense", "int8"): {"mean_cosine": 0.98, "min_cosine": 0.95},
    ("sparse", "fp32"): {"max_abs": 1e-3, "min_topk_agreement": 0.9, "min_weight_corr": 0.9999},
    ("sparse", "int8"): {"mean_topk_agreement": 0.9, "mean_weight_corr": 0.98},
}


STATISTICS = {
    "dense": ("max_abs", "mean_cosine", "min_cosine"),
    "sparse": ("max_abs", "mean_topk_agreement", "min_topk_agreement", "mean_weight_corr", "min_weight_corr"),
}


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch model within the thresholds."""


def varied_batches(id_lists: Sequence[Sequence[int]], sizes: Iterable[int] = BATCH_SIZES) -> list[list[int]]:
    """Split ``range(len(id_lists))`` in order into batches whose sizes cycle through ``sizes``."""
    out, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= len(id_lists):
            return out
        out.append(list(range(start, min(start + size, len(id_lists)))))
        start += size
    return out


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300)
    return np.where(both_zero, 1.0, cos)


def dense_stats(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    cos = _cosine_rows(ref, out)
    return {"max_abs": float(np.abs(ref - out).max()), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min())}


def _topk(row: np.ndarray, k: int) -> set[int]:
    positive = np.flatnonzero(row > 0)
    if len(positive) > k:
        positive = positive[np.argpartition(-row[positive], k - 1)[:k]]
    return set(positive.tolist())


def sparse_stats(ref: np.ndarray, out: np.ndarray, k: int = TOP_K) -> dict[str, float]:
    """Top-``k`` token agreement (share of the reference's top-k among the export's top-k) and
    Pearson correlation of the weights over the tokens either side gives a weight."""
    agree, corr = [], []
    for r, o in zip(ref, out):
        top_r, top_o = _topk(r, k), _topk(o, k)
        agree.append(len(top_r & top_o) / len(top_r) if top_r else float(not top_o))
        union = (r > 0) | (o > 0)
        if union.sum() < 2 or np.ptp(r[union]) == 0 or np.ptp(o[union]) == 0:
            corr.append(1.0 if np.allclose(r[union], o[union]) else 0.0)
        else:
            corr.append(float(np.corrcoef(r[union], o[union])[0, 1]))
    agree, corr = np.asarray(agree), np.asarray(corr)
    return {"max_abs": float(np.abs(ref - out).max()), "top_k": k,
            "mean_topk_agreement": float(agree.mean()), "min_topk_agreement": float(agree.min()),
            "mean_weight_corr": float(corr.mean()), "min_weight_corr": float(corr.min()),
            "mean_nnz_ref": float((ref > 0).sum(axis=1).mean()), "mean_nnz": float((out > 0).sum(axis=1).mean())}


def check(stats: dict, thresholds: dict[str, float]) -> list[str]:
    """Failed checks as readable lines (empty when all pass)."""
    failed = []
    for name, bound in thresholds.items():
        if name not in stats:
            raise ValueError(f"unknown parity statistic {name!r}; known: {sorted(stats)}")
        value = stats[name]
        ok = value <= bound if name.startswith("max_") else value >= bound
        if not ok or not np.isfinite(value):
            failed.append(f"{name} = {value:.6g} (needs {'<=' if name.startswith('max_') else '>='} {bound:g})")
    return failed


def measure(kind: str, reference: Callable[[np.ndarray, np.ndarray], np.ndarray],
            exported: Callable[[np.ndarray, np.ndarray], np.ndarray], batcher, texts: Sequence[str]) -> dict:
    """Run both on the same padded batches of ``texts``; the statistics over all texts."""
    id_lists = batcher.tokenize(texts)
    refs, outs, shapes = [], [], []
    for rows in varied_batches(id_lists):
        ids, mask = batcher.pad([id_lists[i] for i in rows])
        refs.append(np.asarray(reference(ids, mask), dtype=np.float32))
        outs.append(np.asarray(exported(ids, mask), dtype=np.float32))
        shapes.append(list(ids.shape))
    ref, out = np.concatenate(refs), np.concatenate(outs)
    stats = dense_stats(ref, out) if kind == "dense" else sparse_stats(ref, out)
    stats.update({"texts": len(texts), "batch_shapes": shapes})
    return stats
