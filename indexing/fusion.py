"""Hybrid fusion: merge ranked lists from different retrievers (say dense and sparse) into one.

Two methods:

* **Reciprocal rank fusion** (Cormack, Clarke and Buettcher, SIGIR 2009):
  ``score(d) = sum_i w_i / (k + rank_i(d))`` with ranks starting at 1. Only ranks matter, so
  lists with incomparable scores fuse without tuning. ``k`` has no default on purpose: results
  depend on it and a run must say which it used. The paper uses ``k = 60``.
* **Linear fusion**: ``score(d) = sum_i w_i * norm_i(s_i(d))`` (for two lists
  ``alpha * norm(s_1) + (1 - alpha) * norm(s_2)``), with per-list min-max or z-score
  (population standard deviation) normalisation. A document a list did not return is scored as that list's normalised minimum,
  i.e. as if ranked at its bottom (0 under min-max); an empty list adds 0 to every document.
  A list whose scores are all equal normalises to 0 under both schemes.

Ties are broken deterministically: higher fused score first, then the document that appears
first when the lists are read rank by rank (rank 1 of list 0, rank 1 of list 1, rank 2 of
list 0, ...). Each document's terms are summed in value order, so two documents whose terms
are the same multiset get bit-identical scores and the tie rule, not float noise, decides.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InvalidInputError
from .results import SearchResults

Hit = tuple[str, float]
NORMS = ("minmax", "zscore")


def reciprocal_rank_fusion(result_lists: Sequence[Sequence[Hit] | Sequence[str]], *, k: float,
                           weights: Sequence[float] | None = None, limit: int | None = None) -> list[Hit]:
    """Fuse ranked lists of ``(id, score)`` pairs or of bare ids by reciprocal rank (best first).

    ``k`` is required (60 in the original paper); ``weights`` default to 1 per list.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) \
            or not math.isfinite(k) or k < 0:
        raise InvalidInputError(f"RRF k must be a finite number >= 0, got {k!r}")
    lists = [_ids_of(lst, i) for i, lst in enumerate(_check_lists(result_lists))]
    w = _weights(weights, len(lists))
    names, doc, list_no, rank = _flatten(lists)
    contrib = w[list_no] / (float(k) + rank)
    return _combine(names, doc, list_no, rank, contrib, len(lists), limit)


def linear_fusion(result_lists: Sequence[Sequence[Hit]], *, alpha: float | None = None,
                  weights: Sequence[float] | None = None, norm: str = "minmax",
                  limit: int | None = None) -> list[Hit]:
    """Fuse scored lists by a weighted sum of per-list normalised scores (best first).

    Give ``alpha`` in [0, 1] for two lists (weights ``alpha, 1 - alpha``) or ``weights`` for any
    number of lists; ``norm`` is ``"minmax"`` or ``"zscore"``.
    """
    if norm not in NORMS:
        raise InvalidInputError(f"norm must be one of {NORMS}, got {norm!r}")
    lists = _check_lists(result_lists)
    if (alpha is None) == (weights is None):
        raise InvalidInputError("give exactly one of alpha (two lists) or weights (one per list)")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
                or not 0.0 <= alpha <= 1.0:
            raise InvalidInputError(f"alpha must be a number in [0, 1], got {alpha!r}")
        if len(lists) != 2:
            raise InvalidInputError(f"alpha fuses exactly two lists, got {len(lists)}; pass weights instead")
        w = np.array([alpha, 1.0 - alpha], dtype=np.float64)
    else:
        w = _weights(weights, len(lists))

    scored = [_scored(lst, i) for i, lst in enumerate(lists)]
    names, doc, list_no, rank = _flatten([s[0] for s in scored])
    normed = [_normalise(s[1], norm) for s in scored]
    present = np.concatenate(normed)
    floor = np.array([n.min() if n.size else 0.0 for n in normed])
    # Every document starts at each list's floor; a list that returned it lifts it to its own value.
    contrib = w[list_no] * (present - floor[list_no])
    base = float((w * floor).sum())
    return _combine(names, doc, list_no, rank, contrib, len(lists), limit, base=base)


