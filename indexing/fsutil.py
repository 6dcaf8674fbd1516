"""Durable, atomic file writes: write a temporary sibling, fsync it, rename over the target.

A reader sees either the old file or the new one, never a half-written file, and a crash
leaves at most a stray ``.tmp-*`` sibling. :func:`atomic_directory` does the same for a
folder of files (caches, checkpoints).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

log = logging.getLogger(__name__)


def _default_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_FILE_MODE = _default_mode()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush every file directly in ``path``, then the folder's entries, before it is renamed
    into place: a crash after the rename never leaves a published folder with empty files."""
    for child in Path(path).iterdir():
        if child.is_file():
            fd = os.open(child, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it into place.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if "b" in mode:
        encoding = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; readers may be other users
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success fsync its files and rename it to ``path``.

    If ``path`` appeared meanwhile (another process finished the same work), ours is
    discarded: callers key the folder by its content, so both are the same. On an exception
    nothing is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        fsync_folder(tmp)
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
