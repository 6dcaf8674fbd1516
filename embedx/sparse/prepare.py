"""Build the training file from a BEIR folder: queries, positives, mined candidates, teacher scores.

Two splits, as the paper pre-trains then fine-tunes:

- ``unsupervised``: pairs from the corpus itself. The query is a document's title, the
  positive is its abstract *without* the title (with the title the match would be trivial),
  and every document of this split reads as its abstract alone (``doc_field: text``), so
  positives and negatives look alike. Documents sharing a title are all positives.
- ``supervised``: the training queries with their judged positives (``qrels/<split>.tsv``),
  documents as title and abstract (``title_text``), as evaluation sees them.

Hard negatives are mined with every teacher through the index layer: the union of each
teacher's top ``top_k`` (positives removed), interleaved by rank so the best of each come
first. Every teacher then scores each positive and each candidate (raw scores; the ensemble is
normalised at training time over the sampled candidates). Encodings are cached per model hash.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .dataset import PreparedData, PreparedSplit

log = logging.getLogger(__name__)

SPLITS = ("unsupervised", "supervised")


def unsupervised_queries(corpus: Mapping[str, Mapping], doc_row: Mapping[str, int]):
    """(query ids, title texts, positive rows per query) for documents with a title and a text."""
    by_title: dict[str, list[int]] = {}
    first_id: dict[str, str] = {}
    for d, doc in corpus.items():
        title = (doc.get("title") or "").strip()
        if title and (doc.get("text") or "").strip():
            key = " ".join(title.lower().split())
            by_title.setdefault(key, []).append(doc_row[d])
            first_id.setdefault(key, d)
    qids, texts, positives = [], [], []
    for key, rows in by_title.items():
        d = first_id[key]
        qids.append(f"title:{d}")
        texts.append(corpus[d]["title"].strip())
        positives.append(sorted(rows))
    return qids, texts, positives


def supervised_queries(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
                       doc_row: Mapping[str, int]):
    qids, texts, positives = [], [], []
    for q, judged in qrels.items():
        rows = sorted(doc_row[d] for d, grade in judged.items() if grade > 0 and d in doc_row)
        if rows and q in queries and queries[q].strip():
            qids.append(q)
            texts.append(queries[q])
            positives.append(rows)
    return qids, texts, positives


def merge_candidates(ranked: Sequence[np.ndarray], positives: Sequence[Sequence[int]], top_k: int) -> np.ndarray:
    """Per query, the union of each list's first ``top_k`` non-positive rows, interleaved by
    rank (rank 1 of every list, then rank 2, ...), duplicates dropped; ``(n_q, C)``, -1 padded."""
    n_q = len(positives)
    merged = []
    for i in range(n_q):
        pos = set(positives[i])
        lists = [[r for r in lst[i].tolist() if r >= 0 and r not in pos][:top_k] for lst in ranked]
        seen: dict[int, None] = {}
        for rank in range(top_k):
            for lst in lists:
                if rank < len(lst):
                    seen.setdefault(lst[rank], None)
        merged.append(list(seen))
    width = max((len(m) for m in merged), default=0)
    out = np.full((n_q, width), -1, dtype=np.int32)
    for i, m in enumerate(merged):
        out[i, :len(m)] = m
    return out


def build_split(name: str, doc_ids: Sequence[str], doc_texts: Sequence[str], qids, texts, positives,
                teachers: Sequence, *, doc_field: str, top_k: int) -> PreparedSplit:
    """Mine candidates with every teacher and score positives and candidates with each."""
    max_pos = max(len(p) for p in positives)
    ranked, qvecs = [], {}
    for t in teachers:
        t0 = time.perf_counter()
        t.fit(doc_ids, doc_texts)
        qvecs[t.name] = t.encode_queries(texts)
        ranked.append(t.search(qvecs[t.name], top_k + max_pos))
        log.info("%s: %s encoded and searched %d queries in %.1f s", name, t.name, len(texts),
                 time.perf_counter() - t0)
    candidates = merge_candidates(ranked, positives, top_k)
    pos_ptr = np.zeros(len(qids) + 1, dtype=np.int64)
    pos_ptr[1:] = np.cumsum([len(p) for p in positives])
    pos_docs = np.concatenate([np.asarray(p, dtype=np.int32) for p in positives])
    pos_scores, cand_scores = {}, {}
    example_query = np.repeat(np.arange(len(qids)), np.diff(pos_ptr))
    for t in teachers:               # each still holds this split's document vectors
        cand_scores[t.name] = t.score(qvecs[t.name], candidates)
        per_query_pos = np.full((len(qids), max_pos), -1, dtype=np.int64)
        for i, p in enumerate(positives):
            per_query_pos[i, :len(p)] = p
        s = t.score(qvecs[t.name], per_query_pos)
        pos_scores[t.name] = s[example_query, np.concatenate([np.arange(len(p)) for p in positives])]
    return PreparedSplit(doc_field=doc_field, query_ids=np.asarray(qids, dtype=str),
                         query_texts=np.asarray(texts, dtype=str), pos_ptr=pos_ptr, pos_docs=pos_docs,
                         candidates=candidates, pos_scores=pos_scores, cand_scores=cand_scores)


def prepare(dataset_dir: str | Path, out: str | Path, *, splits: Sequence[str] = SPLITS,
            teachers: Sequence[str] = ("bm25", "dense", "sparse"), top_k: int = 20, qrels_split: str = "train",
            cache_dir: str | Path | None = None, dense_model: str = "all-minilm-l6-v2",
            sparse_model: str = "splade-tiny", sparse_max_length: int = 512, progress: bool = True,
            teacher_objects: Mapping[str, Any] | None = None) -> PreparedData:
    """Write the prepared training file for ``dataset_dir`` to ``out`` and return it.

    ``teacher_objects`` replaces named teachers with ready objects (tests inject small ones).
    """
    from embedx.data import load_beir, load_corpus
    from embedx.retrieval import doc_text

    from .cache import default_cache_dir
    from .teachers import make_teacher

    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {', '.join(SPLITS)}")
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if not teachers:
        raise ValueError("give at least one teacher (bm25, dense, sparse)")
    cache_dir = default_cache_dir() / "encodings" if cache_dir is None else Path(cache_dir)
    t_start = time.perf_counter()
    if "supervised" in splits:
        ds = load_beir(dataset_dir, split=qrels_split)
        corpus, queries, qrels = ds.corpus, ds.queries, ds.qrels
    else:
        corpus, queries, qrels = load_corpus(dataset_dir), {}, {}
    doc_ids = list(corpus)
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    objs = dict(teacher_objects or {})
    options = {"dense": {"model": dense_model, "cache_dir": cache_dir, "progress": progress},
               "sparse": {"model": sparse_model, "cache_dir": cache_dir, "max_length": sparse_max_length,
                          "progress": progress},
               "bm25": {}}
    made = [objs[n] if n in objs else make_teacher(n, **options[n]) for n in teachers]

    result = {}
    for name in splits:
        if name == "unsupervised":
            qids, texts, positives = unsupervised_queries(corpus, doc_row)
            field, docs = "text", [corpus[d].get("text", "") for d in doc_ids]
        else:
            qids, texts, positives = supervised_queries(queries, qrels, doc_row)
            field, docs = "title_text", [doc_text(corpus[d]) for d in doc_ids]
        if not qids:
            raise ValueError(f"split {name!r}: no queries with positives in {dataset_dir}")
        log.info("%s: %d queries, %d positives", name, len(qids), sum(map(len, positives)))
        result[name] = build_split(name, doc_ids, docs, qids, texts, positives, made, doc_field=field, top_k=top_k)
    meta = {"dataset": str(dataset_dir), "qrels_split": qrels_split, "created": datetime.now(timezone.utc).isoformat(),
            "top_k": top_k, "teachers": {t.name: t.key for t in made}, "seconds": time.perf_counter() - t_start}
    data = PreparedData(doc_ids=np.asarray(doc_ids, dtype=str), splits=result, meta=meta)
    data.save(out)
    log.info("wrote %s in %.0f s", out, time.perf_counter() - t_start)
    return data


def describe(data: PreparedData) -> dict[str, Any]:
    """Counts and teacher agreement of a prepared file (for the CLI and the report)."""
    out: dict[str, Any] = {"documents": len(data.doc_ids), "teachers": data.teachers, "splits": {}}
    for name, s in data.splits.items():
        n_cand = (s.candidates >= 0).sum(axis=1)
        info = {"doc_field": s.doc_field, "queries": len(s), "examples": s.n_examples,
                "candidates_mean": float(n_cand.mean()), "candidates_max": int(s.candidates.shape[1])}
        q_of = s.example_query()
        for t in data.teachers:
            # how often the teacher puts the positive above every mined candidate
            best_cand = np.nanmax(np.where(s.candidates >= 0, s.cand_scores[t], -np.inf), axis=1)
            info[f"{t}_pos_above_all_candidates"] = float(np.mean(s.pos_scores[t] > best_cand[q_of]))
        out["splits"][name] = info
    return out
