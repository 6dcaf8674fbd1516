"""Index bundles: the on-disk contract between learning, indexing and serving.

A bundle is a directory holding ``manifest.json``, the index's own files and, optionally,
``docs.lmdb`` (id -> stored fields, see :mod:`indexing.store`). The manifest records the
format version, index kind, metric, dimension or vocabulary size, counts, the encoder that
produced the vectors (name and content hash), a representation-space id for compatibility
checks, and the size and sha256 of every file, so a loader can refuse a damaged or foreign
bundle with a clear error instead of serving garbage.

Atomic writes
-------------
``path`` is a symbolic link to a hidden, immutable version directory beside it::

    bundles/scifact            -> .scifact.v-<uuid>      (relative link)
    bundles/.scifact.v-<uuid>/   manifest.json, index files, docs.lmdb
    bundles/.scifact.lock        writers take an exclusive flock on it

:func:`write_bundle` builds into ``.{name}.tmp-<uuid>`` (same filesystem), gives every file a
normal readable mode, fsyncs every file and directory, writes ``manifest.json`` last, renames
the directory to ``.{name}.v-<uuid>``, then points ``path`` at it by renaming a new symlink
over the old one (``rename(2)`` is atomic). A reader therefore sees the old complete bundle or the new one, never a mix, and a
crash, exception or SIGKILL at any moment leaves the previous bundle in place. After the swap
the old version directory is deleted (processes that already mapped its files keep them on
Linux); leftovers of crashed writes are deleted by the next write, which holds the lock so it
never removes a concurrent writer's work. :func:`load_bundle` resolves the link once and reads
everything from that one version directory, retrying if a swap removed it mid-load.

Existing paths: a link to one of our version directories is replaced; an empty directory or
a plain directory holding an embedx bundle (say one copied with ``cp -rL``; note that plain
``cp -r`` copies the link, not the bundle) is swapped out atomically with Linux's
``renameat2(RENAME_EXCHANGE)`` (elsewhere: two renames, with a brief moment with no bundle)
and deleted; anything else (a file, a foreign link, a non-empty directory without an embedx
manifest) is refused with :class:`BundleError`, never deleted. POSIX systems only.

Loading dispatches on the manifest's ``kind`` through :data:`INDEX_KINDS`, an explicit
kind -> ``"module:Class"`` table inside this package: a manifest can never make us import an
arbitrary module, and modules load lazily, so a dense-only user never starts Java.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import BackendUnavailableError, BundleError, ChecksumMismatchError, FormatVersionError, \
    InvalidInputError
from .fsutil import fsync_dir
from .results import SearchResults
from .store import DocStore, StoreError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCS = "docs.lmdb"
HASH_CHUNK = 1 << 20
LOAD_ATTEMPTS = 10      # a load restarts when a concurrent write replaced the version it was reading
REQUIRED_FIELDS = ("kind", "metric", "count", "files")
TOP_LEVEL_INDEX_FIELDS = ("metric", "dimension", "vocab_size", "count")

#: Index kind -> "module:Class" (or a class registered with :func:`register_index_kind`).
INDEX_KINDS: dict[str, str | type] = {
    "dense": "indexing.dense:DenseIndex",
    "sparse": "indexing.sparse:ImpactIndex",
    "lucene-impact": "indexing.lucene:LuceneImpactIndex",
    "lucene-bm25": "indexing.lucene:LuceneBM25Index",
}


def register_index_kind(kind: str, target: str | type) -> None:
    """Make bundles of ``kind`` loadable by ``target`` (a class or ``"module:Class"``).

    Only code can extend the table; a manifest cannot.
    """
    if not isinstance(kind, str) or not kind:
        raise InvalidInputError(f"index kind must be a non-empty string, got {kind!r}")
    if not isinstance(target, type) and not (isinstance(target, str) and target.count(":") == 1):
        raise InvalidInputError(f"target must be a class or 'module:Class', got {target!r}")
    INDEX_KINDS[kind] = target


# ============================================================================ reading
class Bundle:
    """A loaded bundle: its manifest, index and (optional) document store."""

    def __init__(self, path: Path, root: Path, manifest: dict, index: Any, store: DocStore | None):
        self.path = path            # what the caller named (usually the symlink)
        self.root = root            # the version directory the files were read from
        self.manifest = manifest
        self.index = index
        self.store = store

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def encoder(self) -> dict | None:
        return self.manifest.get("encoder")

    @property
    def space_id(self) -> str | None:
        return self.manifest.get("space_id")

    def search(self, queries, k: int, **kwargs) -> SearchResults:
        """Search the index (queries in whatever form its kind takes)."""
        return self.index.search(queries, k, **kwargs)

    def fields(self, ids: Sequence[str], names: Sequence[str] | str | None = None) -> list[dict | None]:
        """Stored fields for each id (None where an id has none, or for every id without a store).

        ``names`` keeps only those fields.
        """
        ids = list(ids)
        if self.store is None:
            return [None] * len(ids)
        docs = self.store.get_many(ids)
        if names is None:
            return docs
        wanted = (names,) if isinstance(names, str) else tuple(names)
        return [None if d is None else {n: d[n] for n in wanted if n in d} for d in docs]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        close = getattr(self.index, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, kind={self.kind!r}, count={self.manifest['count']})"


def load_bundle(path: str | os.PathLike, *, verify: bool | str = True, mmap: bool = True) -> Bundle:
    """Load and check a bundle.

    ``verify=True`` checks every file's size and sha256, ``"size"`` only sizes (fast, for huge
    bundles), ``False`` nothing beyond the manifest. Raises :class:`BundleError` (or its
    subclasses :class:`ChecksumMismatchError`, :class:`FormatVersionError`) naming the file.
    """
    if verify is not True and verify is not False and verify != "size":
        raise InvalidInputError(f"verify must be True, False or 'size', got {verify!r}")
    path = Path(path)
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        root = Path(os.path.realpath(path))
        try:
            return _load_version(path, root, verify, mmap)
        except (OSError, BundleError):
            # A writer swapped the link and removed the version we were reading: read the new one.
            if attempt < LOAD_ATTEMPTS and os.path.realpath(path) != str(root):
                log.info("bundle %s changed while loading; loading the new version", path)
                continue
            raise
    raise AssertionError("unreachable")


def _load_version(path: Path, root: Path, verify: bool | str, mmap: bool) -> Bundle:
    t = time.perf_counter()
    if not root.is_dir():
        raise BundleError(f"no bundle at {path}: not a directory")
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest["files"], checksums=verify is True)
    cls = _index_class(manifest["kind"])
    index = cls.load(root, mmap=mmap)
    if len(index) != manifest["count"]:
        raise BundleError(f"{root / MANIFEST}: records {manifest['count']} items, the index holds {len(index)}")
    store = None
    if DOCS in manifest["files"]:
        try:
            store = DocStore.open(root / DOCS, readonly=True)
        except StoreError as e:
            raise BundleError(f"{root / DOCS}: {e}") from e
    log.debug("loaded %s bundle %s in %.1f ms", manifest["kind"], root, (time.perf_counter() - t) * 1e3)
    return Bundle(path, root, manifest, index, store)


def read_manifest(path: str | os.PathLike) -> dict:
    """Read and check a bundle's manifest (``path`` is the bundle or the manifest file).

    Refuses a newer ``format_version`` with :class:`FormatVersionError`, anything malformed
    with :class:`BundleError`; both name the file.
    """
    path = Path(path)
    file = path if path.name == MANIFEST and not path.is_dir() else path / MANIFEST
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{file} is missing: {path} is not an index bundle (or its write never finished)") \
            from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{file} cannot be read: {e}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{file} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatVersionError(f"{file}: unknown format_version {version!r} (this embedx reads 1..{FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise FormatVersionError(f"{file}: format_version {version} was written by a newer embedx "
                                 f"(this one reads up to {FORMAT_VERSION}); upgrade embedx to load it")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise BundleError(f"{file} lacks required field(s) {missing}")
    if not isinstance(manifest["kind"], str):
        raise BundleError(f"{file}: kind must be a string, got {manifest['kind']!r}")
    count = manifest["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BundleError(f"{file}: count must be an integer >= 0, got {count!r}")
    _check_file_table(file, manifest["files"])
    return manifest


def _check_file_table(file: Path, files: Any) -> None:
    if not isinstance(files, dict):
        raise BundleError(f"{file}: 'files' must be an object of path -> {{sha256, bytes}}")
    for rel, entry in files.items():
        _check_relpath(rel, file)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) \
                or isinstance(entry.get("bytes"), bool) or not isinstance(entry.get("bytes"), int) \
                or entry["bytes"] < 0:
            raise BundleError(f"{file}: entry for {rel!r} must be {{'sha256': 64 hex digits, 'bytes': int >= 0}}")


def _check_relpath(rel: Any, where: Path | str) -> str:
    """A file path inside the bundle: relative, normalised, never escaping it."""
    plain = isinstance(rel, str) and rel and "\\" not in rel and not PurePosixPath(rel).is_absolute() \
        and all(part not in ("", ".", "..") for part in rel.split("/"))
    if not plain:
        raise BundleError(f"{where}: {rel!r} is not a plain relative path inside the bundle")
    if rel == MANIFEST:
        raise BundleError(f"{where}: an index may not write its own {MANIFEST}")
    return rel


def verify_files(root: str | os.PathLike, files: Mapping[str, Mapping], *, checksums: bool = True) -> None:
    """Check every listed file exists with its recorded size and, if ``checksums``, its sha256."""
    root = Path(root)
    for rel, entry in files.items():
        target = root / rel
        try:
            st = os.stat(target)
        except FileNotFoundError:
            raise BundleError(f"{target} is missing (listed in {root / MANIFEST})") from None
        if not os.path.isfile(target):
            raise BundleError(f"{target} is not a regular file")
        if st.st_size != entry["bytes"]:
            raise ChecksumMismatchError(f"{target} has {st.st_size} bytes, {MANIFEST} records {entry['bytes']} "
                                        f"(truncated or replaced)")
    if not checksums:
        return
    rels = list(files)
    for rel, digest in zip(rels, _parallel(file_sha256, [root / r for r in rels])):
        want = files[rel]["sha256"]
        if digest != want:
            raise ChecksumMismatchError(f"{root / rel}: sha256 {digest[:16]}... does not match {want[:16]}... "
                                        f"recorded in {MANIFEST} (the file is corrupt or was modified)")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        return _hash_stream(f)[0]


def _hash_stream(f) -> tuple[str, int]:
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    total = 0
    while n := f.readinto(buf):
        h.update(view[:n])
        total += n
    return h.hexdigest(), total


def _parallel(fn, items: list) -> list:
    """Map over files with a few threads (hashlib and I/O release the GIL)."""
    workers = min(len(items), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _index_class(kind: str) -> type:
    target = INDEX_KINDS.get(kind)
    if target is None:
        raise BundleError(f"unknown index kind {kind!r}; this embedx loads {sorted(INDEX_KINDS)}")
    if isinstance(target, type):
        return target
    module, _, name = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailableError(f"index kind {kind!r} needs {module}, which cannot be imported: {e}") from e
    cls = getattr(mod, name, None)
    if not isinstance(cls, type):
        raise BundleError(f"index kind {kind!r}: {module} has no class {name}")
    return cls


# ============================================================================ writing
def write_bundle(path: str | os.PathLike, index: Any, docs: Iterable[tuple[str, Mapping]] | Mapping | None = None,
                 *, encoder: Mapping | None = None, space_id: str | None = None,
                 extra: Mapping | None = None) -> Path:
    """Write ``index`` (and stored fields ``docs``) as a bundle at ``path``, atomically.

    ``encoder`` is ``{"name": str, "hash": str | None}`` (the model that made the vectors);
    ``space_id`` defaults to ``"encoder:<hash>"`` when the hash is known. Every id in ``docs``
    must be in the index (documents may be a subset). Returns ``path``.
    """
    out = Path(path)
    target = Path(os.path.abspath(out))
    parent, name = target.parent, target.name
    encoder = _check_encoder(encoder)
    space_id = _check_space_id(space_id, encoder)
    extra = _jsonable(dict(extra or {}), "extra")
    parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _writer_lock(parent, name):
        state, current = _inspect_target(target)
        _remove_stale(parent, name, keep=current)
        tmp = parent / f".{name}.tmp-{uuid.uuid4().hex}"
        os.mkdir(tmp)
        try:
            manifest = _build(tmp, index, docs, encoder, space_id, extra)
            version = f".{name}.v-{uuid.uuid4().hex}"
            os.rename(tmp, parent / version)
            fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            _publish(target, version, state)
        except BaseException:
            if not (target.is_symlink() and os.readlink(target) == version):
                shutil.rmtree(parent / version, ignore_errors=True)
            raise
        _remove_stale(parent, name, keep=version)
    size = sum(f["bytes"] for f in manifest["files"].values())
    log.info("wrote %s bundle %s: %d items, %d files, %.1f MiB in %.2f s", manifest["kind"], out,
             manifest["count"], len(manifest["files"]), size / 2**20, time.perf_counter() - t0)
    return out


def _build(directory: Path, index: Any, docs, encoder: dict | None, space_id: str | None, extra: dict) -> dict:
    """Fill a fresh directory: index files, docs store, fsync everything, manifest last."""
    fields = _index_fields(index)
    listed = index.save(directory)
    if not isinstance(listed, (list, tuple)):
        raise BundleError(f"{type(index).__name__}.save must return a list of relative paths, got {listed!r:.80}")
    doc_count = None
    if docs is not None:
        if DOCS in listed:
            raise BundleError(f"{type(index).__name__}.save wrote {DOCS}, a name reserved for stored fields")
        with DocStore.build(directory / DOCS, docs) as store:
            doc_count = len(store)
            _check_doc_ids(store, index)
    files = _collect_files(directory, listed)
    _make_readable(directory, files)
    entries = dict(zip(files, _parallel(_hash_and_sync, [directory / f for f in files])))
    _fsync_tree(directory)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": fields["kind"],
        **{k: fields[k] for k in TOP_LEVEL_INDEX_FIELDS if k in fields},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "encoder": encoder,
        "space_id": space_id,
        "files": {f: {"sha256": d, "bytes": n} for f, (d, n) in entries.items()},
        "index": fields,
        "docs": doc_count,
        "extra": extra,
    }
    # Written in place: the directory is private until published, so this needs no temp file.
    with open(directory / MANIFEST, "x", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(directory)
    return manifest


def _make_readable(directory: Path, files: Sequence[str]) -> None:
    """Give every file the mode a plain ``open()`` would (0666 less the umask).

    Files written through temporary files (``mkstemp``) are private (0600), but a bundle is
    read by other processes, a server often running as another user.
    """
    probe = directory / ".mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = stat.S_IMODE(os.stat(probe).st_mode)
    probe.unlink()
    for f in files:
        os.chmod(directory / f, mode)


def _index_fields(index: Any) -> dict:
    kind = getattr(index, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise InvalidInputError(f"{type(index).__name__} has no 'kind'; it does not follow the index protocol")
    fields = _jsonable(dict(index.manifest_fields()), "manifest_fields()")
    missing = [f for f in ("kind", "metric", "count") if f not in fields]
    if missing:
        raise BundleError(f"{type(index).__name__}.manifest_fields() lacks {missing}")
    if fields["kind"] != kind:
        raise BundleError(f"{type(index).__name__}.manifest_fields() says kind {fields['kind']!r}, "
                          f"the index says {kind!r}")
    if fields["count"] != len(index):
        raise BundleError(f"{type(index).__name__}.manifest_fields() says count {fields['count']}, "
                          f"the index holds {len(index)}")
    return fields


def _check_doc_ids(store: DocStore, index: Any) -> None:
    """Stored documents must belong to indexed items (a subset is fine)."""
    table = getattr(index, "ids", None)
    if table is None:
        log.warning("%s exposes no ids; stored document ids are not checked", type(index).__name__)
        return
    known = np.asarray(getattr(table, "array", table))
    stored = np.array(list(store.ids()), dtype=str)
    if not stored.size:
        return
    outside = stored[~np.isin(stored, known)]
    if outside.size:
        raise InvalidInputError(f"{outside.size} stored document id(s) are not in the index, "
                                f"for example {outside[0]!r}")


def _collect_files(directory: Path, listed: Sequence[str]) -> list[str]:
    """Every file under ``directory`` (so nothing escapes the checksums), after checking ``listed``."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory):
        for n in filenames + dirnames:
            full = Path(dirpath) / n
            if full.is_symlink():
                raise BundleError(f"{full} is a symbolic link; bundle files must be regular files")
        for n in filenames:
            found.add((Path(dirpath) / n).relative_to(directory).as_posix())
    for rel in listed:
        _check_relpath(rel, "index.save()")
        if rel not in found:
            raise BundleError(f"index.save() listed {rel!r} but did not write it")
    unlisted = found - set(listed) - {DOCS}
    if unlisted:
        log.warning("index.save() wrote files it did not list; checksumming them too: %s", sorted(unlisted)[:5])
    return sorted(found)


