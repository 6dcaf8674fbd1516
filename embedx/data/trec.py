"""TREC run files (``qid Q0 docid rank score tag``) and TREC qrels (``qid iter docid grade``).

These are the formats trec_eval, Pyserini and most IR papers exchange. Columns are separated
by any whitespace, so ids and tags may not contain whitespace; the writers refuse such ids
rather than write a file that reads back differently. Plain or ``.gz`` files both work.

Within a query, :func:`write_run` orders hits by score (high first) and breaks ties by doc
id in *descending* order: that is the order trec_eval itself uses to rank tied scores, so
the rank column of the file agrees with how every trec_eval-style tool will read it, and
a ``depth`` cut keeps the same tied documents that trec_eval would.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Mapping

from .beir import add_judgement
from .errors import DataFormatError, integer_grade
from .jsonl import iter_lines, open_text_writer

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def _check_token(value: object, what: str, path: Path) -> str:
    if type(value) is not str or not value or len(value.split()) != 1 or value.strip() != value:
        raise DataFormatError(f"{what} {value!r} must be a non-empty string without whitespace "
                              "(TREC files are whitespace-separated)", path)
    return value


def trec_order(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(doc id, score)`` pairs best first, ties broken by doc id descending (trec_eval's order)."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def write_run(path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "embedx",
              depth: int | None = None) -> int:
    """Write a run as a 6-column TREC file (atomically); returns the number of lines.

    Queries keep the mapping's order; ``depth`` keeps the best ``depth`` hits of each query.
    Scores are written with ``repr`` so they read back bit-exact, and must be finite.
    """
    path = Path(path)
    _check_token(tag, "run tag", path)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1):
        raise ValueError(f"depth must be a positive integer or None, got {depth!r}")
    lines = 0
    with open_text_writer(path) as f:
        for qid, docs in run.items():
            _check_token(qid, "query id", path)
            ranked = trec_order({d: float(s) for d, s in docs.items()})
            if depth is not None:
                ranked = ranked[:depth]
            for rank, (doc_id, score) in enumerate(ranked, 1):
                _check_token(doc_id, "document id", path)
                if not math.isfinite(score):
                    raise DataFormatError(f"query {qid!r}, document {doc_id!r}: score {score} is not finite", path)
                f.write(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n")
            lines += len(ranked)
    return lines


def read_run(path: str | os.PathLike) -> Run:
    """Query id -> {doc id: score} from a 6-column TREC run file (rank and tag are not kept).

    The score column decides the order, as in trec_eval. A document listed twice for one
    query is an error (trec_eval refuses it too).
    """
    path = Path(path)
    run: Run = {}
    for lineno, text in iter_lines(path):
        cols = text.split()
        if not cols:
            continue
        if len(cols) != 6:
            raise DataFormatError(f"expected 6 columns (qid Q0 docid rank score tag), got {len(cols)}",
                                  path, lineno)
        qid, _, doc_id, rank, score_text, _ = cols
        try:
            int(rank)
        except ValueError:
            raise DataFormatError(f"rank must be an integer, got {rank!r}", path, lineno) from None
        try:
            score = float(score_text)
        except ValueError:
            raise DataFormatError(f"score must be a number, got {score_text!r}", path, lineno) from None
        if math.isnan(score):
            raise DataFormatError("score is NaN", path, lineno)
        docs = run.setdefault(qid, {})
        if doc_id in docs:
            raise DataFormatError(f"document {doc_id!r} listed twice for query {qid!r}", path, lineno)
        docs[doc_id] = score
    return run


def read_qrels_trec(path: str | os.PathLike) -> Qrels:
    """Query id -> {doc id: integer grade} from a 4-column TREC qrels file (the iteration column is ignored)."""
    path = Path(path)
    qrels: Qrels = {}
    for lineno, text in iter_lines(path):
        cols = text.split()
        if not cols:
            continue
        if len(cols) != 4:
            raise DataFormatError(f"expected 4 columns (qid iter docid grade), got {len(cols)}", path, lineno)
        qid, _, doc_id, grade = cols
        add_judgement(qrels, qid, doc_id, grade, path, lineno)
    return qrels


def write_qrels_trec(path: str | os.PathLike, qrels: Mapping[str, Mapping[str, int]]) -> int:
    """Write ``qid 0 docid grade`` lines (atomically); returns the number of judgements."""
    path = Path(path)
    n = 0
    with open_text_writer(path) as f:
        for qid, docs in qrels.items():
            _check_token(qid, "query id", path)
            for doc_id, grade in docs.items():
                _check_token(doc_id, "document id", path)
                grade = integer_grade(qid, doc_id, grade, path)
                f.write(f"{qid} 0 {doc_id} {grade}\n")
                n += 1
    return n
