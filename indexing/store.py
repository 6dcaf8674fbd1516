"""Document store: external id -> stored fields (a JSON object), kept in LMDB.

Stored fields (title, text, url...) are what a search result shows; LMDB gives memory-mapped,
zero-copy point lookups that many reader processes share through the page cache.

Layout and the decisions behind it:

* **One file** (LMDB ``subdir=False``): a bundle lists ``docs.lmdb`` as a single checksummed
  file. Values are JSON objects encoded as UTF-8 (strict JSON: NaN/inf are refused so any
  language can read them back); keys are the UTF-8 ids (at most 511 bytes, LMDB's limit).
* **Atomic, checksum-stable build**: :meth:`DocStore.build` writes a private temporary
  sibling with LMDB locking and per-commit syncing off (nobody else can see it), syncs it once,
  then renames it into place. The finished file is never written again.
* **No lock file for readers**: LMDB's lock file only coordinates readers with a concurrent
  writer. A built store has no writer, so read-only opens use ``lock=False``: nothing is
  created next to the file, a verified bundle stays byte-for-byte as written, and it can live
  on read-only storage. Opening with ``readonly=False`` turns locking back on (``<path>-lock``).
* **One environment per file per process**: LMDB (and py-lmdb) forbid opening the same file
  twice in a process, so stores opened on the same file (say a bundle loaded twice) share one
  reference-counted environment.
* **Fork safety**: an LMDB environment must not be used in a child after ``fork()``. Each
  store records the pid that opened it; on first use in another process a read-only store
  transparently opens the file again (the inherited lock-free mapping is process-local and is
  simply unmapped). A writable store refuses: its inherited lock state belongs to the parent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import lmdb

from .errors import EmbedxIndexError, InvalidInputError
from .fsutil import fsync_dir

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 64 << 20     # initial map; it doubles on demand while building
DEFAULT_BATCH_SIZE = 2000       # documents per write transaction
MAX_MAP_SIZE = 1 << 42          # 4 TiB: growing past this is surely a runaway input

# Per-process table of open environments, keyed by the file's (device, inode).
_LOCK = threading.Lock()
_OPEN: dict[tuple[int, int], "_Shared"] = {}
_OPEN_PID = os.getpid()
_INHERITED: list[lmdb.Environment] = []     # locked environments from a parent: never touched


@dataclass
class _Shared:
    env: lmdb.Environment
    readonly: bool
    refs: int = 0


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()     # another thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)


def _drop_inherited() -> None:
    """In a forked child, forget the parent's environments (call with _LOCK held)."""
    global _OPEN_PID
    if _OPEN_PID == os.getpid():
        return
    for shared in _OPEN.values():
        if shared.readonly:
            shared.env.close()   # lock-free: unmaps this process's copy only
        else:
            _INHERITED.append(shared.env)
    _OPEN.clear()
    _OPEN_PID = os.getpid()


def _acquire(path: Path, readonly: bool) -> tuple[tuple[int, int], lmdb.Environment]:
    with _LOCK:
        _drop_inherited()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise StoreError(f"no document store at {path}") from None
        key = (st.st_dev, st.st_ino)
        shared = _OPEN.get(key)
        if shared is None:
            try:
                env = lmdb.open(str(path), subdir=False, readonly=readonly, lock=not readonly,
                                create=False, max_dbs=0)
            except lmdb.Error as e:
                raise StoreError(f"cannot open document store {path}: {e}") from None
            shared = _OPEN[key] = _Shared(env, readonly)
        elif shared.readonly != readonly:
            mode = "read-only" if shared.readonly else "writable"
            raise StoreError(f"{path} is already open {mode} in this process; close it first")
        shared.refs += 1
        return key, shared.env


def _release(key: tuple[int, int]) -> None:
    with _LOCK:
        if _OPEN_PID != os.getpid():
            return
        shared = _OPEN.get(key)
        if shared is None:
            return
        shared.refs -= 1
        if shared.refs <= 0:
            shared.env.close()
            del _OPEN[key]


class StoreError(EmbedxIndexError):
    """A document store cannot be opened, is closed, or cannot grow."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a store opened read-only."""


