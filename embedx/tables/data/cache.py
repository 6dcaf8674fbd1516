"""A cache of processed data sets: one folder per settings hash, written atomically.

Reading MovieLens, encoding its fields and sampling negatives takes seconds; loading the
processed int32 arrays takes milliseconds. The key hashes everything the arrays depend
on: the reader's name and format version, its options, and the size and modification
time of every source file, so a changed file or option never reads a stale cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from indexing.fsutil import fsync_dir

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    """``$EMBEDX_CACHE/tables``, else ``$XDG_CACHE_HOME/embedx/tables``, else ``~/.cache/embedx/tables``."""
    env = os.environ.get("EMBEDX_CACHE")
    if env:
        return Path(env).expanduser() / "tables"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "embedx" / "tables"


def settings_key(name: str, settings: dict[str, Any], sources: Sequence[Path]) -> str:
    """A short hex key of the settings and the identity (size, mtime) of the source files."""
    stamp = []
    for p in sources:
        st = Path(p).stat()
        stamp.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"name": name, "settings": settings, "sources": stamp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success fsync its files and rename it to ``path``.

    If ``path`` appeared meanwhile (another process finished the same work), ours is
    discarded: the content is keyed, so both are the same. On an exception nothing is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                fd = os.open(child, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            log.debug("%s was written concurrently; keeping that copy", path)
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
