"""Line-oriented text files, plain or gzip (chosen by a ``.gz`` suffix): JSON lines and the
shared helpers the TSV and TREC readers use.

Readers yield 1-based line numbers with every line so each error can say ``file:line``; a
truncated or corrupt gzip stream becomes a :class:`DataFormatError` instead of a bare
``EOFError``. Writers are atomic (temporary sibling, fsync, rename) and deterministic (gzip
header without a timestamp or file name), so writing the same rows twice gives the same bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import zlib
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping

from indexing.fsutil import atomic_open

from .errors import DataFormatError

_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip_path(path: str | os.PathLike) -> bool:
    """Compression is chosen by name, never sniffed, so reading and writing agree."""
    return os.fspath(path).endswith(".gz")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for every line, without its line ending (``\\n`` or ``\\r\\n``).

    Lines are decoded as UTF-8 one at a time, so a bad byte is reported with its line; a
    UTF-8 byte-order mark at the start is dropped.
    """
    path = Path(path)
    gz = is_gzip_path(path)
    lineno = 0
    with open(path, "rb") as raw:
        if not gz and raw.peek(2)[:2] == _GZIP_MAGIC:
            raise DataFormatError("looks gzip-compressed, but the name does not end in .gz", path)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        try:
            for lineno, data in enumerate(stream, 1):
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path, lineno) from None
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield lineno, text.rstrip("\r\n")
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            where = f"after line {lineno}" if lineno else "at the start"
            raise DataFormatError(f"truncated or corrupt gzip data {where} ({e})", path) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for every non-blank line; anything but a JSON object is an error."""
    loads = json.loads
    for lineno, text in iter_lines(path):
        if not text or text.isspace():
            continue
        try:
            row = loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"invalid JSON ({e})", path, lineno) from None
        if type(row) is not dict:
            raise DataFormatError(f"expected a JSON object, got {type(row).__name__}", path, lineno)
        yield lineno, row


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The JSON objects of a ``.jsonl`` or ``.jsonl.gz`` file, blank lines skipped."""
    for _, row in iter_jsonl(path):
        yield row


@contextlib.contextmanager
def open_text_writer(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A UTF-8 text stream (``\\n`` line endings) that atomically replaces ``path`` on success.

    A ``.gz`` path is gzip-compressed with a fixed header (no mtime, no name) so output is
    reproducible byte for byte. On an exception ``path`` is left untouched.
    """
    path = Path(path)
    with atomic_open(path, "wb") as raw:
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) \
            if is_gzip_path(path) else None
        text = io.TextIOWrapper(gz if gz is not None else raw, encoding="utf-8", newline="\n")
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # leave ``raw`` open: atomic_open fsyncs and renames it
            if gz is not None:
                gz.close()  # writes the gzip trailer; does not close ``raw``


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping]) -> int:
    """Write one JSON object per line (atomically; gzip when the name ends in ``.gz``).

    Returns the number of rows. Non-ASCII text is kept as UTF-8; NaN or infinity is refused
    because it is not JSON.
    """
    dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(", ", ": ")).encode
    n = 0
    with open_text_writer(path) as f:
        for n, row in enumerate(rows, 1):
            if not isinstance(row, Mapping):
                raise TypeError(f"{path}: row {n} is a {type(row).__name__}, not a mapping")
            f.write(dumps(row if isinstance(row, dict) else dict(row)))
            f.write("\n")
    return n
