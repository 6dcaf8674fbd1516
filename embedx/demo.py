"""``embedx demo``: the shortest path through the whole stack on real files.

Reads a BEIR corpus (by default the small one shipped in the package), writes a BM25
impact bundle atomically, loads it back with checksums verified, answers the data set's
queries, scores them when judgements exist, reports where the time went, and finally serves the
bundle over HTTP and queries it like a client.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence


def run_demo(corpus_path: Path | None, out: Path, k: int, queries: Sequence[str],
             echo: Callable[[str], None] = print, serve: bool = True) -> dict:
    from indexing.bundle import load_bundle

    from .data import demo_corpus_path, load_beir
    from .eval import evaluate
    from .retrieval import build_lexical_bundle, search_texts

    timings = {}
    source = Path(corpus_path) if corpus_path else demo_corpus_path()
    t = time.perf_counter()
    ds = load_beir(source, split="test")
    timings["load corpus"] = time.perf_counter() - t
    echo(f"corpus: {source} ({len(ds.corpus):,} documents, {len(ds.queries):,} queries)")

    t = time.perf_counter()
    path = build_lexical_bundle(ds.corpus, out, kind="sparse")
    timings["build bundle"] = time.perf_counter() - t
    t = time.perf_counter()
    bundle = load_bundle(path, verify=True)
    timings["load + verify bundle"] = time.perf_counter() - t
    m = bundle.manifest
    echo(f"bundle: {path} kind={m['kind']} docs={m['count']:,} vocab={m.get('vocab_size', '?'):,} "
         f"files={len(m['files'])}")

    if queries:
        qids, texts = [f"q{i}" for i in range(len(queries))], list(queries)
    else:
        qids = [q for q in ds.qrels if q in ds.queries] or list(ds.queries)
        texts = [ds.queries[q] for q in qids]
    t = time.perf_counter()
    results = search_texts(bundle, texts, max(k, 100))
    search_s = time.perf_counter() - t
    timings[f"search {len(texts)} queries"] = search_s

    for i, text in enumerate(texts[:5]):
        echo(f"\n? {text}")
        hits = results.hits(i)[:k]
        for rank, ((doc_id, score), fields) in enumerate(zip(hits, bundle.fields([h[0] for h in hits])), 1):
            echo(f"  {rank}. [{doc_id}] {score:.3f}  {(fields or {}).get('title', '')}")
    scores = {}
    if not queries and ds.qrels:
        scores = evaluate(ds.qrels, results.to_run(qids), ("ndcg@10", "recall@100", "mrr@10"))
        echo("\nquality: " + "  ".join(f"{name}={v:.3f}" for name, v in scores.items()))
    echo("\ntimings:")
    for name, sec in timings.items():
        echo(f"  {name:<24} {sec * 1e3:9.1f} ms")
    echo(f"  {'per query':<24} {search_s / len(texts) * 1e6:9.1f} us")
    bundle.close()
    served = []
    if serve:
        from .demo_serve import serve_and_query
        served = serve_and_query(path, texts[:3], k, echo)
    return {"bundle": str(path), "timings": timings, "scores": scores, "served": served}