def fuse_results(a: SearchResults, b: SearchResults, *more: SearchResults, method: str = "rrf",
                 **kwargs) -> list[list[Hit]]:
    """Fuse two (or more) batches of search results query by query.

    ``method`` is ``"rrf"`` (needs ``k=``) or ``"linear"`` (needs ``alpha=`` or ``weights=``);
    other keyword arguments go to :func:`reciprocal_rank_fusion` or :func:`linear_fusion`.
    """
    batches = (a, b, *more)
    fuse = {"rrf": reciprocal_rank_fusion, "linear": linear_fusion}.get(method)
    if fuse is None:
        raise InvalidInputError(f"unknown fusion method {method!r}; choose 'rrf' or 'linear'")
    n = len(a)
    if any(len(r) != n for r in batches):
        raise InvalidInputError(f"result batches hold different numbers of queries: {[len(r) for r in batches]}")
    return [fuse([r.hits(q) for r in batches], **kwargs) for q in range(n)]


# ---------------------------------------------------------------------- helpers
def _check_lists(result_lists) -> list:
    if isinstance(result_lists, (str, bytes)) or not isinstance(result_lists, Sequence):
        raise InvalidInputError("result_lists must be a sequence of ranked lists")
    if not result_lists:
        raise InvalidInputError("nothing to fuse: result_lists is empty")
    return list(result_lists)


def _ids_of(lst, i: int) -> list[str]:
    """Ids of a list given either as bare ids or as (id, score) pairs."""
    lst = list(lst)
    if not all(isinstance(x, str) for x in lst):
        return _scored(lst, i)[0]
    _check_unique(lst, i)
    return lst


def _scored(lst, i: int) -> tuple[list[str], np.ndarray]:
    """Ids and float64 scores of a list of (id, score) pairs."""
    lst = list(lst)
    try:
        bad = any(isinstance(x, (str, bytes)) or len(x) != 2 for x in lst)
    except TypeError:
        bad = True
    if bad:
        raise InvalidInputError(f"list {i}: entries must be (id, score) pairs with a non-empty string id")
    ids, scores = (list(t) for t in zip(*lst)) if lst else ([], [])
    _check_unique(ids, i)
    arr = np.asarray(scores)
    if arr.dtype.kind not in "fiu":
        raise InvalidInputError(f"list {i}: scores must be numbers, got {arr.dtype} values such as {scores[0]!r:.40}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"list {i} has a NaN or infinite score")
    return ids, arr


def _check_unique(ids: list[str], i: int) -> None:
    if not all(isinstance(x, str) and x for x in ids):
        raise InvalidInputError(f"list {i}: ids must be non-empty strings")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for x in ids:
            if x in seen:
                raise InvalidInputError(f"list {i} ranks id {x!r} more than once")
            seen.add(x)


def _weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"weights must be numbers, got {weights!r:.80}") from None
    if w.shape != (n,):
        raise InvalidInputError(f"got {w.size} weights for {n} lists")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InvalidInputError(f"weights must be finite and >= 0, got {w.tolist()}")
    return w


def _flatten(lists: list[list[str]]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ids, and for every entry: document number, list number, rank (1-based)."""
    sizes = [len(x) for x in lists]
    code: dict[str, int] = {}
    doc = np.fromiter((code.setdefault(d, len(code)) for lst in lists for d in lst), dtype=np.int64,
                      count=sum(sizes))
    list_no = np.repeat(np.arange(len(lists)), sizes)
    rank = np.concatenate([np.arange(1, s + 1) for s in sizes]).astype(np.float64)
    return list(code), doc, list_no, rank


def _normalise(scores: np.ndarray, norm: str) -> np.ndarray:
    if scores.size == 0:
        return scores
    if norm == "minmax":
        lo, span = scores.min(), scores.max() - scores.min()
        return (scores - lo) / span if span > 0 else np.zeros_like(scores)
    std = scores.std()
    return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)


def _combine(names: list[str], doc: np.ndarray, list_no: np.ndarray, rank: np.ndarray, contrib: np.ndarray,
             n_lists: int, limit: int | None, base: float = 0.0) -> list[Hit]:
    """Sum contributions per document and order by (score desc, first appearance)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0):
        raise InvalidInputError(f"limit must be a positive integer or None, got {limit!r}")
    if not names:
        return []
    # Sum each document's terms in value order: equal multisets give equal sums.
    order = np.lexsort((contrib, doc))
    score = np.bincount(doc[order], weights=contrib[order], minlength=len(names)) + base
    appearance = np.full(len(names), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(appearance, doc, rank.astype(np.int64) * n_lists + list_no)
    ranked = np.lexsort((appearance, -score))[:limit]
    return [(names[j], s) for j, s in zip(ranked.tolist(), score[ranked].tolist())]
