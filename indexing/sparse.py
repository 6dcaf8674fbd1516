"""Native learned-sparse impact index: term-major postings in numpy, exact top-k by inner product.

Why native: a learned-sparse query has a few dozen terms, so scoring touches only their
postings. Gathering them (whole-range copies, or one vectorised fancy-index for short
lists), summing per document with ``np.bincount`` and selecting the top k with one
partition over unique (score, row) integer keys needs no JVM round trip, and the posting
arrays memory-map straight out of a bundle. With ``quantize="uint8"`` the index keeps the very integer impacts that the
Lucene backend indexes (see :mod:`indexing.quantize`), so the two engines can be compared
score for score.

Storage is the CSC layout of the (documents x vocabulary) matrix: ``indptr`` (int64,
vocab+1), document ``rows`` (int32) and ``weights`` (float32, or uint8 impacts).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from .errors import BundleError, FormatVersionError, InvalidInputError
from .fsutil import atomic_open, atomic_write_text
from .ids import IDS_FILE, IdTable
from .quantize import dequantize_uint8, quantize_uint8
from .results import SearchResults
from .validation import check_k, check_sparse

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SETTINGS_FILE = "sparse.json"
INDPTR_FILE = "postings_indptr.npy"
ROWS_FILE = "postings_rows.npy"
WEIGHTS_FILE = "postings_weights.npy"
VOCAB_FILE = "vocab.json"
QUANTIZE_MODES = (None, "uint8")
SparseMatrix = sp.spmatrix | sp.sparray  # rows x vocabulary term ids

# Work limits for one chunk of a query batch, tuned on SciFact-sized data (5k docs, 30k
# vocabulary): small chunks keep the gathered postings and score cells in cache. A chunk
# accumulates into a dense (queries x documents) block of cells when that block is small
# (_DENSE_CELLS) or not much larger than the postings it sums (_DENSE_PER_POSTING); else
# it accumulates only the touched documents (sort-based), so a light query on a huge
# corpus never allocates and scans a corpus-sized array. Both ways sum each document's
# postings in the same order, in float64, so they give bit-identical scores.
_DENSE_CELLS = 1 << 16
_DENSE_PER_POSTING = 16
_MAX_POSTINGS = 1 << 17
_SLICE_PER_TERM = 256  # mean postings per term from which gathering copies whole ranges
_INF_BITS = int(np.array(np.inf, dtype=np.float32).view(np.int32))


class ImpactIndex:
    """Exact top-k inner-product search over non-negative sparse document vectors."""

    kind = "sparse"

    def __init__(self, ids: IdTable, indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray,
                 *, vocab_size: int, quantize: str | None = None, scale: float | None = None,
                 vocab: list[str] | None = None):
        """Wrap already-validated postings; use :meth:`build` or :meth:`load` instead."""
        self.ids = ids
        self._indptr = indptr
        self._rows = rows
        self._weights = weights
        self.vocab_size = int(vocab_size)
        self.quantize = quantize
        self.scale = scale
        self.vocab = vocab
        self._term_ids: dict[str, int] | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, ids: Sequence[str], docs: SparseMatrix, *, quantize: str | None = None,
              vocab: Sequence[str] | None = None) -> "ImpactIndex":
        """Index ``docs`` (scipy.sparse, n_docs x vocab_size, weights >= 0) under external ``ids``."""
        if quantize not in QUANTIZE_MODES:
            raise InvalidInputError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
        csr = check_sparse(docs, name="documents")
        n_docs, vocab_size = csr.shape
        table = IdTable.from_ids(ids, n_docs)
        terms = _check_vocab(vocab, vocab_size) if vocab is not None else None
        if n_docs >= np.iinfo(np.int32).max:
            raise InvalidInputError(f"{n_docs} documents exceed the int32 row limit of one index")

        csc = csr.tocsc()
        scale = None
        if quantize == "uint8":
            impacts, scale = quantize_uint8(csc.data)
            csc = sp.csc_matrix((impacts, csc.indices, csc.indptr), shape=csc.shape)
        # Postings whose weight (or impact) is zero can never score; dropping them keeps
        # "no overlapping term" and "score 0" the same thing and the Lucene export lean.
        csc.eliminate_zeros()
        csc.sort_indices()
        logger.debug("built impact index: %d docs, vocab %d, %d postings, quantize=%s",
                     n_docs, vocab_size, csc.nnz, quantize)
        return cls(table, csc.indptr.astype(np.int64), csc.indices.astype(np.int32), csc.data,
                   vocab_size=vocab_size, quantize=quantize, scale=scale, vocab=terms)

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_postings(self) -> int:
        return int(self._indptr[-1])

    def __repr__(self) -> str:
        return (f"ImpactIndex(docs={len(self)}, vocab_size={self.vocab_size}, "
                f"postings={self.n_postings}, quantize={self.quantize!r})")

    def manifest_fields(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": "ip", "vocab_size": self.vocab_size, "count": len(self),
                "quantize": self.quantize, "scale": self.scale, "postings": self.n_postings}

    def doc_vectors(self) -> sp.csr_matrix:
        """The stored document weights (dequantised when quantised) as float32 CSR."""
        weights = self._weights
        if self.quantize == "uint8":
            weights = dequantize_uint8(weights, self.scale)
        return self._as_csr(np.asarray(weights, dtype=np.float32))

    def impacts(self) -> sp.csr_matrix:
        """The integer uint8 impacts as CSR: what the Lucene impact backend indexes."""
        if self.quantize != "uint8":
            raise InvalidInputError("this index is not quantised; it has float weights, not integer impacts")
        return self._as_csr(np.array(self._weights, dtype=np.uint8))

    def _as_csr(self, data: np.ndarray) -> sp.csr_matrix:
        csc = sp.csc_matrix((data, np.array(self._rows), np.array(self._indptr)),
                            shape=(len(self), self.vocab_size))
        return csc.tocsr()

    # ------------------------------------------------------------------ query encoding
    def encode_terms(self, weighted_terms: Mapping[str, float] | Sequence[Mapping[str, float]]) -> sp.csr_matrix:
        """Term strings -> a (n_queries x vocab_size) query matrix; unknown terms are dropped."""
        if self.vocab is None:
            raise InvalidInputError("this index was built without a vocabulary; pass term ids instead")
        batch = [weighted_terms] if isinstance(weighted_terms, Mapping) else list(weighted_terms)
        if self._term_ids is None:
            self._term_ids = {t: i for i, t in enumerate(self.vocab)}
        indptr, cols, data, unknown = [0], [], [], []
        for i, query in enumerate(batch):
            if not isinstance(query, Mapping):
                raise InvalidInputError(f"query {i} must be a dict of term -> weight, got {type(query).__name__}")
            for term, weight in query.items():
                col = self._term_ids.get(term)
                if col is None:
                    unknown.append(term)
                    continue
                if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
                    raise InvalidInputError(
                        f"weight of term {term!r} in query {i} must be a number, got {weight!r}")
                cols.append(col)
                data.append(weight)
            indptr.append(len(cols))
        if unknown:
            logger.debug("ignored %d query terms not in the vocabulary, e.g. %r", len(unknown), unknown[:5])
        matrix = sp.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(cols, dtype=np.int32),
                                np.asarray(indptr, dtype=np.int64)), shape=(len(batch), self.vocab_size))
        return check_sparse(matrix, self.vocab_size, name="query weights")

    # ------------------------------------------------------------------ search
    def search(self, queries: SparseMatrix, k: int, *, raw_impacts: bool = False) -> SearchResults:
        """Exact top-k documents per query by sum(query weight * document weight).

        Documents sharing no term with a query (score 0) are never returned; short result
        rows are padded. Order: score descending, then row ascending. ``raw_impacts=True``
        (quantised indexes only) scores with the integer impacts and no scale, as Lucene does.
        Raises InvalidInputError for k <= 0, an empty batch, a vocabulary size other than the
        index's, and negative, NaN or infinite weights.
        """
        k = check_k(k)
        q = check_sparse(queries, self.vocab_size, name="queries")
        if q.shape[0] == 0:
            raise InvalidInputError("queries is empty (0 rows)")
        if raw_impacts and self.quantize is None:
            raise InvalidInputError("raw_impacts=True needs a quantised index")
        factor = self.scale if self.quantize is not None and not raw_impacts else None

        n_queries, n_docs = q.shape[0], len(self)
        out_rows = np.full((n_queries, k), -1, dtype=np.int64)
        out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        starts = self._indptr[q.indices]
        lens = self._indptr[q.indices + 1] - starts
        max_queries = max(1, _DENSE_CELLS // max(n_docs, 1))
        for lo, hi in _chunks(q.indptr, lens, max_queries, _MAX_POSTINGS):
            t = slice(q.indptr[lo], q.indptr[hi])
            keys, values = self._gather(q.indptr[lo:hi + 1] - q.indptr[lo], starts[t], lens[t], q.data[t])
            cells = (hi - lo) * n_docs
            if cells <= max(_DENSE_CELLS, _DENSE_PER_POSTING * len(keys)):
                # Every document is a cell: one bincount sums all postings of the chunk.
                scores = _to_float32(np.bincount(keys, values, minlength=cells), factor)
                if hi - lo == 1:   # one query (a served request): rank its scores directly
                    top_rows, top_scores = _top_k_of_scores(scores, k)
                    out_rows[lo, :len(top_rows)] = top_rows
                    out_scores[lo, :len(top_rows)] = top_scores
                    continue
                block = _rank_keys(scores.reshape(hi - lo, n_docs), np.arange(n_docs, dtype=np.int64))
            else:
                # A big corpus (chunks of one query here, as max_queries is 1) and a light
                # query: only touched documents get a cell. Sort the keys, sum per unique key.
                rows, inverse = np.unique(keys, return_inverse=True)
                scores = _to_float32(np.bincount(inverse, values, minlength=len(rows)), factor)
                block = _rank_keys(scores, rows)[None, :]
            top_rows, top_scores = _top_k_of_keys(block, k)
            out_rows[lo:hi, :top_rows.shape[1]] = top_rows
            out_scores[lo:hi, :top_rows.shape[1]] = top_scores
        return SearchResults.from_rows(out_rows, out_scores, self.ids.array)

    def _gather(self, q_indptr: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                q_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All postings of a chunk's query terms as (query * n_docs + doc row, q weight * doc weight).

        Products are taken in float64 (exact for float32 x float32 and float32 x uint8), so
        the only rounding is the per-document sum, done in the same order on every path.
        """
        total = int(lens.sum())
        if len(lens) and total >= _SLICE_PER_TERM * len(lens):
            # Long posting lists: copying each term's contiguous range costs less than
            # building and following an int64 index per posting (the loop is per term).
            bounds = list(zip(starts.tolist(), (starts + lens).tolist()))
            rows = np.concatenate([self._rows[a:b] for a, b in bounds])
            weights = np.concatenate([self._weights[a:b] for a, b in bounds])
        else:
            # Position j of the concatenated ranges maps to starts[t] + (j - offset of term t).
            ends = np.cumsum(lens)
            posting = np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lens), lens)
            rows, weights = self._rows[posting], self._weights[posting]
        values = weights * np.repeat(q_weights.astype(np.float64), lens)
        keys = rows.astype(np.int64)
        n_queries = len(q_indptr) - 1
        if n_queries > 1:
            query_of_term = np.repeat(np.arange(n_queries, dtype=np.int64) * len(self), np.diff(q_indptr))
            keys += np.repeat(query_of_term, lens)
        return keys, values

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> list[str]:
        """Write the index files into an existing directory (each atomically); return their names."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"cannot save the sparse index: {directory} is not a directory")
        names = [self.ids.save(directory)]
        for name, arr in ((INDPTR_FILE, self._indptr), (ROWS_FILE, self._rows), (WEIGHTS_FILE, self._weights)):
            with atomic_open(directory / name, "wb") as f:
                np.save(f, np.asarray(arr), allow_pickle=False)
            names.append(name)
        if self.vocab is not None:
            atomic_write_text(directory / VOCAB_FILE, json.dumps(self.vocab, ensure_ascii=False))
            names.append(VOCAB_FILE)
        settings = {"format_version": FORMAT_VERSION, "kind": self.kind, "vocab_size": self.vocab_size,
                    "n_docs": len(self), "quantize": self.quantize, "scale": self.scale,
                    "has_vocab": self.vocab is not None}
        atomic_write_text(directory / SETTINGS_FILE, json.dumps(settings, indent=2))
        names.append(SETTINGS_FILE)
        return names

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> "ImpactIndex":
        """Open a saved index; the posting arrays and ids are memory-mapped unless ``mmap=False``.

        Checks shapes and dtypes (cheap); content checksums are the bundle layer's job.
        """
        directory = Path(directory)
        settings = _read_json(directory / SETTINGS_FILE)
        if not isinstance(settings, dict):
            raise BundleError(f"{directory / SETTINGS_FILE} is not a JSON object")
        version = settings.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatVersionError(
                f"sparse index format version {version!r}; this code reads <= {FORMAT_VERSION}")
        try:
            vocab_size, n_docs = int(settings["vocab_size"]), int(settings["n_docs"])
            quantize, scale = settings["quantize"], settings["scale"]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{directory / SETTINGS_FILE} lacks a valid setting: {e}") from e
        if quantize not in QUANTIZE_MODES:
            raise BundleError(f"unknown quantize mode {quantize!r} in {directory / SETTINGS_FILE}")

        mode = "r" if mmap else None
        indptr = _load_array(directory / INDPTR_FILE, mode, np.int64, (vocab_size + 1,))
        nnz = int(indptr[-1])
        rows = _load_array(directory / ROWS_FILE, mode, np.int32, (nnz,))
        weights = _load_array(directory / WEIGHTS_FILE, mode, np.uint8 if quantize else np.float32, (nnz,))
        if indptr[0] != 0 or (np.diff(indptr) < 0).any():
            raise BundleError(f"{directory / INDPTR_FILE} is not a valid posting offset array")
        if quantize and not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
            raise BundleError(f"quantised index with invalid scale {scale!r}")
        try:
            ids = IdTable.load(directory, mmap=mmap)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read {directory / IDS_FILE}: {e}") from e
        if len(ids) != n_docs:
            raise BundleError(f"{len(ids)} ids for {n_docs} documents in {directory}")
        vocab = None
        if settings.get("has_vocab"):
            vocab = _read_json(directory / VOCAB_FILE)
            if not isinstance(vocab, list) or len(vocab) != vocab_size:
                raise BundleError(f"{directory / VOCAB_FILE} is not a list of {vocab_size} terms")
        return cls(ids, np.asarray(indptr), np.asarray(rows), np.asarray(weights), vocab_size=vocab_size,
                   quantize=quantize, scale=float(scale) if quantize else None, vocab=vocab)


# ---------------------------------------------------------------------- helpers
def _check_vocab(vocab: Sequence[str], vocab_size: int) -> list[str]:
    terms = list(vocab)
    if len(terms) != vocab_size:
        raise InvalidInputError(f"vocab has {len(terms)} terms, the documents have {vocab_size} columns")
    for i, t in enumerate(terms):
        if not isinstance(t, str):
            raise InvalidInputError(f"vocab[{i}] must be a string, got {t!r}")
    if len(set(terms)) != len(terms):
        raise InvalidInputError("vocab terms must be unique")
    return terms


def _chunks(q_indptr: np.ndarray, term_lens: np.ndarray, max_queries: int, max_postings: int):
    """Consecutive query ranges [lo, hi) with at most ``max_queries`` queries and about
    ``max_postings`` gathered postings each (a single heavier query gets a chunk of its own)."""
    n = len(q_indptr) - 1
    if n <= max_queries and int(term_lens.sum()) <= max_postings:
        yield 0, n
        return
    cum = np.concatenate([[0], np.cumsum(term_lens)])[q_indptr]  # postings before query i
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(cum, cum[lo] + max_postings, side="right")) - 1
        hi = min(max(hi, lo + 1), lo + max_queries, n)
        yield lo, hi
        lo = hi


def _to_float32(scores: np.ndarray, factor: float | None) -> np.ndarray:
    if factor is not None:
        scores = scores * factor
    return scores.astype(np.float32)


def _rank_keys(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64 keys that sort ascending by score descending, then row ascending.

    The bits of a non-negative float32 read as an int32 grow with its value, so the high
    half holds ``+inf bits - score bits`` and the low half the row. Keys are unique
    (rows differ), which makes partition and sort deterministic without a stable sort
    and keeps numpy's introselect fast. A score <= 0 (negative floats, -0.0 included, have
    negative bits) gets the high half ``_INF_BITS``, which marks "no hit".
    """
    bits = np.maximum(scores.view(np.int32), 0).astype(np.int64)
    return ((_INF_BITS - bits) << 32) | rows