def _hash_and_sync(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        digest, size = _hash_stream(f)
        os.fsync(f.fileno())
    return digest, size


def _fsync_tree(directory: Path) -> None:
    for dirpath, _, _ in os.walk(directory, topdown=False):
        fsync_dir(dirpath)


def _check_encoder(encoder: Mapping | None) -> dict | None:
    if encoder is None:
        return None
    if not isinstance(encoder, Mapping) or not isinstance(encoder.get("name"), str) or not encoder["name"]:
        raise InvalidInputError(f"encoder must be {{'name': str, 'hash': str or None}}, got {encoder!r:.120}")
    digest = encoder.get("hash")
    if digest is not None and (not isinstance(digest, str) or not digest):
        raise InvalidInputError(f"encoder hash must be a non-empty string or None, got {digest!r}")
    return _jsonable({**encoder, "hash": digest}, "encoder")


def _check_space_id(space_id: str | None, encoder: dict | None) -> str | None:
    if space_id is not None:
        if not isinstance(space_id, str) or not space_id:
            raise InvalidInputError(f"space_id must be a non-empty string, got {space_id!r}")
        return space_id
    if encoder is not None and encoder["hash"] is not None:
        return f"encoder:{encoder['hash']}"
    return None


def _jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (numpy scalars and arrays converted), or a clear error."""
    def convert(o):
        if isinstance(o, (np.generic, np.ndarray)):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")
    try:
        return json.loads(json.dumps(value, default=convert, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what} must be JSON-serialisable: {e}") from None


# ---------------------------------------------------------------- the swap
def _version_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(name)}\.v-[0-9a-f]{{32}}")


def _inspect_target(target: Path) -> tuple[str, str | None]:
    """What ``target`` is now: ("absent" | "link" | "dir", current version name), or refuse."""
    if target.is_symlink():
        current = os.readlink(target)
        if not _version_pattern(target.name).fullmatch(current):
            raise BundleError(f"refusing to replace {target}: it is a symbolic link to {current!r}, "
                              f"which embedx did not write")
        return "link", current
    if not target.exists():
        return "absent", None
    if not target.is_dir():
        raise BundleError(f"refusing to replace {target}: it is not a directory")
    if any(target.iterdir()):
        try:
            manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
            ours = isinstance(manifest, dict) and "format_version" in manifest and "files" in manifest
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise BundleError(f"refusing to replace {target}: a non-empty directory that is not an embedx "
                              f"bundle (no valid {MANIFEST}); remove it or choose another path")
    return "dir", None


def _publish(target: Path, version: str, state: str) -> None:
    """Point ``target`` at ``version`` in one atomic rename."""
    parent, name = target.parent, target.name
    link = parent / f".{name}.link-{uuid.uuid4().hex}"
    os.symlink(version, link)
    try:
        if state == "dir" and not _exchange(link, target):
            # No RENAME_EXCHANGE here: move the old directory aside, then link (briefly no bundle).
            aside = parent / f".{name}.old-{uuid.uuid4().hex}"
            log.warning("replacing directory %s non-atomically (renameat2 exchange unavailable)", target)
            os.rename(target, aside)
            os.replace(link, target)
        elif state != "dir":
            os.replace(link, target)
        fsync_dir(parent)
    except BaseException:
        if link.is_symlink():
            link.unlink()
        raise


def _remove_stale(parent: Path, name: str, keep: str | None) -> None:
    """Delete this bundle's leftovers: temp builds, spare links, old versions (not ``keep``)."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:tmp|link|old|v)-[0-9a-f]{{32}}")
    for entry in os.scandir(parent):
        if entry.name == keep or not pattern.fullmatch(entry.name):
            continue
        log.debug("removing stale %s", entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


@contextlib.contextmanager
def _writer_lock(parent: Path, name: str) -> Iterator[None]:
    """One writer per bundle path at a time; the kernel drops the lock if the writer dies."""
    fd = os.open(parent / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
