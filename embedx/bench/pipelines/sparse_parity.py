"""``sparse-parity``: the same uint8 impacts in the native index and in Lucene must give the
same top-k for every query (ties aside) and the same scores."""

from __future__ import annotations

import numpy as np

from ...eval import evaluate
from ..runner import Context
from .common import impact_setup, same_ranking_ties_aside


def run(ctx: Context) -> dict:
    from indexing.lucene import LuceneImpactIndex
    from indexing.sparse import ImpactIndex

    k = ctx.params.get("k", 10)
    s = impact_setup(ctx)
    native = ImpactIndex.build(s.doc_ids, s.weights, quantize="uint8", vocab=s.vocab)
    same_impacts = bool(native.scale == s.scale and (native.impacts() != s.impacts).nnz == 0)
    lucene = LuceneImpactIndex.build(ctx.work_dir / "lucene-impact", s.doc_ids, s.impacts, s.vocab)

    nat = native.search(s.queries, k, raw_impacts=True)
    luc = lucene.search(s.queries, k)
    n_same_rank = n_same_score = n_exact = 0
    max_abs = 0.0
    mismatches = []
    for i, q in enumerate(s.qids):
        ha, hb = nat.hits(i), luc.hits(i)
        ids_a, sc_a = [h[0] for h in ha], [h[1] for h in ha]
        ids_b, sc_b = [h[0] for h in hb], [h[1] for h in hb]
        same_scores, same_rank = same_ranking_ties_aside(ids_a, sc_a, ids_b, sc_b)
        n_same_score += same_scores
        n_same_rank += same_rank
        n_exact += ids_a == ids_b
        if len(sc_a) == len(sc_b) and sc_a:
            max_abs = max(max_abs, float(np.max(np.abs(np.subtract(sc_a, sc_b)))))
        if not same_rank and len(mismatches) < 5:
            mismatches.append({"query": q, "native": ha, "lucene": hb})
    quality = {f"native_{m}": v for m, v in evaluate(s.dataset.qrels, nat.to_run(s.qids), ("ndcg@10",)).items()}
    quality.update({f"lucene_{m}": v for m, v in evaluate(s.dataset.qrels, luc.to_run(s.qids), ("ndcg@10",)).items()})
    float_run = native_float_run(s, k)
    quality["native_float_ndcg@10"] = evaluate(s.dataset.qrels, float_run, ("ndcg@10",))["ndcg@10"]
    n = len(s.qids)
    metrics = {
        "queries": n,
        "same_impacts": same_impacts,
        "identical_topk_ties_aside": n_same_rank,
        "identical_topk_fraction": n_same_rank / n,
        "identical_topk_exact_order": n_exact,
        "same_scores_fraction": n_same_score / n,
        "max_abs_score_diff": max_abs,
        "k": k,
        "scale": s.scale,
        "postings": int(s.impacts.nnz),
        **quality,
    }
    return {"metrics": metrics,
            "headline": ["identical_topk_fraction", "same_scores_fraction", "max_abs_score_diff",
                         "native_ndcg@10", "lucene_ndcg@10"],
            "details": {"mismatches": mismatches}}


def native_float_run(s, k: int) -> dict:
    """The unquantised BM25 impacts, to show what 8-bit quantisation costs in quality."""
    from indexing.sparse import ImpactIndex
    return ImpactIndex.build(s.doc_ids, s.weights, vocab=s.vocab).search(s.queries, k).to_run(s.qids)
