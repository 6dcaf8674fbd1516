"""What both Lucene index kinds share: building with Anserini, the row map, search, files.

Rows. Lucene numbers documents itself (and renumbers them when it merges segments), so
each index keeps ``lucene_rows.npy``: Lucene doc number -> our row, read once from the
index after it is built. Results are then mapped with one fancy-index.

Search. pyjnius holds the GIL while Java runs and every Java object handed to Python
costs microseconds, so a hit list must not cross one hit at a time. Each query is one
``IndexSearcher.search`` call, and its ``TopDocs`` comes back as a single JSON string
written by the Jackson library inside Anserini's jar (each ``ScoreDoc`` as a ``[doc,
score]`` array), parsed by Python's C JSON parser. Lucene's float scores print in
shortest round-trip form, so they arrive bit-exact.

Ties. We rank by score, then row, like the native indexes. Lucene breaks ties by its own
doc number; when that order is the row order (one indexing thread and no reordering
merge, checked on the row map) Lucene's top k is ours as it stands. Otherwise we ask for
k+1 hits and, while the last one still ties with the k-th, for more, so that every tied
document competes for the last places.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import BundleError, EmbedxIndexError, FormatVersionError, InvalidInputError
from ..fsutil import atomic_open, atomic_write_text, fsync_dir
from ..ids import IDS_FILE, IdTable
from ..results import SearchResults
from . import jvm

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LUCENE_DIR = "lucene"
SETTINGS_FILE = "lucene.json"
ROWS_FILE = "lucene_rows.npy"
CONTENTS = "contents"  # Anserini's field for indexed text (and impact terms)
_LOCK_FILE = "write.lock"
ID_PAGE = 1 << 17  # documents whose ids cross from Java in one call when reading the row map


# ------------------------------------------------------------------ building
def build_index(directory: str | os.PathLike, write_collection: Callable[[Path], int], *,
                collection_class: str, threads: int, **options: Any) -> Path:
    """Run Anserini's ``IndexCollection`` into ``directory`` (new or empty), atomically.

    ``write_collection(folder)`` writes the input files and returns how many documents it
    wrote. The collection and the half-built index live in a temporary sibling of
    ``directory``, which is renamed into place only when indexing succeeded.
    ``options`` are fields of ``IndexCollection.Args`` (``impact``, ``storeRaw``...).
    """
    target = Path(os.path.abspath(directory))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInputError(f"cannot build a Lucene index in {target}: it exists and is not an empty folder")
    threads = check_threads(threads)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (work / "collection").mkdir()
        n_docs = write_collection(work / "collection")
        if n_docs == 0:
            raise InvalidInputError("nothing to index: every document is empty")
        java = jvm.start()
        args = java.IndexCollectionArgs()
        args.collectionClass = collection_class
        args.generatorClass = "DefaultLuceneDocumentGenerator"
        args.input = str(work / "collection")
        args.index = str(work / "index")
        args.threads = threads
        args.quiet = not logger.isEnabledFor(logging.DEBUG)
        for name, value in options.items():
            setattr(args, name, value)
        indexer = java.IndexCollection(args)
        indexer.run()
        counters = indexer.getCounters()
        indexed, errors = counters.indexed.get(), counters.errors.get() + counters.unindexable.get()
        if errors or indexed + counters.empty.get() + counters.skipped.get() != n_docs:
            raise EmbedxIndexError(f"Anserini indexed {indexed} of {n_docs} documents ({errors} errors); "
                                   f"run with DEBUG logging to see its log")
        shutil.rmtree(work / "collection")
        if target.exists():
            target.rmdir()
        os.replace(work / "index", target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def read_row_map(index_dir: Path, ids: IdTable) -> np.ndarray:
    """Lucene doc number -> row in ``ids``, read from the index's stored ``id`` field."""
    java = jvm.start()
    reader = open_reader(java, index_dir)
    try:
        n = reader.maxDoc()
        doc_ids, lucene = _stored_ids(java, reader)
    finally:
        reader.close()
    table = np.asarray(ids.array)
    order = np.argsort(table, kind="stable")
    pos = np.minimum(np.searchsorted(table[order], doc_ids), max(len(table) - 1, 0))
    if len(lucene) != n or (n and not (table[order][pos] == doc_ids).all()):
        raise EmbedxIndexError(f"the Lucene index in {index_dir} does not hold the documents it was given")
    rows = np.full(n, -1, dtype=np.int64)
    rows[lucene] = order[pos]
    if (rows < 0).any() or len(np.unique(rows)) != n:
        raise EmbedxIndexError(f"the Lucene index in {index_dir} holds some document twice")
    return rows


