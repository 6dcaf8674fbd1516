"""Torch-free serving form of the compressed embedding tables of ``embedx.tables``.

A table exported by ``CompressedTable.export()`` is a directory::

    table.json     format + version, method, JSON config, and per array: file, dtype, shape, sha256
    <name>.npy     one plain .npy file per array (never pickled), memory-mappable

:class:`TableStore` loads it and answers ``lookup(ids)`` with numpy alone, reproducing the
torch module's inference output (hashes bit for bit, see :mod:`indexing.hashing`). Each method
has a small kernel (:mod:`indexing.table_lookups`) that precomputes per-field constants once,
so a lookup is a handful of vectorised array operations and one ``take`` per table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import BundleError, ChecksumMismatchError, FormatVersionError, InvalidInputError
from .fsutil import fsync_dir
from .table_lookups import KERNELS, aligned_empty

log = logging.getLogger(__name__)

FORMAT = "embedx.table"
FORMAT_VERSION = 1
MANIFEST = "table.json"
_ARRAY_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


# ----------------------------------------------------------------------------- file format
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_table(path: str | os.PathLike, method: str, config: Mapping[str, Any],
                arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a table directory atomically: build a temporary sibling, fsync, rename into place.

    An existing table directory at ``path`` is replaced; any other existing path is refused.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST).is_file())):
        raise BundleError(f"{path} exists and is not a table directory; refusing to overwrite it")
    for name in arrays:
        if not name or set(name) - _ARRAY_NAME_CHARS:
            raise BundleError(f"array name {name!r} must be letters, digits and underscores")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        entries = {}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            if arr.dtype == object:
                raise BundleError(f"array {name!r} has dtype object; only numeric arrays are stored")
            file = tmp / f"{name}.npy"
            with open(file, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            entries[name] = {"file": file.name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                             "sha256": _sha256(file)}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": method,
                    "config": dict(config), "arrays": entries}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "table")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise
    return path


def read_table(path: str | os.PathLike, mmap: bool = False,
               verify: bool = True) -> tuple[str, dict, dict[str, np.ndarray]]:
    """Read ``(method, config, arrays)`` from a table directory, checking format and checksums."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a table directory (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {manifest_path}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise FormatVersionError(
            f"{path} has table format version {version!r}; this code reads up to {FORMAT_VERSION}")
    try:
        method, config, entries = manifest["method"], manifest["config"], manifest["arrays"]
        arrays = {name: _read_array(path, entry, mmap, verify) for name, entry in entries.items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise BundleError(f"{manifest_path} is malformed: {e!r}") from e
    if not isinstance(method, str) or not isinstance(config, dict):
        raise BundleError(f"{manifest_path} is malformed: bad method or config")
    return method, config, arrays


def _read_array(path: Path, entry: dict, mmap: bool, verify: bool) -> np.ndarray:
    name = entry["file"]
    file = path / name
    if not isinstance(name, str) or Path(name).name != name or not file.is_file():
        raise BundleError(f"{path}: array file {name!r} is missing")
    if verify and _sha256(file) != entry["sha256"]:
        raise ChecksumMismatchError(f"{file} does not match the checksum in {MANIFEST}")
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False) if mmap else _load_aligned(file)
    except ValueError as e:
        raise BundleError(f"{file} is not a readable .npy array: {e}") from e
    if arr.dtype.str != entry["dtype"] or list(arr.shape) != entry["shape"]:
        raise BundleError(f"{file} holds {arr.dtype.str}{list(arr.shape)}, manifest says "
                          f"{entry['dtype']}{entry['shape']}")
    return arr


def _load_aligned(file: Path) -> np.ndarray:
    """A ``.npy`` file read into a cache-line aligned array (:func:`aligned_empty`); ``np.load``
    would place a large array 16 bytes past a line, so every 64-byte row would span two.
    (Memory-mapped arrays are aligned already: the format pads its header to 64 bytes.)"""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran or dtype.hasobject:
            return np.load(file, allow_pickle=False)  # refuses objects; Fortran order stays as is
        arr = aligned_empty(shape, dtype)
        view = memoryview(arr.reshape(-1).view(np.uint8))
        if f.readinto(view) != arr.nbytes:
            raise ValueError("the file is shorter than its header says")
    return arr


