"""The prepared training file and the batches drawn from it.

``embedx sparse prepare`` writes ONE self-contained ``.npz`` (no pickle): per split
(``unsupervised``: title -> abstract pairs from the corpus itself; ``supervised``: training
queries and their judged positives) the query texts, each query's positive documents, its
mined candidates (hard-negative pool, positives removed) and every teacher's raw score for
each positive and each candidate. Documents are referred to by row in ``doc_ids``; the text
comes from the corpus, in the split's ``doc_field`` (``text``: the abstract alone, or
``title_text``: title and abstract as evaluation sees them).

Training reads only this file and the corpus: no index, no teacher model.
Teacher scores are stored raw; the ensemble is normalised per query over the candidates a
step actually samples (as the released code does on the fly).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1
DOC_FIELDS = ("text", "title_text")


class PreparedDataError(ValueError):
    """A prepared training file that is missing, malformed or does not match the corpus."""


@dataclass
class PreparedSplit:
    doc_field: str                       # how documents read in this split: "text" | "title_text"
    query_ids: np.ndarray                # (n_q,) str
    query_texts: np.ndarray              # (n_q,) str
    pos_ptr: np.ndarray                  # (n_q + 1,) int64: positives of query i are pos_docs[ptr[i]:ptr[i+1]]
    pos_docs: np.ndarray                 # (n_pos,) int32 rows of doc_ids
    candidates: np.ndarray               # (n_q, C) int32 rows of doc_ids, -1 padded, best first
    pos_scores: dict[str, np.ndarray] = field(default_factory=dict)    # teacher -> (n_pos,) float32
    cand_scores: dict[str, np.ndarray] = field(default_factory=dict)   # teacher -> (n_q, C) float32, NaN pad

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def n_examples(self) -> int:
        """(query, positive) pairs: one training example each."""
        return len(self.pos_docs)

    def example_query(self) -> np.ndarray:
        """The query row of every example."""
        return np.repeat(np.arange(len(self)), np.diff(self.pos_ptr))

    def positives(self, q: int) -> np.ndarray:
        return self.pos_docs[self.pos_ptr[q]:self.pos_ptr[q + 1]]


@dataclass
class PreparedData:
    doc_ids: np.ndarray                  # (n_docs,) str, the corpus order used by every split
    splits: dict[str, PreparedSplit]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def teachers(self) -> list[str]:
        names = None
        for s in self.splits.values():
            have = set(s.pos_scores)
            names = have if names is None else names & have
        return sorted(names or ())

    def docs_hash(self) -> str:
        return ids_hash(self.doc_ids)

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from indexing.fsutil import atomic_open

        path = Path(path)
        arrays: dict[str, np.ndarray] = {"doc_ids": np.asarray(self.doc_ids, dtype=str)}
        meta = {**self.meta, "format_version": FORMAT_VERSION, "splits": {}, "docs_hash": self.docs_hash()}
        for name, s in self.splits.items():
            _check_split(name, s, len(self.doc_ids))
            meta["splits"][name] = {"doc_field": s.doc_field, "queries": len(s), "examples": s.n_examples,
                                    "candidates": int(s.candidates.shape[1]), "teachers": sorted(s.pos_scores)}
            p = f"{name}."
            arrays[p + "query_ids"] = np.asarray(s.query_ids, dtype=str)
            arrays[p + "query_texts"] = np.asarray(s.query_texts, dtype=str)
            arrays[p + "pos_ptr"] = s.pos_ptr.astype(np.int64)
            arrays[p + "pos_docs"] = s.pos_docs.astype(np.int32)
            arrays[p + "candidates"] = s.candidates.astype(np.int32)
            for t in s.pos_scores:
                arrays[f"{p}pos_scores.{t}"] = s.pos_scores[t].astype(np.float32)
                arrays[f"{p}cand_scores.{t}"] = s.cand_scores[t].astype(np.float32)
        arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb", encoding=None) as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        path = Path(path)
        if not path.is_file():
            raise PreparedDataError(f"no prepared training file at {path} (make one with `embedx sparse prepare`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise PreparedDataError(f"{path}: not a readable prepared file ({e})") from None
        if "meta" not in arrays or "doc_ids" not in arrays:
            raise PreparedDataError(f"{path}: not a prepared training file (no meta / doc_ids)")
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format_version") != FORMAT_VERSION:
            raise PreparedDataError(f"{path}: format version {meta.get('format_version')}, "
                                    f"this code reads {FORMAT_VERSION}")
        doc_ids = arrays.pop("doc_ids")
        splits = {}
        for name, info in meta["splits"].items():
            p = f"{name}."
            try:
                split = PreparedSplit(
                    doc_field=info["doc_field"], query_ids=arrays[p + "query_ids"],
                    query_texts=arrays[p + "query_texts"], pos_ptr=arrays[p + "pos_ptr"],
                    pos_docs=arrays[p + "pos_docs"], candidates=arrays[p + "candidates"],
                    pos_scores={t: arrays[f"{p}pos_scores.{t}"] for t in info["teachers"]},
                    cand_scores={t: arrays[f"{p}cand_scores.{t}"] for t in info["teachers"]})
            except KeyError as e:
                raise PreparedDataError(f"{path}: split {name!r} lacks the array {e}") from None
            _check_split(name, split, len(doc_ids), where=str(path))
            splits[name] = split
        data = cls(doc_ids=doc_ids, splits=splits, meta=meta)
        if meta.get("docs_hash") != data.docs_hash():
            raise PreparedDataError(f"{path}: its document ids do not match its recorded hash (damaged file?)")
        return data

    # -- documents ----------------------------------------------------------------------
    def doc_texts(self, corpus: Mapping[str, Mapping], doc_field: str) -> list[str]:
        """The text of every row of ``doc_ids`` as the split's ``doc_field`` reads it."""
        from embedx.retrieval import doc_text

        missing = [d for d in self.doc_ids.tolist() if d not in corpus]
        if missing:
            raise PreparedDataError(f"the corpus lacks {len(missing)} document(s) of the prepared file, e.g. "
                                    f"{missing[:3]}: was it prepared from another corpus?")
        if doc_field == "text":
            return [corpus[d].get("text", "") for d in self.doc_ids.tolist()]
        if doc_field == "title_text":
            return [doc_text(corpus[d]) for d in self.doc_ids.tolist()]
        raise PreparedDataError(f"unknown doc_field {doc_field!r}; expected one of {DOC_FIELDS}")