def _stored_ids(java: jvm.Java, reader) -> tuple[np.ndarray, np.ndarray]:
    """(external id, Lucene doc number) of every document, a page of ``ID_PAGE`` per Java call.

    Every document matches ``MatchAllDocsQuery`` with score 1, so pages come in doc-number
    order and ``searchAfter`` the last one continues where a page ended.
    """
    searcher = java.IndexSearcher(reader, signature="(Lorg/apache/lucene/index/IndexReader;)V")
    query = java.MatchAllDocsQuery()
    ids, docs, after = [], [], None
    while True:
        top = searcher.search(query, ID_PAGE) if after is None else searcher.searchAfter(after, query, ID_PAGE)
        page = java.ScoredDocs.fromTopDocs(top, searcher)
        lucene = np.asarray(page.lucene_docids, dtype=np.int64)
        if len(lucene):
            ids.append(np.asarray(page.docids, dtype=str))
            docs.append(lucene)
        if len(lucene) < ID_PAGE:
            break
        after = java.ScoreDoc(int(lucene[-1]), 1.0)
    if not docs:
        return np.empty(0, dtype=str), np.empty(0, dtype=np.int64)
    return np.concatenate(ids), np.concatenate(docs)


def open_reader(java: jvm.Java, index_dir: Path):
    path = java.File(str(index_dir)).toPath()
    return java.DirectoryReader.open(java.FSDirectory.open(path))


def check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


# ------------------------------------------------------------------ hits
class HitsDecoder:
    """``TopDocs`` -> (Lucene doc numbers, float32 scores) through one JSON string."""

    def __init__(self, java: jvm.Java):
        mapper = java.ObjectMapper()
        score_doc = mapper.configOverride(java.jclass("org.apache.lucene.search.ScoreDoc"))
        score_doc.setFormat(java.JsonFormatValue.forShape(java.JsonFormatShape.ARRAY))  # no key names
        unused = java.HashSet()
        unused.add("shardIndex")
        score_doc.setIgnorals(java.JsonIgnoreValue.forIgnoredProperties(unused))
        self._mapper = mapper
        # Which array slot holds what is up to Jackson's property order: ask it once.
        probe = np.array(json.loads(mapper.writeValueAsString(java.ScoreDoc(7, 0.5, 3))))
        if sorted(probe.tolist()) != [0.5, 7]:
            raise EmbedxIndexError(f"unexpected ScoreDoc encoding {probe.tolist()} from Jackson")
        self._doc_col = int(np.flatnonzero(probe == 7)[0])
        self._score_col = int(np.flatnonzero(probe == 0.5)[0])

    def __call__(self, top_docs) -> tuple[np.ndarray, np.ndarray]:
        hits = json.loads(self._mapper.writeValueAsString(top_docs))["scoreDocs"]
        if not hits:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        table = np.array(hits, dtype=np.float64)  # doc numbers < 2**31 and float32 scores are exact
        return table[:, self._doc_col].astype(np.int64), table[:, self._score_col].astype(np.float32)


def hits_decoder(java: jvm.Java) -> HitsDecoder:
    return java.shared(HitsDecoder, HitsDecoder)


def ensure_max_clauses(java: jvm.Java, n: int) -> None:
    """Lift Lucene's (JVM-wide) limit on query clauses to at least ``n``.

    The limit last seen is remembered, so a search below it makes no JNI call.
    """
    if n <= java.__dict__.get("_max_clauses", 0):
        return
    current = java.IndexSearcher.getMaxClauseCount()
    if n > current:
        java.IndexSearcher.setMaxClauseCount(int(n))
        current = int(n)
    java._max_clauses = current


