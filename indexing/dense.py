"""Dense vector index over FAISS: external string ids, higher-is-better scores, atomic files.

One FAISS ``index_factory`` string names the index ("Flat", "HNSW32", "IVF256,PQ16", ...), so
the same string is a config value, a CLI flag and a benchmark label. FAISS only knows row
numbers; :class:`~indexing.ids.IdTable` maps them to external ids in one fancy-index.

Search is meant to cost no more than calling FAISS directly (its Python ``Index.search``):
float32 C-contiguous queries are not copied; the NaN/inf check is one sum of squares in
FAISS's SIMD code (non-finite iff a value is), cheaper per call than any numpy reduction;
results stay numpy arrays, mapped to ids with one fancy-index; and per-call parameters
(``nprobe``, ``efSearch``, ...) travel in a cached ``faiss.SearchParameters`` object rather
than in shared index state, so concurrent searches with different parameters do not
interfere.

Memory mapping (checked with faiss-cpu 1.15.1, see :meth:`DenseIndex.load`): FAISS's
``IO_FLAG_MMAP_IFC`` maps the file and uses the stored codes in place for Flat, HNSW*
(vectors mapped, the graph read into memory), IVF* (inverted lists mapped), PQ, SQ and
composites of them (OPQ/PCA pre-transforms, refinement). An index loaded that way is
read-only: FAISS aborts the whole process on an add to a mapped vector, so :meth:`add`
refuses with :class:`ReadOnlyIndexError` first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from .errors import BundleError, EmbedxIndexError, FormatVersionError, InvalidInputError
from .fsutil import atomic_write_text, fsync_dir
from .ids import IDS_FILE, IdTable
from .results import SearchResults
from .validation import check_dense, check_k

log = logging.getLogger(__name__)

INDEX_FILE = "dense.faiss"
SETTINGS_FILE = "dense.json"
FORMAT_VERSION = 1
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT}
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
_PARAM_CACHE_SIZE = 64
_F32 = np.dtype(np.float32)
_ptr = faiss.swig_ptr
_sum_squares = faiss.fvec_norm_L2sqr
# Index types whose search only ever pads at the end of a row (checked by exact type).
_TRAILING_PADDING = frozenset(getattr(faiss, n) for n in (
    "IndexFlat", "IndexFlatIP", "IndexFlatL2", "IndexHNSWFlat") if hasattr(faiss, n))


class ReadOnlyIndexError(EmbedxIndexError):
    """The index was loaded memory-mapped and cannot be changed; load it with ``mmap=False``."""


class DenseIndex:
    """A FAISS index whose rows carry external string ids.

    ``metric``: ``"ip"`` (inner product), ``"l2"`` (scores are the negative squared
    distance) or ``"cosine"`` (inner product on L2-normalised vectors; documents and
    queries are normalised here, and zero vectors are refused since their cosine is
    undefined).

    Factory strings mean what they mean to FAISS: note that "PQ16" and "IVF256,PQ16" include
    FAISS's polysemous training (some 20 s per index on a small CPU, only useful for
    polysemous search); "PQ16np" skips it. Searches may run concurrently with each other;
    ``add`` and ``train`` need exclusive access.
    """

    kind = "dense"

    def __init__(self, dim: int, factory: str = "Flat", metric: str = "ip"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise InvalidInputError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(metric, str) or metric not in METRICS:
            raise InvalidInputError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
        if not isinstance(factory, str) or not factory.strip():
            raise InvalidInputError(f"factory must be a non-empty FAISS index_factory string, got {factory!r}")
        _check_graph_sizes(factory)
        try:
            index = faiss.index_factory(int(dim), factory, METRICS[metric])
        except RuntimeError as e:
            raise InvalidInputError(f"bad FAISS factory string {factory!r} for dim {dim}, metric {metric}: "
                                    f"{_faiss_message(e)}") from None
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            raise InvalidInputError(f"factory {factory!r}: drop 'IDMap'; DenseIndex maps ids itself")
        if index.metric_type != METRICS[metric]:  # e.g. "HNSW32_PQ16" is L2-only
            raise InvalidInputError(f"factory {factory!r} does not support metric {metric!r}")
        self._setup(index, factory, metric, IdTable(np.empty(0, dtype="<U1")), read_only=False)

    def _setup(self, index: Any, factory: str, metric: str, ids: IdTable, read_only: bool) -> None:
        self.index = index
        self.factory = factory
        self.metric = metric
        self.dim = int(index.d)
        self.read_only = read_only
        self._set_ids(ids)
        self._negate = metric == "l2"
        self._single = (self.dim,)
        self._cosine = metric == "cosine"
        self._params: dict[tuple, tuple[Any, list]] = {}

    def _set_ids(self, ids: IdTable) -> None:
        self.ids = ids
        self._count = int(self.index.ntotal)
        # A plain-ndarray view: fancy-indexing an np.memmap wraps every result in the subclass.
        self._id_array = np.asarray(ids.array)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (f"DenseIndex(dim={self.dim}, factory={self.factory!r}, metric={self.metric!r}, "
                f"count={self._count}{', read-only' if self.read_only else ''})")

    # ------------------------------------------------------------------ building
    def train(self, vectors: np.ndarray) -> None:
        """Train an index that needs it (IVF, PQ, ...) before the first add; a no-op for Flat/HNSW."""
        self._check_writable()
        x = check_dense(vectors, self.dim, "training vectors")
        if self.index.is_trained:
            if _needs_training(self.factory, self.dim, self.metric):
                raise InvalidInputError(f"index {self.factory!r} is already trained")
            log.debug("index %r needs no training; train() ignored", self.factory)
            return
        self._train(_l2_normalized(x, "training vectors") if self._cosine else x)

    def _train(self, x: np.ndarray) -> None:
        need = _min_training_vectors(self.index)
        if len(x) < need:
            raise InvalidInputError(f"index {self.factory!r} needs at least {need} training vectors, got {len(x)}")
        try:
            self.index.train(x)
        except RuntimeError as e:
            raise InvalidInputError(f"training {self.factory!r} on {len(x)} vectors failed: "
                                    f"{_faiss_message(e)}") from None
        log.info("trained %r on %d vectors", self.factory, len(x))

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors with their external ids (unique, also against ids already added).

        An untrained index is trained on this first batch.
        """
        self._check_writable()
        x = check_dense(vectors, self.dim, "vectors")
        ids = list(ids)
        if len(ids) != len(x):
            raise InvalidInputError(f"got {len(ids)} ids for {len(x)} vectors")
        table = self.ids.extend(ids)  # validates ids before anything changes
        if self._cosine:
            x = _l2_normalized(x, "vectors")
        if not self.index.is_trained:
            self._train(x)
        try:
            self.index.add(x)
        except RuntimeError as e:
            raise InvalidInputError(f"adding to {self.factory!r} failed: {_faiss_message(e)}") from None
        self._set_ids(table)
        if self._count != len(table):
            raise AssertionError(f"FAISS holds {self._count} vectors for {len(table)} ids")

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyIndexError("this index was loaded memory-mapped and is read-only; "
                                     "load it with mmap=False to train or add")

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, **params: Any) -> SearchResults:
        """Top-``k`` rows per query, best first; a (d,) query is a batch of one.

        ``params`` set search-time knobs for this call only: ``nprobe``, ``max_codes`` (IVF),
        ``efSearch``, ``check_relative_distance``, ``bounded_queue`` (HNSW, also an HNSW
        IVF quantizer), ``k_factor`` (refinement). ``k`` may exceed ``len(self)``: the
        missing slots are padded (row -1, id "", score -inf).
        """
        if type(k) is not int or k <= 0:
            k = check_k(k)
        q = queries
        if type(q) is np.ndarray and q.dtype is _F32 and q.flags.c_contiguous and (
                q.shape == self._single or q.ndim == 2 and q.shape[1] == self.dim and len(q)):
            # Fast path, no copy. The sum of squares is non-finite iff q holds a NaN/inf (or
            # squares overflow; the exact check then clears it): one SIMD pass in FAISS, with
            # far less call overhead than a numpy reduction, which matters for one query.
            ptr = _ptr(q)
            if not math.isfinite(_sum_squares(ptr, q.size)) and not np.isfinite(q).all():
                check_dense(q, self.dim, "queries")  # raises, naming the first bad row
            nq = 1 if q.ndim == 1 else len(q)  # FAISS reads a (d,) query as a batch of one
        else:
            q = check_dense(q, self.dim, "queries")
            nq = len(q)
            ptr = _ptr(q)
        if self._cosine:
            q = _l2_normalized(q.reshape(nq, -1), "queries")
            ptr = _ptr(q)
        held = self._search_parameters(params) if params else None  # keeps nested params alive
        sp = held[0] if held else None
        kk = k if k <= self._count else self._count
        scores = np.empty((nq, kk), np.float32)
        rows = np.empty((nq, kk), np.int64)
        if kk:
            # What faiss's Index.search wrapper calls after the checks done above.
            self.index.search_c(nq, ptr, kk, _ptr(scores), _ptr(rows), sp)
            if self._negate:
                np.negative(scores, out=scores)
            # Padding (row -1): exact flat and HNSW search sort hits best first and put any
            # missing hit last, so the last column tells; every other index gets a full scan
            # (rows.argmin), since some (IVF fast-scan) can return -1 rows mid-list.
            if type(self.index) in _TRAILING_PADDING:
                padded = (rows.item(-1) if nq == 1 else rows[:, -1].min()) < 0
            else:
                padded = rows.item(rows.argmin()) < 0
            if kk == k and not padded:
                return SearchResults(rows, scores, self._id_array[rows])  # what from_rows returns
        if kk < k:
            scores = np.pad(scores, ((0, 0), (0, k - kk)))
            rows = np.pad(rows, ((0, 0), (0, k - kk)), constant_values=-1)
        return SearchResults.from_rows(rows, scores, self._id_array)

    def _search_parameters(self, params: dict[str, Any]) -> tuple[Any, list]:
        """(faiss.SearchParameters, the nested ones it points to), built once per combination.

        FAISS only reads these, so threads may share them; the caller holds the tuple for the
        duration of its search, so clearing the cache cannot free objects in use. Fields not
        given keep the index's own settings at the time of first use.
        """
        try:
            key = tuple(sorted(params.items()))
            hit = self._params.get(key)
        except TypeError:
            raise InvalidInputError(f"search parameters must be plain numbers or booleans, got {params!r}") from None
        if hit is None:
            left, accepted, keep = dict(params), set(), []
            sp = _build_search_parameters(self.index, left, accepted, keep)
            if left:
                raise InvalidInputError(
                    f"unknown search parameter(s) {sorted(left)} for index {self.factory!r}; "
                    f"it accepts {sorted(accepted) or 'none'}")
            if len(self._params) >= _PARAM_CACHE_SIZE:
                self._params.clear()
            hit = self._params[key] = (sp, keep)
        return hit

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> list[str]:
        """Write ``dense.faiss``, ``ids.npy`` and ``dense.json`` into an existing directory.

        Each file is written to a temporary sibling, fsynced and renamed into place, so a
        process that memory-mapped the previous version keeps reading it intact.
        """
        d = Path(directory)
        if not d.is_dir():
            raise InvalidInputError(f"cannot save into {d}: not an existing directory")
        fd, tmp = tempfile.mkstemp(prefix=f".{INDEX_FILE}.tmp-", dir=d)
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, d / INDEX_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.ids.save(d)
        settings = {"format_version": FORMAT_VERSION, **self.manifest_fields(), "faiss_version": faiss.__version__}
        atomic_write_text(d / SETTINGS_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        fsync_dir(d)
        return [INDEX_FILE, IDS_FILE, SETTINGS_FILE]

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> "DenseIndex":
        """Load an index written by :meth:`save`.

        ``mmap=True`` reads ``dense.faiss`` with ``IO_FLAG_MMAP_IFC | IO_FLAG_READ_ONLY``:
        with faiss-cpu 1.15.1 this maps the codes of Flat, HNSW (vectors; the graph is read),
        IVF (inverted lists), PQ and SQ indexes and their composites, so loading takes no
        time and pages are shared between processes. The plain ``IO_FLAG_MMAP`` maps only IVF
        lists there. Where FAISS refuses to map an index type, it is read normally (and stays
        writable). ``ids.npy`` is memory-mapped too. A mapped index is read-only.
        """
        d = Path(directory)
        settings = _read_settings(d / SETTINGS_FILE)
        path = d / INDEX_FILE
        if not path.is_file():
            raise BundleError(f"{path}: missing")
        if not (d / IDS_FILE).is_file():
            raise BundleError(f"{d / IDS_FILE}: missing")
        index, mapped = _read_index(path, mmap)
        try:
            ids = IdTable.load(d, mmap=mmap)
        except ValueError as e:
            raise BundleError(f"{d / IDS_FILE}: {e}") from None
        if ids.array.ndim != 1 or ids.array.dtype.kind != "U":
            raise BundleError(f"{d / IDS_FILE}: expected a 1-D unicode array, got {ids.array.dtype} {ids.array.shape}")
        if index.d != settings["dimension"] or index.metric_type != METRICS[settings["metric"]]:
            raise BundleError(f"{path}: holds a dim {index.d} index with FAISS metric {index.metric_type}; "
                              f"{SETTINGS_FILE} says dim {settings['dimension']}, metric {settings['metric']}")
        if not index.ntotal == len(ids) == settings["count"]:
            raise BundleError(f"{d}: {INDEX_FILE} holds {index.ntotal} vectors, {IDS_FILE} {len(ids)} ids, "
                              f"{SETTINGS_FILE} says {settings['count']}")
        self = cls.__new__(cls)
        self._setup(index, settings["factory"], settings["metric"], ids, read_only=mapped)
        log.debug("loaded %r from %s (%s)", self, d, "memory-mapped" if mapped else "read into memory")
        return self

    def manifest_fields(self) -> dict:
        """What the bundle manifest records about this index."""
        return {"kind": self.kind, "metric": self.metric, "dimension": self.dim, "count": self._count,
                "factory": self.factory}


# ---------------------------------------------------------------------- helpers
def _faiss_message(e: BaseException) -> str:
    """The useful tail of a FAISS C++ exception, without the C++ signature and source location."""
    text = (str(e).strip().splitlines() or [repr(e)])[0]
    for marker in ("failed: ", "Error: "):
        if marker in text:
            return text.rsplit(marker, 1)[1]
    if " at /" in text:
        return text.split(" at /", 1)[1].split(": ", 1)[-1]
    return text


def _check_graph_sizes(factory: str) -> None:
    """Refuse sizes that crash FAISS 1.15.1 outright (abort or segfault) instead of raising."""
    for name, low, pattern in (("HNSW M", 2, r"HNSW(\d+)"), ("IVF list count", 1, r"IVF(\d+)")):
        for value in re.findall(pattern, factory):
            if int(value) < low:
                raise InvalidInputError(f"factory {factory!r}: {name} must be >= {low}, got {value}")


def _l2_normalized(x: np.ndarray, name: str) -> np.ndarray:
    """A unit-length copy of each row (norms computed in float64, so huge values do not overflow)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if not norms.all():
        raise InvalidInputError(f"{name} row {int(np.flatnonzero(norms == 0)[0])} is all zeros; "
                                "cosine similarity is undefined for it")
    return np.divide(x, norms[:, None], out=np.empty_like(x), casting="same_kind")


def _needs_training(factory: str, dim: int, metric: str) -> bool:
    """Whether an index of this kind needs training (a fresh one is cheap to build and ask)."""
    try:
        return not faiss.index_factory(dim, factory, METRICS[metric]).is_trained
    except RuntimeError:
        return True


def _min_training_vectors(index: Any) -> int:
    """Fewest vectors FAISS's k-means accepts for this index: IVF lists and PQ codebooks."""
    index = faiss.downcast_index(index)
    need = 1
    if isinstance(index, faiss.IndexPreTransform):
        need = _min_training_vectors(index.index)
    elif isinstance(index, faiss.IndexRefine):
        need = _min_training_vectors(index.base_index)
    elif isinstance(index, faiss.IndexHNSW):
        need = _min_training_vectors(index.storage)
    elif isinstance(index, faiss.IndexIVF) and index.quantizer.ntotal < index.nlist:
        need = index.nlist
    pq = getattr(index, "pq", None)
    if pq is not None and not index.is_trained:
        need = max(need, int(pq.ksub))
    return need


def _build_search_parameters(index: Any, params: dict, accepted: set, keep: list) -> Any:
    """SearchParameters for ``index`` and the indexes inside it, popping the names it uses.

    Returns None when nothing applies at this level or below. Unset fields copy the index's
    own settings, since a SearchParameters object replaces them all.
    """
    index = faiss.downcast_index(index)
    before = len(params)
    if isinstance(index, faiss.IndexPreTransform):
        inner = _build_search_parameters(index.index, params, accepted, keep)
        sp = faiss.SearchParametersPreTransform()
        if inner is not None:
            sp.index_params = inner
    elif isinstance(index, faiss.IndexRefine):
        accepted.add("k_factor")
        sp = faiss.IndexRefineSearchParameters()
        sp.k_factor = _number_param(params, "k_factor", 1.0, float, index.k_factor)
        inner = _build_search_parameters(index.base_index, params, accepted, keep)
        if inner is not None:
            sp.base_index_params = inner
    elif isinstance(index, faiss.IndexIVF):
        accepted.update(("nprobe", "max_codes"))
        sp = faiss.SearchParametersIVF()
        sp.nprobe = _number_param(params, "nprobe", 1, int, index.nprobe)
        sp.max_codes = _number_param(params, "max_codes", 0, int, index.max_codes)
        inner = _build_search_parameters(index.quantizer, params, accepted, keep)
        if inner is not None:
            sp.quantizer_params = inner
    elif isinstance(index, faiss.IndexHNSW):
        accepted.update(("efSearch", "check_relative_distance", "bounded_queue"))
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = _number_param(params, "efSearch", 1, int, index.hnsw.efSearch)
        sp.check_relative_distance = _bool_param(params, "check_relative_distance",
                                                 index.hnsw.check_relative_distance)
        sp.bounded_queue = _bool_param(params, "bounded_queue", index.hnsw.search_bounded_queue)
    else:
        return None
    if len(params) == before:
        return None
    keep.append(sp)
    return sp


def _number_param(params: dict, name: str, minimum: float, kind: type, default: Any) -> Any:
    if name not in params:
        return default
    value = params.pop(name)
    ok_type = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not value >= minimum:
        raise InvalidInputError(f"search parameter {name} must be {'an integer' if kind is int else 'a number'} "
                                f">= {minimum}, got {value!r}")
    return kind(value)


def _bool_param(params: dict, name: str, default: bool) -> bool:
    if name not in params:
        return default
    value = params.pop(name)
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"search parameter {name} must be True or False, got {value!r}")
    return bool(value)


