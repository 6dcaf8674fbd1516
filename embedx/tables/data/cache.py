"""A cache of processed data sets: one folder per settings hash, written atomically.

Reading MovieLens, encoding its fields and sampling negatives takes seconds; loading the
processed int32 arrays takes milliseconds. The key hashes everything the arrays depend
on: the reader's name and format version, its options, and the size and modification
time of every source file, so a changed file or option never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

# atomic_directory lives with the other atomic-write helpers; re-exported for old imports.
from indexing.fsutil import atomic_directory  # noqa: F401

from ... import paths


def default_cache_root() -> Path:
    """``$EMBEDX_CACHE/tables``, else ``$XDG_CACHE_HOME/embedx/tables``, else ``~/.cache/embedx/tables``."""
    return paths.cache_dir("tables")


def settings_key(name: str, settings: dict[str, Any], sources: Sequence[Path]) -> str:
    """A short hex key of the settings and the identity (size, mtime) of the source files."""
    stamp = []
    for p in sources:
        st = Path(p).stat()
        stamp.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"name": name, "settings": settings, "sources": stamp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