def _top_k_of_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k positive entries of one query's per-document float32 ``scores``: score
    descending, then row ascending (the order :func:`_rank_keys` gives, with fewer passes
    over a corpus-sized array: one partition finds the k-th score, ties with it are kept)."""
    n = len(scores)
    floor = np.float32(0)
    if k < n:
        floor = max(floor, np.partition(scores, n - k)[n - k])
    rows = np.flatnonzero(scores >= floor) if floor > 0 else np.flatnonzero(scores > 0)
    best = scores[rows]
    order = np.argsort(-best, kind="stable")[:k]   # rows ascending within equal scores
    return rows[order], best[order]


def _top_k_of_keys(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of each row of a (queries x candidates) key block, as (rows, scores) padded with -1/-inf."""
    if keys.shape[1] > k:
        keys = np.partition(keys, k - 1, axis=1)[:, :k]
    keys = np.sort(keys, axis=1)
    high = keys >> 32
    hit = high < _INF_BITS
    scores = (_INF_BITS - np.where(hit, high, _INF_BITS)).astype(np.int32).view(np.float32)
    return np.where(hit, keys & 0xFFFFFFFF, -1), np.where(hit, scores, np.float32(-np.inf))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BundleError(f"missing sparse index file {path}") from e
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {path}: {e}") from e


def _load_array(path: Path, mmap_mode: str | None, dtype, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError as e:
        raise BundleError(f"missing sparse index file {path}") from e
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {path}: {e}") from e
    if arr.dtype != dtype or arr.shape != shape:
        raise BundleError(f"{path} holds {arr.dtype}{arr.shape}, expected {np.dtype(dtype)}{shape}")
    return arr
