"""Lexical term weighting: a small analyzer and BM25 written as document impact weights.

Folding BM25's idf and term-frequency saturation into each document's term weights turns
BM25 into an impact index whose queries are plain bags of words (weight = count). The
native sparse index and the Lucene impact backend then serve it exactly like a learned
sparse model, which is why the demo and the parity benchmark use it: real weights, no
model, nothing to download.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from indexing.fsutil import atomic_write_text

# A short English stopword list (Lucene's classic default set).
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
_TOKEN = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Analyzer:
    """Lowercase, split on non-word characters, drop stopwords and over-long tokens."""

    stopwords: frozenset[str] = STOPWORDS
    max_token_length: int = 64

    def __call__(self, text: str) -> list[str]:
        return [t for t in _TOKEN.findall(text.lower())
                if t not in self.stopwords and len(t) <= self.max_token_length]


@dataclass
class Vocabulary:
    """Term <-> column id of the sparse matrices."""

    terms: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._index = {t: i for i, t in enumerate(self.terms)}

    @classmethod
    def from_documents(cls, token_lists: Iterable[Sequence[str]]) -> "Vocabulary":
        seen: dict[str, None] = {}
        for tokens in token_lists:
            seen.update(dict.fromkeys(tokens))
        return cls(sorted(seen))

    def __len__(self) -> int:
        return len(self.terms)

    def get(self, term: str) -> int | None:
        return self._index.get(term)


def term_counts(token_lists: Sequence[Sequence[str]], vocab: Vocabulary) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for r, tokens in enumerate(token_lists):
        counts = Counter(i for i in map(vocab.get, tokens) if i is not None)
        rows.extend([r] * len(counts))
        cols.extend(counts.keys())
        vals.extend(counts.values())
    m = sp.csr_matrix((np.asarray(vals, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
                      shape=(len(token_lists), len(vocab)))
    m.sort_indices()
    return m


@dataclass
class BM25Weighting:
    """BM25 (Robertson et al.) with Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)), as impacts.

    ``w(t, d) = idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))`` and a query
    is the count of each of its terms, so ``q . w_d`` is the BM25 score of d.
    """

    k1: float = 0.9
    b: float = 0.4
    analyzer: Analyzer = field(default_factory=Analyzer)
    vocab: Vocabulary = field(default_factory=Vocabulary)
    idf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def fit_transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Learn the vocabulary and idf from ``texts`` and return their impact matrix."""
        tokens = [self.analyzer(t) for t in tqdm(texts, desc="tokenize", unit="doc", disable=None,
                                                  leave=False, mininterval=1.0)]
        self.vocab = Vocabulary.from_documents(tokens)
        tf = term_counts(tokens, self.vocab)
        n_docs = tf.shape[0]
        df = np.bincount(tf.indices, minlength=len(self.vocab)).astype(np.float64)
        self.idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        lengths = np.asarray(tf.sum(axis=1)).ravel()
        avgdl = lengths.mean() if n_docs else 1.0
        norm = self.k1 * (1 - self.b + self.b * lengths / max(avgdl, 1e-9))
        row_of = np.repeat(np.arange(n_docs), np.diff(tf.indptr))
        t = tf.data.astype(np.float64)
        tf.data = (self.idf[tf.indices] * t * (self.k1 + 1) / (t + norm[row_of])).astype(np.float32)
        return tf

    def queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Query matrix (term counts over the fitted vocabulary; unknown terms dropped)."""
        return term_counts([self.analyzer(t) for t in texts], self.vocab)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"type": "bm25", "k1": self.k1, "b": self.b,
                                            "stopwords": sorted(self.analyzer.stopwords),
                                            "vocab": self.vocab.terms, "idf": self.idf.tolist()}))

    @classmethod
    def load(cls, path: str | Path) -> "BM25Weighting":
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
        if cfg.get("type") != "bm25":
            raise ValueError(f"{path}: not a BM25 weighting file (type={cfg.get('type')!r})")
        return cls(k1=cfg["k1"], b=cfg["b"], analyzer=Analyzer(frozenset(cfg["stopwords"])),
                   vocab=Vocabulary(cfg["vocab"]), idf=np.asarray(cfg["idf"], np.float32))
