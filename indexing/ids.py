"""External string ids for index rows, stored as a plain numpy unicode array (``ids.npy``).

A ``.npy`` file loads memory-mapped and needs no pickle, so a bundle from elsewhere is
safe to open; mapping result rows to ids is one vectorised fancy-index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .fsutil import atomic_open
from .validation import check_ids

IDS_FILE = "ids.npy"


class IdTable:
    """Row number <-> external id. Rows are 0..n-1 in insertion order."""

    def __init__(self, ids: np.ndarray):
        self.array = ids
        self._row_of: dict[str, int] | None = None

    @classmethod
    def from_ids(cls, ids: Sequence[str], n: int | None = None) -> "IdTable":
        return cls(check_ids(ids, n))

    def extend(self, ids: Sequence[str]) -> "IdTable":
        """A new table with ``ids`` appended; refuses ids already present."""
        new = check_ids(ids)
        if len(self.array):
            clash = np.intersect1d(self.array, new)
            if len(clash):
                from .errors import InvalidInputError
                raise InvalidInputError(f"id {clash[0]!r} is already in the index")
        if not len(self.array):
            return IdTable(new)
        width = max(self.array.dtype.itemsize, new.dtype.itemsize) // 4
        return IdTable(np.concatenate([self.array.astype(f"<U{width}"), new.astype(f"<U{width}")]))

    def __len__(self) -> int:
        return len(self.array)

    def row(self, external_id: str) -> int | None:
        """Row of an external id, or None. Builds the reverse map on first use."""
        if self._row_of is None:
            self._row_of = {x: i for i, x in enumerate(self.array.tolist())}
        return self._row_of.get(external_id)

    def save(self, directory: str | Path) -> str:
        with atomic_open(Path(directory) / IDS_FILE, "wb") as f:
            np.save(f, self.array, allow_pickle=False)
        return IDS_FILE

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> "IdTable":
        arr = np.load(Path(directory) / IDS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        return cls(arr)
