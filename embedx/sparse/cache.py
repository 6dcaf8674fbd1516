"""A cache of corpus and query encodings keyed by what they depend on.

Encoding SciFact with SPLADE-tiny in torch takes minutes on two cores, so teachers
(:mod:`embedx.sparse.prepare`) and evaluation (:mod:`embedx.sparse.evaluate`) encode each text
set once per model: the file name carries the model's content hash, the role (documents or
queries), the encoding settings and a hash of the texts, so a changed model, text or setting
can never read a stale entry. Dense encodings are ``.npy``, sparse ones scipy ``.npz``; both
load without pickle.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import paths

log = logging.getLogger(__name__)

_FOLDER_HASHES: dict[tuple, str] = {}


def default_cache_dir() -> Path:
    """``$EMBEDX_CACHE/sparse``, else ``$XDG_CACHE_HOME/embedx/sparse``, else ``~/.cache/embedx/sparse``."""
    return paths.cache_dir("sparse")


def folder_hash(folder: str | os.PathLike) -> str:
    """sha256 (16 hex) of every file's relative path and bytes under a model folder, memoised
    per (path, sizes, mtimes) so a process hashes an unchanged folder once."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no model folder at {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(root).parts))
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root.resolve()), stamp)
    if key not in _FOLDER_HASHES:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _FOLDER_HASHES[key] = h.hexdigest()[:16]
    return _FOLDER_HASHES[key]


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def cached_encoding(cache_dir: str | os.PathLike | None, key: str, texts: Sequence[str],
                    encode: Callable[[Sequence[str]], object]):
    """``encode(texts)`` (a float32 array or a scipy.sparse matrix), read from / written to
    ``cache_dir/<key>-<texts hash>.npy|.npz``; no caching when ``cache_dir`` is None."""
    from scipy import sparse

    from indexing.fsutil import atomic_open

    if cache_dir is None:
        return encode(texts)
    base = Path(cache_dir) / f"{key}-{texts_hash(texts)}"
    dense_path, sparse_path = base.with_suffix(".npy"), base.with_suffix(".npz")
    if dense_path.is_file():
        log.info("cached encodings: %s", dense_path)
        return np.load(dense_path, allow_pickle=False)
    if sparse_path.is_file():
        log.info("cached encodings: %s", sparse_path)
        return sparse.load_npz(sparse_path).tocsr()
    out = encode(texts)
    base.parent.mkdir(parents=True, exist_ok=True)
    if sparse.issparse(out):
        with atomic_open(sparse_path, "wb", encoding=None) as f:
            sparse.save_npz(f, sparse.csr_matrix(out), compressed=True)
    else:
        out = np.asarray(out, dtype=np.float32)
        with atomic_open(dense_path, "wb", encoding=None) as f:
            np.save(f, out, allow_pickle=False)
    return out
