"""One search, start to end, on one collection version: encode, search, fuse, fetch fields.

Plain blocking code, run in the server's thread pool while the request holds a lease on the
version (see :mod:`serving.state`). Text queries and vectors share everything after encoding.
Hybrid results come from ``indexing.fusion``: each retriever returns ``depth`` candidates
and the fused list is cut to ``k``.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import sparse as sp

from indexing.fusion import linear_fusion, reciprocal_rank_fusion
from serving.config import Fusion
from serving.errors import bad_request
from serving.state import CollectionVersion, Retriever

SIDES = ("sparse", "dense")


@dataclass
class Options:
    k: int = 10
    mode: str | None = None
    fields: list[str] | None = None        # None: the collection's default; []: none
    fusion: Mapping[str, Any] = field(default_factory=dict)   # overrides of the collection's fusion


@dataclass
class Timings:
    encode: float = 0.0
    search: float = 0.0
    fuse: float = 0.0
    fields: float = 0.0

    def as_ms(self, total: float) -> dict[str, float]:
        return {"encode_ms": _ms(self.encode), "search_ms": _ms(self.search), "fuse_ms": _ms(self.fuse),
                "fields_ms": _ms(self.fields), "total_ms": _ms(total)}


def search_texts(version: CollectionVersion, texts: Sequence[str], opts: Options, timings: Timings) -> list[list[dict]]:
    """Hits (``{"id", "score", "fields"}``, best first) for each text."""
    search = TextSearch(version, texts, opts)
    t = time.perf_counter()
    queries = [encoded(f) for f in search.start()]
    timings.encode += time.perf_counter() - t
    return search.finish(queries, timings)


class TextSearch:
    """A text search in two steps around its one wait, the query encoders: :meth:`start` hands
    the texts to each side's encoder (futures), :meth:`finish` searches, fuses and fetches fields.
    :func:`search_texts` blocks in between; the server's event loop can await there instead,
    holding no thread while a micro-batcher encodes."""

    def __init__(self, version: CollectionVersion, texts: Sequence[str], opts: Options):
        self.version, self.texts, self.opts = version, list(texts), opts
        mode = opts.mode or version.default_mode
        self.sides = [_retriever(version, s) for s in (SIDES if mode == "hybrid" else (mode,))]
        self.fusion = _fusion(version, opts)
        self.depth = _depth(opts.k, self.fusion, len(self.sides))
        # A query with nothing but whitespace (by Python's rules) finds nothing, like one of stopwords.
        self.live = [i for i, t in enumerate(self.texts) if t.strip()]

    def start(self) -> list[Future]:
        """Per side, a future of the live texts' query batch (nothing to encode: no futures)."""
        if not self.live:
            return []
        with _as_bad_request("encoding the query"):
            return [r.encode_later([self.texts[i] for i in self.live]) for r in self.sides]

    def finish(self, queries: list, timings: Timings) -> list[list[dict]]:
        """Hits for each text, given :meth:`start`'s query batches."""
        per_query: list[list] = [[[] for _ in self.sides] for _ in self.texts]
        if self.live:
            lists = _search(self.sides, queries, self.depth, timings)
            for row, i in enumerate(self.live):
                per_query[i] = [lst[row] for lst in lists]
        return _finish(self.version, per_query, self.opts, self.fusion, timings)


def encoded(future: Future) -> Any:
    """An encoder future's query batch (blocking); an encoder's ValueError (bad input) is a 400."""
    with _as_bad_request("encoding the query"):
        return future.result()


def search_vectors(version: CollectionVersion, items: Sequence[Mapping[str, Any]], opts: Options,
                   timings: Timings) -> list[list[dict]]:
    """Hits for each ``{"dense": [...], "sparse": {...}}`` item; an item with both is fused."""
    fusion = _fusion(version, opts)
    groups: dict[str, list[int]] = {s: [i for i, item in enumerate(items) if item.get(s) is not None] for s in SIDES}
    for i, item in enumerate(items):
        if item.get("dense") is None and item.get("sparse") is None:
            raise bad_request(f"vector query {i} has neither a dense nor a sparse vector")
    n_lists = {i: sum(items[i].get(s) is not None for s in SIDES) for i in range(len(items))}
    depth = _depth(opts.k, fusion, max(n_lists.values()))
    per_query: list[list] = [[] for _ in items]
    t = time.perf_counter()
    batches = {}
    for side, rows in groups.items():
        if rows:
            r = _retriever(version, side)
            batches[side] = (r, rows, _vectors(r, [items[i][side] for i in rows]))
    timings.encode += time.perf_counter() - t
    for side, (r, rows, queries) in batches.items():
        (results,) = _search([r], [queries], depth, timings)
        for i, hits in zip(rows, results):
            per_query[i].append(hits)
    return _finish(version, per_query, opts, fusion, timings)


