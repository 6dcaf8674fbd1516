"""What the server has loaded: collections of retrievers, leased per request, swapped atomically.

A *retriever* is one bundle plus the encoder for its text queries (``"bundle"`` for a lexical
bundle's own encoding, else an encoder folder). A *collection* is a sparse and/or a dense
retriever with its defaults; each loaded state of it is an immutable
:class:`CollectionVersion` with a generation number.

Hot swap: a request takes a lease on the collection's current version and keeps it until
its last stage (even past a timeout, since its thread keeps running). A swap loads and checks
the new retrievers first, then replaces the current version under a lock in one step; the
old version's retrievers are closed when the last lease on it ends. Retrievers the swap did
not touch are shared by both versions and stay open. So a request sees one version from start
to end, and nothing is closed under it.

Compatibility: an encoder must write into the space the bundle's vectors live in. The
bundle's manifest records ``space_id``; an encoder's space is its ``space_id``, or
``encoder:<hash>`` when it sets none (the bundle default for vectors made by that very
encoder). A mismatch, a wrong kind or a wrong width is refused: 409 for a swap, a
:class:`~serving.config.ConfigError` at startup.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from indexing.bundle import Bundle, load_bundle
from serving.batching import MicroBatcher
from serving.config import BUNDLE_ENCODER, Collection, ConfigError, Fusion, ServerConfig
from serving.encoders.base import QueryEncoder, load_encoder

log = logging.getLogger(__name__)

SIDE_KINDS = {"sparse": ("sparse", "lucene-impact", "lucene-bm25"), "dense": ("dense",)}
TEXT_QUERY_ENCODERS = ("analyzer-counts", "text")   # lexical bundles that encode their own queries
IN_PROCESS_KINDS = ("sparse", "dense")               # indexes searched in this process (no JVM)


class IncompatibleError(ValueError):
    """An encoder that does not fit a bundle: other representation space, kind or width."""


class LoadError(ValueError):
    """A bundle or encoder that cannot be loaded (missing, damaged, wrong kind)."""


class Retriever:
    """One bundle and the encoder of its text queries."""

    def __init__(self, side: str, bundle: Bundle, encoder: QueryEncoder | None, bundle_ref: str, encoder_ref: str,
                 batcher: MicroBatcher | None):
        self.side = side
        self.bundle = bundle
        self.encoder = encoder           # None: the bundle's own lexical encoding
        self.bundle_ref = bundle_ref     # as written in the config or swap request
        self.encoder_ref = encoder_ref
        self.batcher = batcher
        self.loaded_at = time.time()
        self.refs = 0                    # versions holding this retriever (guarded by the state lock)
        self._term_ids: dict[str, int] | None = None

    # ---------------------------------------------------------------- queries
    @property
    def takes_vectors(self) -> bool:
        return self.bundle.kind != "lucene-bm25"

    @property
    def width(self) -> int | None:
        """Dense dimension or sparse vocabulary size of the index."""
        m = self.bundle.manifest
        return m.get("dimension") if self.side == "dense" else m.get("vocab_size")

    def fits_event_loop(self, text: bool) -> bool:
        """Whether a search here may run on the server's event loop (when measured short): the
        index is searched in this process (not behind Lucene's JVM), and text queries never run a
        model in the calling thread (the bundle's own lexical encoding, or a micro-batcher's
        thread, which the loop awaits)."""
        return self.bundle.kind in IN_PROCESS_KINDS and (not text or self.encoder is None or self.batcher is not None)

    def encode_later(self, texts: list[str]) -> Future:
        """Start encoding; a future of the query batch (already done unless a micro-batcher has it)."""
        if self.batcher is not None:
            return self.batcher.submit(texts)
        if self.encoder is None:
            from embedx.retrieval import encode_queries
            return _done(encode_queries(self.bundle, texts))
        return _done(self.encoder.encode(texts))

    def search(self, queries: Any, k: int):
        return self.bundle.search(queries, k)

    def vocabulary(self) -> dict[str, int] | None:
        """Term -> column, for sparse vectors given as ``{token: weight}``."""
        if self._term_ids is None:
            terms = getattr(self.bundle.index, "vocab", None)
            if terms is None and self.encoder is not None and hasattr(self.encoder, "vocabulary"):
                terms = self.encoder.vocabulary()
            if terms is None:
                return None
            self._term_ids = {t: i for i, t in enumerate(terms) if t}
        return self._term_ids

    # ---------------------------------------------------------------- reporting
    def describe(self, manifest: bool = True) -> dict:
        m = self.bundle.manifest
        if self.encoder is None:
            enc = {"type": BUNDLE_ENCODER, "query_encoder": (m.get("extra") or {}).get("query_encoder")}
        else:
            enc = dict(self.encoder.describe())
            enc["folder"] = self.encoder_ref
        out = {"bundle": self.bundle_ref, "version_dir": self.bundle.root.name, "kind": self.bundle.kind,
               "count": m.get("count"), "space_id": m.get("space_id"), "encoder": enc,
               "takes_vectors": self.takes_vectors, "width": self.width,
               "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}
        if manifest:
            out["manifest"] = m
        return out

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.bundle.close()
        close = getattr(self.encoder, "close", None)
        if callable(close):
            close()
        log.info("closed %s retriever %s", self.side, self.bundle_ref)


@dataclass(eq=False)
class CollectionVersion:
    """One immutable state of a collection. Requests hold leases on it."""

    name: str
    generation: int
    settings: Collection
    sparse: Retriever | None
    dense: Retriever | None
    leases: int = 0
    retired: bool = False
    released: bool = False
    created: float = field(default_factory=time.time)

    @property
    def retrievers(self) -> list[Retriever]:
        return [r for r in (self.sparse, self.dense) if r is not None]

    @property
    def default_mode(self) -> str:
        return self.settings.mode

    @property
    def fusion(self) -> Fusion:
        return self.settings.fusion

    def side(self, name: str) -> Retriever | None:
        return self.sparse if name == "sparse" else self.dense

    def fields(self, ids: list[str], names: list[str] | None) -> list[dict | None]:
        """Stored fields of each id, from the first retriever whose bundle has them."""
        out: list[dict | None] = [None] * len(ids)
        for r in self.retrievers:
            missing = [i for i, v in enumerate(out) if v is None]
            if not missing:
                break
            if r.bundle.store is None:
                continue
            got = r.bundle.fields([ids[i] for i in missing], names)
            for i, v in zip(missing, got):
                out[i] = v
        return out

    def describe(self, manifest: bool = True) -> dict:
        return {"generation": self.generation, "default_mode": self.default_mode,
                "modes": self.modes, "fusion": self.fusion.model_dump(), "fields": self.settings.fields,
                "sparse": self.sparse.describe(manifest) if self.sparse else None,
                "dense": self.dense.describe(manifest) if self.dense else None}

    @property
    def modes(self) -> list[str]:
        out = [s for s in ("sparse", "dense") if self.side(s) is not None]
        return out + ["hybrid"] if len(out) == 2 else out


class ServerState:
    """The loaded collections; thread-safe."""

    def __init__(self, config: ServerConfig, metrics=None):
        self.config = config
        self.metrics = metrics
        self._current: dict[str, CollectionVersion] = {}
        self._lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self.closed = False

    # ---------------------------------------------------------------- loading
    def load_all(self) -> None:
        """Load every configured collection; a problem is a :class:`ConfigError` naming it."""
        if any(c.dense for c in self.config.collections.values()) and self.config.faiss_threads:
            import faiss  # noqa: F401 - loaded here so that _pin_faiss_threads finds it
            _pin_faiss_threads(self.config.faiss_threads)
        try:
            for name, coll in self.config.collections.items():
                sparse = dense = None
                if coll.sparse:
                    sparse = self._load_side(name, "sparse", coll.sparse.bundle, coll.sparse.encoder)
                try:
                    if coll.dense:
                        dense = self._load_side(name, "dense", coll.dense.bundle, coll.dense.encoder)
                except BaseException:
                    if sparse is not None:
                        sparse.close()
                    raise
                self._install(CollectionVersion(name, 1, coll, sparse, dense))
        except (LoadError, IncompatibleError) as e:
            self.close()
            raise ConfigError(f"collection {name!r}: {e}") from None
        except BaseException:
            self.close()
            raise

    def _load_side(self, collection: str, side: str, bundle_ref: str, encoder_ref: str) -> Retriever:
        bundle = _load_bundle(self.config.resolve(bundle_ref), self.config.verify)
        encoder = batcher = None
        try:
            if bundle.kind not in SIDE_KINDS[side]:
                raise LoadError(f"{side} bundle {bundle_ref} is a {bundle.kind!r} bundle; "
                                f"a {side} entry takes {' or '.join(SIDE_KINDS[side])}")
            if encoder_ref != BUNDLE_ENCODER:
                encoder = _load_encoder(self.config.resolve(encoder_ref))
            check_compatible(bundle, encoder, side, bundle_ref, encoder_ref)
            b = self.config.batching
            if encoder is not None and b.max_batch > 1:
                on_batch = self.metrics.batch_callback(collection, side) if self.metrics else None
                batcher = MicroBatcher(encoder.encode, max_batch=b.max_batch, max_wait_ms=b.max_wait_ms,
                                       workers=b.workers, name=f"{collection}.{side}", on_batch=on_batch)
        except BaseException:
            bundle.close()
            raise
        log.info("loaded %s %s: bundle %s (%s, %d items), encoder %s", collection, side, bundle_ref, bundle.kind,
                 len(bundle), encoder_ref)
        return Retriever(side, bundle, encoder, bundle_ref, encoder_ref, batcher)

    def _install(self, version: CollectionVersion) -> None:
        """Make ``version`` current; close what the old one alone held once its leases end."""
        with self._lock:
            for r in version.retrievers:
                r.refs += 1
            old = self._current.get(version.name)
            self._current[version.name] = version
            to_close = self._retire(old) if old is not None else []
        if self.metrics is not None:
            self.metrics.generation.labels(version.name).set(version.generation)
        _close_all(to_close)

    def _retire(self, version: CollectionVersion) -> list[Retriever]:
        """Mark ``version`` old; if nobody holds it, drop its retrievers (caller holds the lock)."""
        version.retired = True
        if version.leases or version.released:
            return []
        version.released = True
        out = []
        for r in version.retrievers:
            r.refs -= 1
            if r.refs == 0:
                out.append(r)
        return out

    # ---------------------------------------------------------------- requests
    @property
    def names(self) -> list[str]:
        return list(self._current)

    def current(self, name: str) -> CollectionVersion | None:
        return self._current.get(name)

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[CollectionVersion]:
        """Hold the current version of collection ``name`` for the duration of a request."""
        _pin_faiss_threads(self.config.faiss_threads)
        with self._lock:
            version = self._current.get(name)
            if version is None:
                raise KeyError(name)
            version.leases += 1
        try:
            yield version
        finally:
            with self._lock:
                version.leases -= 1
                to_close = self._retire(version) if version.retired and not version.leases else []
            _close_all(to_close)

    # ---------------------------------------------------------------- hot swap
    def swap(self, name: str, sides: dict[str, dict[str, str | None]]) -> CollectionVersion:
        """Load new retrievers for ``sides`` (``{"dense": {"bundle": ..., "encoder": ...}}``; a missing
        or null value keeps the current path, so ``{}`` reloads that side) and switch atomically.

        Raises ``KeyError`` for an unknown collection, :class:`LoadError` or
        :class:`IncompatibleError` (nothing changes then).
        """
        with self._swap_lock:
            old = self._current.get(name)
            if old is None:
                raise KeyError(name)
            loaded: dict[str, Retriever] = {}
            try:
                for side, spec in sides.items():
                    current = old.side(side)
                    bundle_ref = spec.get("bundle") or (current.bundle_ref if current else None)
                    encoder_ref = spec.get("encoder") or (current.encoder_ref if current else None)
                    if bundle_ref is None:
                        raise LoadError(f"collection {name!r} has no {side} retriever; give a bundle to add one")
                    if encoder_ref is None:
                        encoder_ref = BUNDLE_ENCODER
                    if side == "dense" and encoder_ref == BUNDLE_ENCODER:
                        raise LoadError("a dense retriever needs an encoder folder")
                    loaded[side] = self._load_side(name, side, bundle_ref, encoder_ref)
            except BaseException:
                _close_all(loaded.values())
                if self.metrics is not None:
                    self.metrics.swaps.labels(name, "refused").inc()
                raise
            new = CollectionVersion(name, old.generation + 1, old.settings,
                                    loaded.get("sparse", old.sparse), loaded.get("dense", old.dense))
            self._install(new)
        if self.metrics is not None:
            self.metrics.swaps.labels(name, "ok").inc()
        log.info("collection %s is now generation %d (%s swapped)", name, new.generation, ", ".join(sides))
        return new

    # ---------------------------------------------------------------- reporting, shutdown
    def describe(self, manifest: bool = True) -> dict:
        with self._lock:
            versions = dict(self._current)
        return {name: v.describe(manifest) for name, v in versions.items()}

    @property
    def ready(self) -> bool:
        return not self.closed and set(self._current) == set(self.config.collections)

    def close(self) -> None:
        """Retire every version; retrievers close now or when their last request ends."""
        with self._lock:
            self.closed = True
            to_close = []
            for version in self._current.values():
                to_close += self._retire(version)
            self._current.clear()
        _close_all(to_close)


def check_compatible(bundle: Bundle, encoder: QueryEncoder | None, side: str, bundle_ref: str = "",
                     encoder_ref: str = "") -> None:
    """Refuse an encoder that cannot produce queries for ``bundle`` (see the module docstring)."""
    label = bundle_ref or str(bundle.path)
    if encoder is None:
        enc = ((bundle.manifest.get("extra") or {}).get("query_encoder") or {}).get("type")
        if enc not in TEXT_QUERY_ENCODERS:
            raise IncompatibleError(f"bundle {label} has no query encoding of its own (query_encoder={enc!r}); "
                                    f"name an encoder folder for it")
        return
    if encoder.kind != side:
        raise IncompatibleError(f"encoder {encoder_ref} makes {encoder.kind} vectors; the {side} bundle {label} "
                                f"needs {side} ones")
    width_key = "dimension" if side == "dense" else "vocab_size"
    width = bundle.manifest.get(width_key)
    if width is None:
        raise IncompatibleError(f"bundle {label} ({bundle.kind}) takes no {side} query vectors")
    if int(encoder.dimension) != int(width):
        raise IncompatibleError(f"encoder {encoder_ref} writes {encoder.dimension}-wide vectors; bundle {label} "
                                f"has {width_key} {width}")
    space = encoder_space(encoder)
    if bundle.space_id is None:
        log.warning("bundle %s records no space_id; cannot check that encoder %s (space %s) matches it",
                    label, encoder_ref, space)
    elif space != bundle.space_id:
        raise IncompatibleError(f"encoder {encoder_ref} writes into space {space!r}, but bundle {label} was built "
                                f"in space {bundle.space_id!r}; their vectors are not comparable")


def encoder_space(encoder: QueryEncoder) -> str:
    return encoder.space_id or f"encoder:{encoder.encoder_hash}"


def _load_bundle(path: Path, verify) -> Bundle:
    from indexing.errors import EmbedxIndexError
    try:
        return load_bundle(path, verify=verify)
    except (EmbedxIndexError, OSError, ValueError) as e:
        raise LoadError(f"cannot load bundle {path}: {e}") from None


def _load_encoder(folder: Path) -> QueryEncoder:
    try:
        encoder = load_encoder(folder)
    except ImportError as e:
        raise LoadError(f"cannot load encoder {folder}: a module it needs is missing ({e})") from None
    except (OSError, ValueError) as e:
        raise LoadError(f"cannot load encoder {folder}: {e}") from None
    for attr in ("kind", "dimension", "encoder_hash", "encode", "describe"):
        if not hasattr(encoder, attr):
            raise LoadError(f"encoder {folder} ({type(encoder).__name__}) has no {attr!r}")
    return encoder


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


_thread = threading.local()


def _pin_faiss_threads(n: int | None) -> None:
    """OpenMP's thread count is a per-thread setting: FAISS searches in a thread that never set
    it use every core (and leave OpenMP workers spinning). So each thread that searches sets
    ``faiss_threads`` once, when it first takes a lease (or loads), if FAISS is in use at all."""
    if n and getattr(_thread, "faiss_threads", None) != n and "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)
        _thread.faiss_threads = n


def _close_all(retrievers) -> None:
    for r in retrievers:
        try:
            r.close()
        except Exception:  # noqa: BLE001 - closing must not fail a request or a swap
            log.exception("closing retriever %s failed", r.bundle_ref)
