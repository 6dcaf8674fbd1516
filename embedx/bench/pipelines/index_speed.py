"""``index-speed``: the cost of the index layer against the engines underneath, in one process.

(a) Dense: ``indexing.dense.DenseIndex.search`` against calling the raw FAISS index on the
same vectors and queries; batch and single-query, rounds alternated, single thread. The
overhead ratios use this thread's CPU time (param ``clock: thread``; ``wall`` for wall time),
so another process on the machine does not masquerade as overhead.
(b) Sparse: the native impact index against Lucene impact search through Pyserini's
Anserini on the same uint8 impacts (SciFact BM25 weights); per-query latency, one thread.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..runner import Context
from ..timing import alternate, interleaved, latency_stats
from .common import impact_setup, same_ranking_ties_aside

log = logging.getLogger(__name__)


def clustered_vectors(n: int, dim: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around random centres: closer to real embeddings than plain noise."""
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def dense_overhead(p: dict) -> dict:
    import faiss

    from indexing.dense import DenseIndex

    faiss.omp_set_num_threads(p.get("threads", 1))
    rng = np.random.default_rng(p.get("seed", 0))
    n, dim, nq, k = p.get("dense_docs", 20000), p.get("dim", 384), p.get("dense_queries", 1000), p.get("k", 10)
    docs = clustered_vectors(n, dim, 64, rng)
    queries = clustered_vectors(nq, dim, 64, rng)
    ids = [f"d{i}" for i in range(n)]
    out = {}
    for factory in p.get("factories", ["Flat", "HNSW32"]):
        idx = DenseIndex(dim, factory=factory, metric="ip")
        idx.add(ids, docs)
        raw = idx.index
        tag = factory.replace(",", "_")
        # batch
        clock = time.thread_time if p.get("clock", "thread") == "thread" else time.perf_counter
        # batch: whole-batch calls, back to back, order swapped every repeat
        wrap_t, raw_t = interleaved(lambda _: idx.search(queries, k), lambda _: raw.search(queries, k),
                                    p.get("batch_repeats", 15), 1, clock)
        out[f"dense_{tag}_batch_overhead"] = float(wrap_t.sum() / raw_t.sum())
        out[f"dense_{tag}_batch_ms"] = float(np.median(raw_t) * 1e3)
        # single query: the same queries one at a time, each query through both back to back
        single_rows = [queries[i:i + 1] for i in range(nq)]
        wrap_t, raw_t = interleaved(lambda i: idx.search(queries[i], k), lambda i: raw.search(single_rows[i], k),
                                    nq, p.get("single_rounds", 5), clock)
        out[f"dense_{tag}_single_overhead"] = float(np.median(wrap_t.sum(axis=1) / raw_t.sum(axis=1)))
        out[f"dense_{tag}_single_raw_p50_us"] = float(np.median(raw_t) * 1e6)
        out[f"dense_{tag}_single_wrap_p50_us"] = float(np.median(wrap_t) * 1e6)
        # same answers
        a, b = idx.search(queries, k), raw.search(queries, k)
        out[f"dense_{tag}_same_results"] = bool(np.array_equal(a.rows, b[1]))
    # the fixed cost per call, on an index so small that search itself costs almost nothing
    tiny = DenseIndex(dim, factory="Flat", metric="ip")
    tiny.add(ids[:16], docs[:16])
    wrap_t, raw_t = interleaved(lambda i: tiny.search(queries[i], k), lambda i: tiny.index.search(single_rows[i], k),
                                nq, 3, clock)
    out["dense_per_call_overhead_us"] = float((np.median(wrap_t) - np.median(raw_t)) * 1e6)
    return out


def sparse_speed(ctx: Context) -> dict:
    from indexing.lucene import LuceneImpactIndex
    from indexing.sparse import ImpactIndex

    p = ctx.params
    s = impact_setup(ctx)
    native = ImpactIndex.build(s.doc_ids, s.weights, quantize="uint8", vocab=s.vocab)
    lucene = LuceneImpactIndex.build(ctx.work_dir / "lucene-impact", s.doc_ids, s.impacts, s.vocab)
    rows = [s.queries[i] for i in range(s.queries.shape[0])]
    out = {}
    for k in p.get("sparse_k", [10, 100]):
        t = alternate({"native": lambda i: native.search(rows[i], k),
                       "lucene": lambda i: lucene.search(rows[i], k)},
                      len(rows), p.get("sparse_rounds", 3))
        for name, per_call in t.items():
            for stat, v in latency_stats(per_call).items():
                out[f"sparse_{name}_{stat}@k{k}"] = v
        out[f"sparse_speedup_p50@k{k}"] = out[f"sparse_lucene_p50_us@k{k}"] / out[f"sparse_native_p50_us@k{k}"]
        nat, luc = native.search(s.queries, k, raw_impacts=True), lucene.search(s.queries, k)
        same = sum(same_ranking_ties_aside(nat.ids[i][nat.rows[i] >= 0], nat.scores[i][nat.rows[i] >= 0],
                                           luc.ids[i][luc.rows[i] >= 0], luc.scores[i][luc.rows[i] >= 0])[1]
                   for i in range(len(s.qids)))
        out[f"sparse_identical_rankings@k{k}"] = same / len(s.qids)
    out["sparse_queries"] = len(s.qids)
    return out


def run(ctx: Context) -> dict:
    metrics = dense_overhead(ctx.params)
    metrics.update(sparse_speed(ctx))
    headline = [m for m in metrics if m.endswith("_overhead")] + [
        "sparse_native_p50_us@k10", "sparse_lucene_p50_us@k10", "sparse_speedup_p50@k10",
        "sparse_native_p99_us@k10", "sparse_lucene_p99_us@k10", "sparse_identical_rankings@k10"]
    return {"metrics": metrics, "headline": headline}