def _read_settings(path: Path) -> dict:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable: {e}") from None
    if not isinstance(settings, dict):
        raise BundleError(f"{path}: expected a JSON object")
    version = settings.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatVersionError(f"{path}: format version {version} is newer than this code reads "
                                 f"({FORMAT_VERSION}); upgrade embedx")
    if settings.get("kind") != DenseIndex.kind:
        raise BundleError(f"{path}: kind is {settings.get('kind')!r}, not {DenseIndex.kind!r}")
    if not isinstance(settings.get("metric"), str) or settings["metric"] not in METRICS:
        raise BundleError(f"{path}: unknown metric {settings.get('metric')!r}")
    for field in ("dimension", "count"):
        if not isinstance(settings.get(field), int) or isinstance(settings.get(field), bool):
            raise BundleError(f"{path}: {field} must be an integer, got {settings.get(field)!r}")
    if not isinstance(settings.get("factory"), str):
        raise BundleError(f"{path}: factory must be a string, got {settings.get('factory')!r}")
    return settings


def _read_index(path: Path, mmap: bool) -> tuple[Any, bool]:
    """(index, whether it is memory-mapped)."""
    if mmap:
        try:
            return faiss.read_index(str(path), MMAP_FLAGS), True
        except RuntimeError as e:
            log.info("%s: FAISS cannot memory-map this index (%s); reading it into memory",
                     path, _faiss_message(e))
    try:
        return faiss.read_index(str(path)), False
    except RuntimeError as e:
        raise BundleError(f"{path}: not a readable FAISS index: {_faiss_message(e)}") from None
