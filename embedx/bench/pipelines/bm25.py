"""``lucene-bm25``: Lucene BM25 over a BEIR data set (title and text in one field), scored with
ranx; reproduces Pyserini's published BEIR "flat" numbers."""

from __future__ import annotations

import time


from ...data import load_beir
from ...eval import evaluate
from ..runner import Context
from ..timing import latency_stats, time_calls


def run(ctx: Context) -> dict:
    from indexing.lucene import LuceneBM25Index

    p = ctx.params
    ds = load_beir(ctx.dataset_path(), split=ctx.spec.dataset.get("split", "test"))
    t = time.perf_counter()
    index = LuceneBM25Index.build(ctx.work_dir / "bm25", ((i, d.get("title", ""), d.get("text", ""))
                                                          for i, d in ds.corpus.items()),
                                  threads=p.get("index_threads", 1))
    index_s = time.perf_counter() - t
    qids = [q for q in ds.qrels if q in ds.queries]
    texts = [ds.queries[q] for q in qids]
    hits, k1, b = p.get("hits", 1000), p.get("k1", 0.9), p.get("b", 0.4)
    results = index.search(texts, hits, k1=k1, b=b)
    run_ = results.to_run(qids)
    if p.get("remove_query", True):  # Pyserini's BEIR runs drop a hit whose id equals the query id
        for q in qids:
            run_[q].pop(q, None)
    metrics = evaluate(ds.qrels, run_, p.get("metrics", ("ndcg@10", "recall@100", "mrr@10", "map")))
    # single-query latency, one thread, k=10 and k=100
    for k in (10, 100):
        per_call = time_calls(lambda i: index.search([texts[i]], k, k1=k1, b=b), len(texts))
        stats = latency_stats(per_call)
        metrics[f"latency_p50_us@k{k}"] = stats["p50_us"]
        metrics[f"qps@k{k}"] = stats["qps"]
    metrics.update({"queries": len(qids), "documents": len(ds.corpus), "index_build_s": index_s})
    return {"metrics": metrics, "headline": ["ndcg@10", "recall@100", "latency_p50_us@k10"]}