def check_query_strings(queries: Sequence[str], allow_empty: bool = False) -> list[str]:
    """A non-empty batch of query strings (``allow_empty``: a blank one finds nothing), or a clear error."""
    if isinstance(queries, (str, bytes)):
        raise InvalidInputError("queries must be a sequence of strings, not a single string")
    texts = list(queries)
    if not texts:
        raise InvalidInputError("no queries given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidInputError(f"query {i} must be a string, got {type(t).__name__}")
        if not allow_empty and not t.strip():
            raise InvalidInputError(f"query {i} is empty")
    return texts


# ------------------------------------------------------------------ the index
class LuceneIndex:
    """Shared machinery; subclasses add building, query parsing and their settings."""

    kind = ""
    metric = ""

    def __init__(self, index_dir: Path, ids: IdTable, rows: np.ndarray, settings: dict[str, Any]):
        """Wrap a built or loaded index; use ``build`` or ``load`` instead."""
        self.ids = ids
        self._index_dir = Path(index_dir)
        self._rows = rows
        # Lucene breaks ties by its doc number; when that order is the row order (one
        # indexing thread, no reordering merge) its top k is already ours.
        self._rows_in_order = bool(np.all(np.diff(rows) > 0))
        self._settings = settings
        self._lock = threading.Lock()
        self._reader = None
        self._searchers: dict[tuple, Any] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lucene_docs(self) -> int:
        """Documents inside Lucene (those with any content); ``len(self)`` counts every id."""
        return len(self._rows)

    @property
    def path(self) -> Path:
        """The folder holding the Lucene files this object searches."""
        return self._index_dir

    def close(self) -> None:
        """Release the Lucene reader (the next search reopens it)."""
        with self._lock:
            reader, self._reader = self._reader, None
            self._searchers.clear()
        if reader is not None:
            reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Open the Lucene reader now (starting the JVM); searches open it when needed.

        :meth:`load` calls this, so a loaded index holds its files open and keeps working
        if a newer bundle version replaces (and deletes) the folder it was read from.
        """
        java = jvm.start()
        with self._lock:
            self._open_locked(java)

    def _open_locked(self, java: jvm.Java) -> None:
        if self._reader is not None:
            return
        reader = open_reader(java, self._index_dir)
        if reader.maxDoc() != len(self._rows):
            reader.close()
            raise BundleError(f"the Lucene index in {self._index_dir} holds {reader.maxDoc()} documents, "
                              f"its row map {len(self._rows)}")
        self._reader = reader

    # -------------------------------------------------------------- search
    def _searcher(self, key: tuple, similarity: Callable[[jvm.Java], Any], threads: int):
        """A cached IndexSearcher per (similarity key, threads); opens the reader on first use.

        ``threads > 1`` lets Lucene search the index's segments in parallel for each query
        (pyjnius holds the GIL, so queries themselves run one after another).
        """
        java = jvm.start()
        with self._lock:
            self._open_locked(java)
            searcher = self._searchers.get((key, threads))
            if searcher is None:
                if threads == 1:
                    searcher = java.IndexSearcher(self._reader, signature="(Lorg/apache/lucene/index/IndexReader;)V")
                else:
                    searcher = java.IndexSearcher(
                        self._reader, java.pool(threads),
                        signature="(Lorg/apache/lucene/index/IndexReader;Ljava/util/concurrent/Executor;)V")
                searcher.setSimilarity(similarity(java))
                self._searchers[(key, threads)] = searcher
            return searcher

    def _run(self, searcher, queries: list, k: int) -> SearchResults:
        """Search each Java query (None: no terms, no hits); rank by score then row."""
        decode = hits_decoder(jvm.start())
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for i, query in enumerate(queries):
            if query is None:
                continue
            docs, sc = self._top(searcher, query, k, decode)
            r = self._rows[docs]
            best = np.lexsort((r, -sc))[:k]
            rows[i, :len(best)] = r[best]
            scores[i, :len(best)] = sc[best]
        return SearchResults.from_rows(rows, scores, np.asarray(self.ids.array))

    def _top(self, searcher, query, k: int, decode: HitsDecoder) -> tuple[np.ndarray, np.ndarray]:
        """Lucene's top k; when its doc order is not row order, every hit tied with the k-th too."""
        exact_ties, limit = not self._rows_in_order, len(self._rows)
        n = min(k + exact_ties, limit)
        while n > 0:
            docs, scores = decode(searcher.search(query, n))
            if not exact_ties or len(docs) < n or n == limit or scores[-1] < scores[k - 1]:
                return docs, scores
            n = min(2 * n, limit)
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)

    # -------------------------------------------------------------- files
    def manifest_fields(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "count": len(self), "lucene_docs": self.lucene_docs,
                "engine": f"anserini-{self._settings.get('anserini', 'unknown')}"}

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Copy the Lucene files to ``directory/lucene/`` and write ids, row map and settings.

        Every file is written atomically; returns the relative paths of all of them.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"cannot save the Lucene index: {directory} is not a directory")
        dst = directory / LUCENE_DIR
        files = sorted(p for p in self._index_dir.iterdir() if p.is_file() and p.name != _LOCK_FILE)
        same = dst.exists() and dst.resolve() == self._index_dir.resolve()
        if not same:
            if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
                raise InvalidInputError(f"{dst} already holds files; save a Lucene index into a fresh folder")
            dst.mkdir(exist_ok=True)
            for src in files:
                with open(src, "rb") as fin, atomic_open(dst / src.name, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        names = [f"{LUCENE_DIR}/{p.name}" for p in files]
        names.append(self.ids.save(directory))
        with atomic_open(directory / ROWS_FILE, "wb") as f:
            np.save(f, np.asarray(self._rows, dtype=np.int64), allow_pickle=False)
        names.append(ROWS_FILE)
        names += self._save_extra(directory)
        settings = {"format_version": FORMAT_VERSION, "kind": self.kind, "count": len(self),
                    "lucene_docs": self.lucene_docs, **self._settings}
        atomic_write_text(directory / SETTINGS_FILE, json.dumps(settings, indent=2, ensure_ascii=False))
        names.append(SETTINGS_FILE)
        return names

    def _save_extra(self, directory: Path) -> list[str]:
        return []

    @classmethod
    def _load_parts(cls, directory: str | os.PathLike, mmap: bool) -> tuple[Path, IdTable, np.ndarray, dict]:
        """Read and check what :meth:`save` wrote; the JVM is not started."""
        directory = Path(directory)
        settings = read_json(directory / SETTINGS_FILE)
        if not isinstance(settings, dict):
            raise BundleError(f"{directory / SETTINGS_FILE} is not a JSON object")
        version = settings.pop("format_version", None)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatVersionError(f"Lucene index format version {version!r}; this code reads <= {FORMAT_VERSION}")
        kind = settings.pop("kind", None)
        if kind != cls.kind:
            raise BundleError(f"{directory} holds a {kind!r} index, not {cls.kind!r}")
        count, lucene_docs = settings.pop("count", None), settings.pop("lucene_docs", None)
        index_dir = directory / LUCENE_DIR
        if not index_dir.is_dir() or not any(p.name.startswith("segments_") for p in index_dir.iterdir()):
            raise BundleError(f"{index_dir} is not a Lucene index")
        try:
            ids = IdTable.load(directory, mmap=mmap)
            rows = np.load(directory / ROWS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read {directory / IDS_FILE} or {directory / ROWS_FILE}: {e}") from e
        if len(ids) != count or rows.shape != (lucene_docs,) or rows.dtype != np.int64:
            raise BundleError(f"{directory}: {len(ids)} ids and a row map of shape {rows.shape} ({rows.dtype}) "
                              f"do not match the settings ({count} documents, {lucene_docs} in Lucene)")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(ids)):
            raise BundleError(f"{directory / ROWS_FILE} points outside the id table")
        return index_dir, ids, rows, settings


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"missing {path}") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {path}: {e}") from e
