"""The one error type of the data readers.

A bad data file is a user mistake, not a bug, so the error is a ``ValueError`` that always says
*where* the problem is (``file:line: what``); the command line prints it as a one-line message.
"""

from __future__ import annotations

import operator
import os


class DataFormatError(ValueError):
    """A data file is malformed or inconsistent.

    ``str(error)`` reads ``path:line: message`` (or ``path: message`` when no single line is to
    blame); ``path`` and ``line`` are also kept as attributes for programs.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.reason = message
        if self.path is None:
            text = message
        elif line is None:
            text = f"{self.path}: {message}"
        else:
            text = f"{self.path}:{line}: {message}"
        super().__init__(text)

    def __reduce__(self):  # keep path/line across pickling (multiprocessing workers)
        return (type(self), (self.reason, self.path, self.line))


def integer_grade(qid: str, doc_id: str, grade, path) -> int:
    """A relevance grade as an int, or a DataFormatError naming the pair (bools are refused:
    ``True`` would silently become grade 1)."""
    if not isinstance(grade, bool):
        try:
            return operator.index(grade)
        except TypeError:
            pass
    raise DataFormatError(f"grade of ({qid!r}, {doc_id!r}) must be an integer, got {grade!r}", path)