def ids_hash(ids) -> str:
    h = hashlib.sha256()
    for i in np.asarray(ids, dtype=str).tolist():
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _check_split(name: str, s: PreparedSplit, n_docs: int, where: str = "prepared data") -> None:
    def fail(msg: str) -> None:
        raise PreparedDataError(f"{where}: split {name!r}: {msg}")

    n_q = len(s.query_ids)
    if s.doc_field not in DOC_FIELDS:
        fail(f"doc_field must be one of {DOC_FIELDS}, got {s.doc_field!r}")
    if len(s.query_texts) != n_q or s.pos_ptr.shape != (n_q + 1,):
        fail("query ids, texts and pos_ptr disagree in length")
    if s.pos_ptr[0] != 0 or s.pos_ptr[-1] != len(s.pos_docs) or (np.diff(s.pos_ptr) < 1).any():
        fail("pos_ptr must start at 0, end at len(pos_docs) and give every query a positive")
    if s.candidates.ndim != 2 or s.candidates.shape[0] != n_q:
        fail(f"candidates must be (n_queries, C), got {s.candidates.shape}")
    for arr, what in ((s.pos_docs, "pos_docs"), (s.candidates[s.candidates >= 0], "candidates")):
        if arr.size and (arr.min() < 0 or arr.max() >= n_docs):
            fail(f"{what} refer to rows outside the {n_docs} documents")
    if (s.candidates < -1).any():
        fail("candidates are padded with -1 only")
    if set(s.pos_scores) != set(s.cand_scores):
        fail("every teacher needs positive and candidate scores")
    for t in s.pos_scores:
        if s.pos_scores[t].shape != s.pos_docs.shape or s.cand_scores[t].shape != s.candidates.shape:
            fail(f"teacher {t!r}: score arrays do not match pos_docs / candidates in shape")
        if not np.isfinite(s.pos_scores[t]).all() or not np.isfinite(s.cand_scores[t][s.candidates >= 0]).all():
            fail(f"teacher {t!r}: scores of real documents must be finite")