class DocStore:
    """Id -> stored-fields dict over one LMDB file. Use :meth:`build` and :meth:`open`."""

    def __init__(self, path: str | os.PathLike, readonly: bool = True):
        self.path = Path(path)
        self.readonly = bool(readonly)
        if not self.path.is_file():
            raise StoreError(f"no document store at {self.path}")
        self._env: lmdb.Environment | None = None
        self._key: tuple[int, int] | None = None
        self._pid = -1
        self._closed = False
        self._attach()

    def _attach(self) -> None:
        self._key, self._env = _acquire(self.path, self.readonly)
        self._pid = os.getpid()
        self._max_key = self._env.max_key_size()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = True) -> "DocStore":
        """Open an existing store; read-only (the default) creates no lock file."""
        return cls(path, readonly=readonly)

    @classmethod
    def build(cls, path: str | os.PathLike, items: Iterable[tuple[str, Mapping]] | Mapping[str, Mapping],
              map_size: int = DEFAULT_MAP_SIZE, *, batch_size: int = DEFAULT_BATCH_SIZE) -> "DocStore":
        """Write ``(id, fields)`` pairs to a new store at ``path`` atomically; return it opened read-only.

        ``path`` must not exist. A duplicate id, a non-dict value or a value that is not
        JSON-serialisable raises :class:`InvalidInputError` and leaves nothing behind.
        """
        path = Path(path)
        if os.path.lexists(path):
            raise StoreError(f"{path} already exists; a document store is built into a new path")
        if map_size <= 0:
            raise InvalidInputError(f"map_size must be positive, got {map_size}")
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        env = lmdb.open(str(tmp), subdir=False, map_size=int(map_size), lock=False, sync=False,
                        metasync=False, readahead=False, meminit=False, max_dbs=0)
        try:
            n = _write(env, items, batch_size)
            env.sync(True)
            env.close()
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            env.close()
            for p in (tmp, Path(f"{tmp}-lock")):
                p.unlink(missing_ok=True)
            raise
        log.debug("built document store %s with %d documents", path, n)
        return cls(path, readonly=True)

    def _environment(self) -> lmdb.Environment:
        """The environment for this process, reopened after a fork."""
        if self._closed:
            raise StoreError(f"document store {self.path} is closed")
        if self._pid != os.getpid():
            if not self.readonly:
                raise StoreError(f"writable document store {self.path} was opened by process {self._pid}; "
                                 f"open it again in this process")
            log.debug("reopening document store %s in forked process %d", self.path, os.getpid())
            self._attach()
        return self._env

    # ------------------------------------------------------------------ writing
    def add(self, items: Iterable[tuple[str, Mapping]] | Mapping[str, Mapping], *,
            batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Append documents to a store opened with ``readonly=False``; returns how many.

        Each batch is one transaction, so a failure keeps the batches committed before it.
        """
        if self.readonly:
            raise ReadOnlyStoreError(f"document store {self.path} is open read-only")
        return _write(self._environment(), items, batch_size)

    # ------------------------------------------------------------------ reading
    def get(self, doc_id: str) -> dict | None:
        """Stored fields of one id, or None if it is not in the store."""
        key = self._encode_key(doc_id)
        if key is None:
            return None
        with self._environment().begin() as txn:
            raw = txn.get(key)
        return None if raw is None else json.loads(raw)

    def get_many(self, ids: Sequence[str]) -> list[dict | None]:
        """Stored fields of many ids (None for each missing one), read in one transaction."""
        keys = [self._encode_key(i) for i in ids]
        with self._environment().begin() as txn:
            raws = [None if k is None else txn.get(k) for k in keys]
        return [None if r is None else json.loads(r) for r in raws]

    def ids(self) -> Iterator[str]:
        """All ids in key (byte) order."""
        with self._environment().begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                yield key.decode("utf-8")

    def __len__(self) -> int:
        return int(self._environment().stat()["entries"])

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        key = self._encode_key(doc_id)
        if key is None:
            return False
        with self._environment().begin() as txn:
            return txn.get(key) is not None

    def _encode_key(self, doc_id: str) -> bytes | None:
        if not isinstance(doc_id, str):
            raise InvalidInputError(f"document ids are strings, got {type(doc_id).__name__}")
        key = doc_id.encode("utf-8")
        return key if 0 < len(key) <= self._max_key else None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release this handle; the file is unmapped when the last handle in the process closes."""
        if not self._closed and self._pid == os.getpid() and self._key is not None:
            _release(self._key)
        self._env = None
        self._closed = True

    def __enter__(self) -> "DocStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "readonly": self.readonly}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], readonly=state["readonly"])

    def __repr__(self) -> str:
        mode = "closed" if self._closed else ("read-only" if self.readonly else "writable")
        return f"DocStore({str(self.path)!r}, {mode})"


def _write(env: lmdb.Environment, items, batch_size: int) -> int:
    """Write all items in batches of one transaction each, growing the map when it fills."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(items, Mapping):
        items = items.items()
    encoded = _encode(items, env.max_key_size())
    total = 0
    while batch := list(islice(encoded, batch_size)):
        _write_batch(env, batch)
        total += len(batch)
    return total


def _write_batch(env: lmdb.Environment, batch: list[tuple[bytes, bytes]]) -> None:
    while True:
        try:
            with env.begin(write=True) as txn:
                _, added = txn.cursor().putmulti(batch, dupdata=False, overwrite=False)
                if added != len(batch):
                    raise _Duplicate
            return
        except _Duplicate:
            raise InvalidInputError(f"duplicate document id {_first_duplicate(env, batch)!r}") from None
        except lmdb.MapFullError:
            grown = env.info()["map_size"] * 2
            if grown > MAX_MAP_SIZE:
                raise StoreError(f"document store would need a map larger than {MAX_MAP_SIZE} bytes") from None
            log.debug("document store map full; growing it to %d bytes", grown)
            env.set_mapsize(grown)


class _Duplicate(Exception):
    """Aborts a batch transaction that met an id twice."""


def _first_duplicate(env: lmdb.Environment, batch: list[tuple[bytes, bytes]]) -> str:
    """The first id of an aborted batch that repeats within it or was already stored."""
    seen: set[bytes] = set()
    with env.begin() as txn:
        for key, _ in batch:
            if key in seen or txn.get(key) is not None:
                return key.decode("utf-8")
            seen.add(key)
    return "?"


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encode(items: Iterable[tuple[str, Mapping]], max_key: int) -> Iterator[tuple[bytes, bytes]]:
    for n, item in enumerate(items):
        try:
            doc_id, fields = item
        except (TypeError, ValueError):
            raise InvalidInputError(f"document {n} must be an (id, fields) pair, got {item!r:.80}") from None
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidInputError(f"document {n}: id must be a non-empty string, got {doc_id!r}")
        key = doc_id.encode("utf-8")
        if len(key) > max_key:
            raise InvalidInputError(f"document id {doc_id[:40]!r}... is {len(key)} bytes; the limit is {max_key}")
        if type(fields) is not dict:
            if not isinstance(fields, Mapping):
                raise InvalidInputError(f"document {doc_id!r}: fields must be a dict, got {type(fields).__name__}")
            fields = dict(fields)
        try:
            value = _JSON.encode(fields)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"document {doc_id!r}: fields are not JSON-serialisable ({e})") from None
        yield key, value.encode("utf-8")
