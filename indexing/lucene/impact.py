"""Lucene impact index: integer term impacts searched by Anserini's ImpactSimilarity.

The learned-sparse counterpart of :class:`indexing.sparse.ImpactIndex`, in the index
format Pyserini and Anserini use for SPLADE / uniCOIL (``-impact -pretokenized``). A
document's impact for a term is stored as that term's frequency, and a query is a sum of
weighted term queries, so a score is ``sum(query weight * impact)`` in Lucene's float
arithmetic (each product rounded to float32, the sum taken in double). Give it the same
uint8 impacts as the native index (:func:`indexing.quantize.quantize_uint8`) and the two
agree: exactly when the query weights are small integers (term counts), to float32
rounding of the products otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BundleError, InvalidInputError
from ..fsutil import atomic_write_text
from ..ids import IdTable
from ..results import SearchResults
from ..validation import check_k, check_sparse
from . import jvm
from .base import (CONTENTS, LuceneIndex, build_index, check_query_strings, check_threads, ensure_max_clauses,
                   read_json, read_row_map)
from .collection import check_impacts, check_vocab, write_vector_collection

logger = logging.getLogger(__name__)

VOCAB_FILE = "vocab.json"


class LuceneImpactIndex(LuceneIndex):
    """Exact top-k inner product over integer impacts, in a Lucene index built by Anserini."""

    kind = "lucene-impact"
    metric = "ip"

    def __init__(self, index_dir: Path, ids: IdTable, rows: np.ndarray, settings: dict[str, Any],
                 vocab: list[str]):
        super().__init__(index_dir, ids, rows, settings)
        self.vocab = vocab
        self._keys: np.ndarray | None = None  # JSON-quoted terms, made on first search

    @classmethod
    def build(cls, directory: str | os.PathLike, ids: Sequence[str], impacts, vocab: Sequence[str],
              threads: int = 1) -> "LuceneImpactIndex":
        """Index ``impacts`` (scipy.sparse, n_docs x vocab, non-negative integers) into ``directory``.

        Float weights must be quantised first; rows without any impact are kept as ids but
        cannot be found. ``threads`` Anserini indexing threads.
        """
        threads = check_threads(threads)
        ids = list(ids)
        csr = check_impacts(impacts, len(ids))
        table = IdTable.from_ids(ids, len(ids))
        terms = check_vocab(vocab, csr.shape[1])
        index_dir = build_index(
            directory, lambda folder: write_vector_collection(folder, table.array, csr, terms, threads),
            collection_class="JsonVectorCollection", threads=threads, impact=True, pretokenized=True)
        rows = read_row_map(index_dir, table)
        settings = {"vocab_size": len(terms), "anserini": jvm.anserini_version(jvm.anserini_jar())}
        logger.info("built a Lucene impact index in %s: %d documents (%d with impacts), vocab %d",
                    index_dir, len(table), len(rows), len(terms))
        return cls(index_dir, table, rows, settings, terms)

    def __repr__(self) -> str:
        return f"LuceneImpactIndex(docs={len(self)}, vocab_size={len(self.vocab)}, path={str(self.path)!r})"

    def manifest_fields(self) -> dict[str, Any]:
        return {**super().manifest_fields(), "vocab_size": len(self.vocab)}

    def search(self, queries, k: int, threads: int = 1) -> SearchResults:
        """Top ``k`` documents per row of ``queries`` (scipy.sparse, n_queries x vocab, weights >= 0).

        Scores are Lucene's: the sum over shared terms of float32(weight * impact).
        Ties rank by row. ``threads`` lets Lucene search index segments in parallel.
        """
        k = check_k(k)
        threads = check_threads(threads)
        q = check_sparse(queries, n_cols=len(self.vocab), name="queries")
        if not q.data.all():
            q = q.copy()            # check_sparse may hand back the caller's own matrix
            q.eliminate_zeros()
        bounds = list(zip(q.indptr[:-1].tolist(), q.indptr[1:].tolist()))
        if bool((q.data == 1.0).all()):
            # Every weight is 1 (binary queries, or query weights folded into the impacts):
            # a bag of terms, sent as one string (see search_pretokenized), a fifth of the
            # cost of the JSON below. A CSR row holds each term once, so each weighs 1.
            vocab, indices = self.vocab, q.indices.tolist()
            return self._search_strings([" ".join([vocab[t] for t in indices[lo:hi]]) for lo, hi in bounds],
                                        k, threads)
        searcher = self._impact_searcher(threads)
        java = jvm.start()
        ensure_max_clauses(java, max((hi - lo for lo, hi in bounds), default=0))
        if self._keys is None:
            self._keys = np.array([json.dumps(t, ensure_ascii=False) + ":" for t in self.vocab], dtype=object)
        # Each query crosses into Java as one JSON object {term: weight} that Jackson turns
        # into the Map<String, Float> Anserini's query generator takes; float32 weights
        # print in shortest round-trip form, so Java sees the very same floats.
        terms = self._keys[q.indices] + q.data.astype(str).astype(object)
        reader, generator, _ = _query_tools(java)
        jqueries = [generator.buildQuery(CONTENTS, reader.readValue("{" + ",".join(terms[lo:hi].tolist()) + "}"))
                    if lo < hi else None for lo, hi in bounds]
        return self._run(searcher, jqueries, k)

    def search_pretokenized(self, queries: Sequence[str], k: int, threads: int = 1) -> SearchResults:
        """Top ``k`` documents for queries written as vocabulary terms separated by whitespace,
        each occurrence weighing 1 (Anserini's pretokenized impact queries).

        The cheapest query there is: one string per query, split inside Java by Lucene's
        QueryBuilder into a disjunction of term queries (a repeated term counts twice).
        It suits inference-free encoders whose tokens all weigh 1, binary ones or those whose
        weights were folded into the impacts (``IdfQueryEncoder.pretokenized``). A term
        outside the vocabulary matches nothing; a blank query finds nothing.
        """
        return self._search_strings(check_query_strings(queries, allow_empty=True), check_k(k), check_threads(threads))

    def _search_strings(self, texts: list[str], k: int, threads: int) -> SearchResults:
        """search_pretokenized on checked arguments."""
        searcher = self._impact_searcher(threads)
        java = jvm.start()
        builder = _query_tools(java)[2]
        ensure_max_clauses(java, max(len(t.split()) for t in texts))
        jqueries = [builder.createBooleanQuery(CONTENTS, t) if t and not t.isspace() else None for t in texts]
        return self._run(searcher, jqueries, k)

    def _impact_searcher(self, threads: int):
        return self._searcher(("impact",), _impact_similarity, threads)

    def _save_extra(self, directory: Path) -> list[str]:
        atomic_write_text(directory / VOCAB_FILE, json.dumps(self.vocab, ensure_ascii=False))
        return [VOCAB_FILE]

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "LuceneImpactIndex":
        """Open a saved index (see :meth:`save`): checks its files, starts the JVM, opens Lucene."""
        index_dir, ids, rows, settings = cls._load_parts(directory, mmap)
        vocab = read_json(Path(directory) / VOCAB_FILE)
        if not isinstance(vocab, list) or len(vocab) != settings.get("vocab_size"):
            raise BundleError(f"{Path(directory) / VOCAB_FILE} is not a list of {settings.get('vocab_size')} terms")
        try:
            vocab = check_vocab(vocab, len(vocab))
        except InvalidInputError as e:
            raise BundleError(f"{Path(directory) / VOCAB_FILE}: {e}") from None
        index = cls(index_dir, ids, rows, settings, vocab)
        index.open()
        return index


def _impact_similarity(java: jvm.Java):
    return java.ImpactSimilarity()


def _query_tools(java: jvm.Java) -> tuple:
    """(Jackson reader of JSON into Map<String, Float>, Anserini query generator, Lucene query
    builder over a whitespace analyzer), made once."""
    return java.shared("impact-query", lambda j: (
        j.ObjectMapper().readerForMapOf(j.jclass("java.lang.Float")), j.BagOfWordsQueryGenerator(),
        j.QueryBuilder(j.WhitespaceAnalyzer())))