# ---------------------------------------------------------------- batches
@dataclass
class Batch:
    queries: np.ndarray       # (B,) query rows of the split
    docs: np.ndarray          # (B, 1 + n) doc rows: positive first, then hard negatives (-1 = none)
    valid: np.ndarray         # (B, 1 + n) bool
    teacher: dict[str, np.ndarray]   # teacher -> (B, 1 + n) raw scores (NaN where not valid)


class StageSampler:
    """Seeded batches of (query, positive, hard negatives): examples in a random order that is
    reshuffled each epoch; negatives drawn without replacement among the query's candidates
    (the first ``neg_pool`` of them when given). Its state is JSON (checkpoints resume exactly)."""

    def __init__(self, split: PreparedSplit, batch_size: int, negatives: int, *, seed: int,
                 neg_pool: int | None = None, teachers: list[str] = ()):
        self.split = split
        self.batch_size = batch_size
        self.negatives = negatives
        self.neg_pool = neg_pool
        self.teachers = list(teachers)
        missing = [t for t in self.teachers if t not in split.pos_scores]
        if missing:
            raise PreparedDataError(f"the prepared file has no scores of teacher(s) {missing}; "
                                    f"it has {sorted(split.pos_scores)}")
        self.example_query = split.example_query()
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(split.n_examples)
        self.cursor = 0
        self.epoch = 0
        n_valid = (split.candidates >= 0).sum(axis=1)
        if negatives and (n_valid == 0).any():
            raise PreparedDataError(f"{int((n_valid == 0).sum())} queries have no candidates to draw negatives from")

    def _next_examples(self) -> np.ndarray:
        out = []
        need = self.batch_size
        while need:
            if self.cursor >= len(self.order):
                self.order = self.rng.permutation(self.split.n_examples)
                self.cursor = 0
                self.epoch += 1
            take = self.order[self.cursor:self.cursor + need]
            self.cursor += len(take)
            need -= len(take)
            out.append(take)
        return np.concatenate(out)

    def next_batch(self) -> Batch:
        s = self.split
        ex = self._next_examples()
        q = self.example_query[ex]
        g = 1 + self.negatives
        docs = np.full((len(ex), g), -1, dtype=np.int64)
        docs[:, 0] = s.pos_docs[ex]
        cand_col = np.full((len(ex), max(g - 1, 0)), -1, dtype=np.int64)
        for i, qi in enumerate(q):
            pool = np.flatnonzero(s.candidates[qi] >= 0)
            if self.neg_pool is not None:
                pool = pool[:self.neg_pool]
            if self.negatives and len(pool):
                pick = self.rng.choice(pool, size=min(self.negatives, len(pool)), replace=False)
                cand_col[i, :len(pick)] = pick
        has = cand_col >= 0
        docs[:, 1:][has] = s.candidates[np.repeat(q, g - 1).reshape(-1, g - 1)[has], cand_col[has]]
        valid = docs >= 0
        teacher = {}
        for t in self.teachers:
            sc = np.full((len(ex), g), np.nan, dtype=np.float32)
            sc[:, 0] = s.pos_scores[t][ex]
            rows = np.repeat(q, g - 1).reshape(-1, g - 1)
            sc[:, 1:][has] = s.cand_scores[t][rows[has], cand_col[has]]
            teacher[t] = sc
        return Batch(queries=q, docs=docs, valid=valid, teacher=teacher)

    # -- checkpoint state ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "cursor": self.cursor,
                "epoch": self.epoch}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"], dtype=np.int64)
        self.cursor = int(state["cursor"])
        self.epoch = int(state["epoch"])
