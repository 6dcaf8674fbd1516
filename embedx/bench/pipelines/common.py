"""Shared set-up of the benchmark pipelines: a BEIR data set with BM25 impact weights and
the same uint8 impacts for every engine, so engines are compared on identical input; torch
pinned to a thread count for a timed block."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from indexing.quantize import quantize_uint8

from ...data import load_beir
from ...lexical import BM25Weighting
from ...retrieval import doc_text
from ..runner import Context


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch at ``n`` intra-op threads inside the block, the caller's setting restored after."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass
class ImpactSetup:
    dataset: object
    doc_ids: list[str]
    weights: sp.csr_matrix   # float BM25 impacts
    impacts: sp.csr_matrix   # the same, quantised to uint8 (as float32 values)
    scale: float
    vocab: list[str]
    qids: list[str]
    queries: sp.csr_matrix   # term counts


def impact_setup(ctx: Context) -> ImpactSetup:
    ds = load_beir(ctx.dataset_path(), split=ctx.spec.dataset.get("split", "test"))
    doc_ids = list(ds.corpus)
    w = BM25Weighting(k1=ctx.params.get("k1", 0.9), b=ctx.params.get("b", 0.4))
    weights = w.fit_transform([doc_text(ds.corpus[i]) for i in doc_ids])
    impacts = weights.copy()
    q, scale = quantize_uint8(weights.data)
    impacts.data = q.astype(np.float32)
    qids = [q for q in ds.qrels if q in ds.queries]
    queries = w.queries([ds.queries[q] for q in qids])
    return ImpactSetup(ds, doc_ids, weights, impacts, scale, w.vocab.terms, qids, queries)


def same_ranking_ties_aside(ids_a, scores_a, ids_b, scores_b, rel_tol: float = 1e-5) -> tuple[bool, bool]:
    """Compare two best-first hit lists of equal depth.

    Returns (same_scores, same_ranking): scores equal rank by rank within ``rel_tol``; and the
    documents equal except for the order inside a group of tied scores, and for which members
    of the tie group at the cut-off made it into the list.
    """
    sa, sb = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if len(sa) != len(sb):
        return False, False
    if not len(sa):
        return True, True
    same_scores = bool(np.all(np.abs(sa - sb) <= rel_tol * np.maximum(np.abs(sa), 1.0)))
    if not same_scores:
        return False, False
    cutoff = sa[-1]
    tied = lambda s, v: np.abs(s - v) <= rel_tol * max(abs(v), 1.0)  # noqa: E731
    a, b = np.asarray(ids_a), np.asarray(ids_b)
    above_a = set(a[~tied(sa, cutoff)].tolist())
    above_b = set(b[~tied(sb, cutoff)].tolist())
    if above_a != above_b:
        return True, False
    # within each tied group above the cut-off the sets must agree (order may differ)
    for v in np.unique(np.round(sa[~tied(sa, cutoff)], 4)):
        ga = set(a[np.abs(sa - v) <= 1e-4 * max(abs(v), 1.0)].tolist())
        gb = set(b[np.abs(sb - v) <= 1e-4 * max(abs(v), 1.0)].tolist())
        if ga != gb:
            return True, False
    return True, True