# ---------------------------------------------------------------------- stages
def _search(sides: list[Retriever], queries: list, depth: int, timings: Timings) -> list[list[list]]:
    """Per retriever, per query: (id, score) hits, best first."""
    t = time.perf_counter()
    out = []
    for r, q in zip(sides, queries):
        with _as_bad_request(f"searching the {r.side} index"):
            res = r.search(q, max(1, min(depth, len(r.bundle))))   # never pad past the index's size
        if not np.isfinite(res.scores[res.rows >= 0]).all():
            raise bad_request("the search produced non-finite scores (are the vector values too large?)")
        out.append([res.hits(i) for i in range(len(res))])
    timings.search += time.perf_counter() - t
    return out


def _finish(version: CollectionVersion, per_query: list[list[list]], opts: Options, fusion: Fusion,
            timings: Timings) -> list[list[dict]]:
    t = time.perf_counter()
    with _as_bad_request("fusing the results"):
        ranked = [_fuse(lists, fusion, opts.k) for lists in per_query]
    timings.fuse += time.perf_counter() - t

    t = time.perf_counter()
    names = opts.fields if opts.fields is not None else version.settings.fields
    stored: dict[str, dict | None] = {}
    if names != []:
        ids = list(dict.fromkeys(doc for hits in ranked for doc, _ in hits))
        with _as_bad_request("reading stored fields"):
            stored = dict(zip(ids, version.fields(ids, names)))
    timings.fields += time.perf_counter() - t
    return [[{"id": doc, "score": score, "fields": stored.get(doc)} for doc, score in hits] for hits in ranked]


def _fuse(lists: list[list], fusion: Fusion, k: int) -> list[tuple[str, float]]:
    if len(lists) == 1:
        return lists[0][:k]
    if fusion.method == "rrf":
        return reciprocal_rank_fusion(lists, k=fusion.k, limit=k)
    return linear_fusion(lists, alpha=fusion.alpha, norm=fusion.norm, limit=k)


# ---------------------------------------------------------------------- helpers
def _retriever(version: CollectionVersion, side: str) -> Retriever:
    r = version.side(side)
    if r is None:
        raise bad_request(f"collection {version.name!r} has no {side} index; it serves modes {version.modes}",
                          "unsupported_mode")
    return r


def _fusion(version: CollectionVersion, opts: Options) -> Fusion:
    overrides = {k: v for k, v in opts.fusion.items() if v is not None}
    return version.fusion.model_copy(update=overrides) if overrides else version.fusion


def _depth(k: int, fusion: Fusion, n_lists: int) -> int:
    return k if n_lists < 2 else max(k, fusion.depth)


def _vectors(r: Retriever, values: list) -> Any:
    """Dense rows -> float32 (n, d); sparse ``{indices, values}`` / ``{token: weight}`` -> CSR."""
    if not r.takes_vectors:
        raise bad_request(f"the {r.side} index ({r.bundle.kind}) searches with query text only, not vectors")
    width = r.width
    if r.side == "dense":
        lengths = {len(v) for v in values}
        if lengths != {width}:
            bad = next(n for n in lengths if n != width)
            raise bad_request(f"dense vectors must have {width} values (the index's dimension), got {bad}")
        return np.asarray(values, dtype=np.float32)
    indptr, cols, data = [0], [], []
    vocab = None
    for i, v in enumerate(values):
        if "indices" in v and isinstance(v.get("indices"), list):
            idx, val = v["indices"], v["values"]
            if idx and max(idx) >= width:
                raise bad_request(f"sparse vector {i}: index {max(idx)} is outside the vocabulary (size {width})")
            cols += idx
            data += val
        else:
            if vocab is None:
                vocab = r.vocabulary()
                if vocab is None:
                    raise bad_request(f"the {r.side} index has no vocabulary; give sparse vectors as "
                                      f"{{indices, values}}")
            for token, weight in v.items():
                col = vocab.get(token)
                if col is not None:      # unknown tokens match nothing, as in the index's own encoding
                    cols.append(col)
                    data.append(weight)
        indptr.append(len(cols))
    matrix = sp.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(cols, dtype=np.int64),
                            np.asarray(indptr, dtype=np.int64)), shape=(len(values), width))
    matrix.sum_duplicates()
    return matrix


class _as_bad_request:
    """Turn a ValueError from the library (bad input, by its convention) into a 400."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from serving.errors import ApiError
        if exc is not None and isinstance(exc, ValueError) and not isinstance(exc, ApiError):
            raise bad_request(f"{self.what}: {exc}") from None
        return False


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3) if math.isfinite(seconds) else 0.0