# ----------------------------------------------------------------------------- the store
class TableStore:
    """Numpy-only lookups of an exported embedding table (see the module docstring).

    ``threads`` > 1 splits large batches into contiguous row blocks looked up concurrently
    (numpy releases the GIL in ``take`` and in ufuncs); results are identical to one thread.
    The default is one thread: on a busy two-core machine the split measured no gain; pass
    ``threads=os.cpu_count()`` on an idle multi-core server.
    """

    #: batches with fewer ids than this run on the calling thread (pool overhead dominates)
    MIN_PARALLEL_IDS = 32768

    def __init__(self, method: str, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                 threads: int = 1):
        if method not in KERNELS:
            raise BundleError(f"unknown table method {method!r}; known: {sorted(KERNELS)}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
        config = dict(config)
        for key in ("cardinalities", "dim"):
            if key not in config:
                raise BundleError(f"table config has no {key!r}")
        self.method = method
        self.config = config
        self.arrays = dict(arrays)
        try:
            self._kernel = KERNELS[method](config, self.arrays)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise BundleError(f"bad {method} table config: {e!r}") from e
        self.cardinalities = tuple(self._kernel.cards)
        self.dim = self._kernel.dim
        self._cards = np.asarray(self.cardinalities, dtype=np.int64)
        self._ucards = self._cards.astype(np.uint64)[None, :]
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False, verify: bool = True,
             threads: int = 1) -> "TableStore":
        """Load a table directory written by ``ExportedTable.save`` / :func:`write_table`."""
        method, config, arrays = read_table(path, mmap=mmap, verify=verify)
        store = cls(method, config, arrays, threads=threads)
        log.info("loaded %s table from %s (%d fields, dim %d, %s bytes)", method, path,
                 store.num_fields, store.dim, f"{store.nbytes:,}")
        return store

    @property
    def num_fields(self) -> int:
        return len(self.cardinalities)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (equals the torch table's ``memory_bytes()``)."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    def lookup(self, ids) -> np.ndarray:
        """``(batch, fields)`` ids -> ``(batch, fields, dim)`` float32 embeddings.

        ``(batch, fields, bag)`` multi-hot ids padded with ``-1`` are mean-pooled, as in torch.
        """
        ids = self._check_ids(ids)
        if ids.ndim == 2:
            return self._run(ids)
        b, f, l = ids.shape
        valid = ids >= 0
        flat = np.where(valid, ids, 0).transpose(0, 2, 1).reshape(b * l, f)
        emb = self._run(flat).reshape(b, l, f, self.dim)
        emb *= valid.transpose(0, 2, 1)[..., None]
        counts = np.maximum(valid.sum(-1), 1).astype(np.float32)
        return emb.sum(1) / counts[..., None]

    def _run(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty(ids.shape + (self.dim,), dtype=np.float32)
        n = ids.shape[0]
        blocks = min(self.threads, max(1, ids.size // self.MIN_PARALLEL_IDS))
        if blocks == 1:
            self._kernel(ids, out)
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="table-lookup")
        edges = [n * i // blocks for i in range(blocks + 1)]
        jobs = [self._pool.submit(self._kernel, ids[s:e], out[s:e]) for s, e in zip(edges, edges[1:])]
        for job in jobs:
            job.result()
        return out

    def close(self) -> None:
        """Stop the lookup threads (a later threaded lookup starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _check_ids(self, ids) -> np.ndarray:
        if not isinstance(ids, np.ndarray):
            raise InvalidInputError(f"ids must be a numpy array, got {type(ids).__name__}")
        if ids.dtype.kind not in "iu":
            raise InvalidInputError(f"ids must be an integer array, got dtype {ids.dtype}")
        if ids.ndim not in (2, 3) or ids.shape[1] != self.num_fields:
            raise InvalidInputError(f"ids must be (batch, {self.num_fields}) or "
                                    f"(batch, {self.num_fields}, bag), got {ids.shape}")
        if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
            raise InvalidInputError("ids exceed the int64 range")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.ndim == 2:
            # one comparison: a negative id seen as uint64 is larger than any cardinality
            bad = np.greater_equal(ids.view(np.uint64), self._kernel.scratch.tile("ucards", self._ucards, len(ids)))
        else:
            bad = (ids < -1) | (ids >= self._cards[:, None])  # -1 pads a bag
        if bad.any():
            pos = tuple(int(p) for p in np.argwhere(bad)[0])
            raise InvalidInputError(f"id {int(ids[pos])} at {pos} is out of range for field {pos[1]} "
                                    f"(cardinality {self.cardinalities[pos[1]]})")
        return ids
