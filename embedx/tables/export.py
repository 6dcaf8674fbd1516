"""The torch-free serving form of a compressed table: numpy arrays plus a JSON-able config.

``CompressedTable.export()`` returns an :class:`ExportedTable`; ``save`` writes it as one
``.npy`` file per array and a ``table.json`` manifest (atomically, no pickle), and
:class:`indexing.table_store.TableStore` loads that directory and answers lookups with numpy
alone. This module imports no torch, so serving code may use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexing.table_lookups import aligned_empty
from indexing.table_store import TableStore, read_table, write_table

__all__ = ["ExportedTable"]


@dataclass
class ExportedTable:
    """Everything a method needs at inference: ``arrays`` are exactly what ``memory_bytes()`` counts."""

    method: str
    config: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        json.dumps(self.config)  # fail early on a config that cannot be saved
        self.arrays = {k: np.ascontiguousarray(v) for k, v in self.arrays.items()}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table directory atomically (replacing an existing table there)."""
        return write_table(path, self.method, self.config, self.arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False, verify: bool = True) -> "ExportedTable":
        method, config, arrays = read_table(path, mmap=mmap, verify=verify)
        return cls(method, config, arrays)

    def to_store(self, copy: bool = False) -> TableStore:
        """A :class:`TableStore` over these arrays, without a round trip through disk.

        By default the store shares the arrays (for a table just exported from torch: torch's
        memory). ``copy=True`` gives it the memory :meth:`TableStore.load` would: fresh numpy
        buffers on cache-line boundaries (which numpy also backs with huge pages where the OS
        allows), so lookups are timed as served."""
        arrays = self.arrays
        if copy:
            arrays = {}
            for name, a in self.arrays.items():
                arrays[name] = aligned_empty(a.shape, a.dtype)
                arrays[name][...] = a
        return TableStore(self.method, self.config, arrays)
