"""Lucene BM25 index over raw text, as Pyserini builds its BEIR "flat" indexes.

One field, ``contents`` = title + " " + text, analysed by Anserini's default English
analyzer (Porter stemmer, Lucene's English stopwords); queries go through the same
analyzer and Anserini's bag-of-words query generator, scored by Lucene's BM25Similarity.
That reproduces Pyserini's published BM25 numbers (SciFact NDCG@10 0.679 with k1=0.9,
b=0.4). Ties rank by row rather than by Pyserini's docid order (see :mod:`.base`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import BundleError, InvalidInputError
from ..ids import IdTable
from ..results import SearchResults
from ..validation import check_k
from . import jvm
from .base import (CONTENTS, LuceneIndex, build_index, check_query_strings, check_threads, ensure_max_clauses,
                   read_row_map)
from .collection import write_text_collection

logger = logging.getLogger(__name__)

STEMMERS = ("porter", "krovetz", "none")
_MAX_QUERY_CLAUSES = 1 << 15


class LuceneBM25Index(LuceneIndex):
    """BM25 over analysed text in a Lucene index built by Anserini."""

    kind = "lucene-bm25"
    metric = "bm25"

    def __init__(self, index_dir: Path, ids: IdTable, rows, settings: dict[str, Any]):
        super().__init__(index_dir, ids, rows, settings)
        self._analyzer = None

    @classmethod
    def build(cls, directory: str | os.PathLike, docs: Iterable[tuple[str, str, str]], threads: int = 1, *,
              store_raw: bool = False, stemmer: str = "porter", keep_stopwords: bool = False) -> "LuceneBM25Index":
        """Index ``(id, title, text)`` documents into ``directory`` (new or empty).

        ``store_raw`` keeps each document's JSON in Lucene (off: the bundle's document
        store is the place for text). ``stemmer`` and ``keep_stopwords`` configure the
        analyzer; the defaults are Pyserini's.
        """
        threads = check_threads(threads)
        if stemmer not in STEMMERS:
            raise InvalidInputError(f"stemmer must be one of {STEMMERS}, got {stemmer!r}")
        ids: list[str] = []

        def write(folder: Path) -> int:
            got, written = write_text_collection(folder, docs, threads)
            ids.extend(got)
            IdTable.from_ids(ids)  # refuse duplicate ids before the expensive part
            return written

        index_dir = build_index(directory, write, collection_class="JsonCollection", threads=threads,
                                storeRaw=bool(store_raw), stemmer=stemmer, keepStopwords=bool(keep_stopwords))
        table = IdTable.from_ids(ids)
        rows = read_row_map(index_dir, table)
        settings = {"stemmer": stemmer, "keep_stopwords": bool(keep_stopwords), "store_raw": bool(store_raw),
                    "anserini": jvm.anserini_version(jvm.anserini_jar())}
        logger.info("built a Lucene BM25 index in %s: %d documents (%d with text)", index_dir, len(table), len(rows))
        return cls(index_dir, table, rows, settings)

    def __repr__(self) -> str:
        return f"LuceneBM25Index(docs={len(self)}, path={str(self.path)!r})"

    def manifest_fields(self) -> dict[str, Any]:
        return {**super().manifest_fields(), "stemmer": self._settings["stemmer"],
                "keep_stopwords": self._settings["keep_stopwords"]}

    def search(self, queries: Sequence[str], k: int, k1: float = 0.9, b: float = 0.4,
               threads: int = 1) -> SearchResults:
        """Top ``k`` documents by BM25 for each query string.

        A query whose words are all stopwords finds nothing (a row of padding).
        ``threads`` lets Lucene search index segments in parallel.
        """
        k = check_k(k)
        threads = check_threads(threads)
        texts = check_query_strings(queries)
        k1, b = _check_bm25(k1, b)
        searcher = self._searcher(("bm25", k1, b), lambda java: java.BM25Similarity(k1, b), threads)
        java = jvm.start()
        ensure_max_clauses(java, _MAX_QUERY_CLAUSES)
        analyzer = self._get_analyzer(java)
        generator = java.shared("bag-of-words", lambda j: j.BagOfWordsQueryGenerator())   # stateless: one per JVM
        return self._run(searcher, [generator.buildQuery(CONTENTS, analyzer, t) for t in texts], k)

    def _get_analyzer(self, java: jvm.Java):
        if self._analyzer is None:
            self._analyzer = java.DefaultEnglishAnalyzer.fromArguments(
                self._settings["stemmer"], self._settings["keep_stopwords"], None)
        return self._analyzer

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "LuceneBM25Index":
        """Open a saved index (see :meth:`save`): checks its files, starts the JVM, opens Lucene."""
        index_dir, ids, rows, settings = cls._load_parts(directory, mmap)
        if settings.get("stemmer") not in STEMMERS or not isinstance(settings.get("keep_stopwords"), bool):
            raise BundleError(f"{directory}: invalid analyzer settings {settings}")
        index = cls(index_dir, ids, rows, settings)
        index.open()
        return index


def _check_bm25(k1: float, b: float) -> tuple[float, float]:
    try:
        k1, b = float(k1), float(b)
    except (TypeError, ValueError):
        raise InvalidInputError(f"k1 and b must be numbers, got {k1!r}, {b!r}") from None
    if not math.isfinite(k1) or k1 < 0:
        raise InvalidInputError(f"k1 must be a finite number >= 0, got {k1}")
    if not 0 <= b <= 1:
        raise InvalidInputError(f"b must be in [0, 1], got {b}")
    return k1, b
