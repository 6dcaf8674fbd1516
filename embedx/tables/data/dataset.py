"""Rows of categorical fields (one id or a bag of ids per field), labels, optional dense
features, and the batches the models eat.

A batch is one id tensor a :class:`~embedx.tables.base.CompressedTable` looks up directly:
``(B, F)`` int64 when every field has one id per row, else ``(B, F, L)`` with each row's
ids of a field in its bag, single-id fields in slot 0, padding ``-1`` (the table
mean-pools a bag). Rows are stored compactly as int32 arrays: single-id fields in one
``(N, F_single)`` array, multi-hot fields in one ``(N, F_multi, L)`` array; the batch
layout is assembled per batch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol, Sequence

import numpy as np
import torch

FORMAT_VERSION = 1


class TableDataError(ValueError):
    """Data that cannot be read or used: malformed files, unknown fields, bad arrays."""


@dataclass(frozen=True)
class FieldSpec:
    """A categorical field: ids ``0 .. cardinality-1``; ``bag`` > 1 for multi-hot fields."""

    name: str
    cardinality: int
    bag: int = 1

    @property
    def multi_hot(self) -> bool:
        return self.bag > 1


class Batch(NamedTuple):
    ids: torch.Tensor            # (B, F) or (B, F, L) int64, -1 = padding
    dense: torch.Tensor | None   # (B, D) float32
    labels: torch.Tensor         # (B,) float32 in {0, 1}


class BatchSource(Protocol):
    """Anything that yields batches of a fixed set of fields (in-memory rows or a stream)."""

    fields: tuple[FieldSpec, ...]
    num_dense: int

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0) -> Iterator[Batch]: ...


def num_batches(source: BatchSource, batch_size: int) -> int:
    return -(-len(source) // batch_size)


class ArrayDataset:
    """Rows in memory: ``single`` (N, F_single) int32, ``multi`` (N, F_multi, L) int32 padded
    with -1, ``labels`` (N,) uint8, ``dense`` (N, D) float32 or None."""

    def __init__(self, fields: Sequence[FieldSpec], single: np.ndarray, multi: np.ndarray | None,
                 labels: np.ndarray, dense: np.ndarray | None = None):
        self.fields = tuple(fields)
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise TableDataError(f"field names must be unique, got {names}")
        n = len(labels)
        n_single = sum(not f.multi_hot for f in self.fields)
        multi_fields = [f for f in self.fields if f.multi_hot]
        bag = max((f.bag for f in multi_fields), default=1)
        if multi is None:
            multi = np.zeros((n, 0, bag), np.int32)
        if single.dtype != np.int32 or single.shape != (n, n_single):
            raise TableDataError(f"single-id array must be int32 ({n}, {n_single}), got {single.dtype} {single.shape}")
        if multi.dtype != np.int32 or multi.shape != (n, len(multi_fields), bag):
            raise TableDataError(f"multi-hot array must be int32 ({n}, {len(multi_fields)}, {bag}), "
                                 f"got {multi.dtype} {multi.shape}")
        if dense is not None and (dense.dtype != np.float32 or dense.ndim != 2 or len(dense) != n):
            raise TableDataError(f"dense features must be float32 ({n}, D), got {dense.dtype} {dense.shape}")
        self.single = single
        self.multi = multi
        self.labels = np.asarray(labels, dtype=np.uint8)
        self.dense = dense
        self._single_pos = np.array([i for i, f in enumerate(self.fields) if not f.multi_hot], np.int64)
        self._multi_pos = np.array([i for i, f in enumerate(self.fields) if f.multi_hot], np.int64)
        self.bag = bag

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_dense(self) -> int:
        return 0 if self.dense is None else self.dense.shape[1]

    @property
    def cardinalities(self) -> list[int]:
        return [f.cardinality for f in self.fields]

    def validate(self) -> None:
        """Every id within its field's range (padding -1 only in bags); labels in {0, 1}."""
        cards = np.array([f.cardinality for f in self.fields if not f.multi_hot], np.int64)
        if self.single.size and ((self.single < 0).any() or (self.single >= cards).any()):
            col = int(np.nonzero(((self.single < 0) | (self.single >= cards)).any(0))[0][0])
            raise TableDataError(f"field {self.fields[self._single_pos[col]].name!r} has ids outside 0..{cards[col] - 1}")
        for j, pos in enumerate(self._multi_pos):
            f = self.fields[pos]
            bag = self.multi[:, j, :]
            if (bag < -1).any() or (bag >= f.cardinality).any():
                raise TableDataError(f"field {f.name!r} has ids outside 0..{f.cardinality - 1} (or < -1)")
        if (self.labels > 1).any():
            raise TableDataError("labels must be 0 or 1")

    def select(self, names: Sequence[str]) -> "ArrayDataset":
        """The same rows with only ``names`` (in that order); unknown names are an error."""
        index = {f.name: i for i, f in enumerate(self.fields)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise TableDataError(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                 f"the data has: {', '.join(index)}")
        if len(set(names)) != len(names) or not names:
            raise TableDataError(f"field selection must be non-empty and without repeats, got {list(names)}")
        fields = [self.fields[index[n]] for n in names]
        col = {int(p): j for j, p in enumerate(self._single_pos)}
        mcol = {int(p): j for j, p in enumerate(self._multi_pos)}
        single = self.single[:, [col[index[n]] for n in names if index[n] in col]]
        multi_sel = [mcol[index[n]] for n in names if index[n] in mcol]
        bag = max((f.bag for f in fields if f.multi_hot), default=1)
        multi = self.multi[:, multi_sel, :bag] if multi_sel else None
        return ArrayDataset(fields, np.ascontiguousarray(single), None if multi is None else np.ascontiguousarray(multi),
                            self.labels, self.dense)

    def batch(self, rows: np.ndarray) -> Batch:
        """Assemble the batch of the given row indices."""
        labels = torch.from_numpy(self.labels[rows].astype(np.float32))
        dense = None if self.dense is None else torch.from_numpy(self.dense[rows])
        if not len(self._multi_pos):
            return Batch(torch.from_numpy(self.single[rows].astype(np.int64)), dense, labels)
        ids = np.full((len(rows), len(self.fields), self.bag), -1, np.int64)
        ids[:, self._single_pos, 0] = self.single[rows]
        ids[:, self._multi_pos, :] = self.multi[rows]
        return Batch(torch.from_numpy(ids), dense, labels)

    # -- persistence (npy + JSON, no pickle) ---------------------------------------
    def save(self, folder: Path) -> None:
        """Write into an existing (temporary) folder; the caller makes the folder atomic."""
        np.save(folder / "single.npy", self.single)
        np.save(folder / "multi.npy", self.multi)
        np.save(folder / "labels.npy", self.labels)
        if self.dense is not None:
            np.save(folder / "dense.npy", self.dense)
        meta = {"format_version": FORMAT_VERSION, "fields": [asdict(f) for f in self.fields]}
        (folder / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "ArrayDataset":
        meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise TableDataError(f"{folder}: dataset format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        fields = [FieldSpec(**f) for f in meta["fields"]]
        dense_path = folder / "dense.npy"
        dense = np.load(dense_path, allow_pickle=False) if dense_path.exists() else None
        return cls(fields, np.load(folder / "single.npy", allow_pickle=False),
                   np.load(folder / "multi.npy", allow_pickle=False),
                   np.load(folder / "labels.npy", allow_pickle=False), dense)


class ArraySplit:
    """A subset of an :class:`ArrayDataset`'s rows (a train/validation/test split)."""

    def __init__(self, data: ArrayDataset, rows: np.ndarray):
        self.data = data
        self.rows = np.asarray(rows, dtype=np.int64)
        self.fields = data.fields
        self.num_dense = data.num_dense

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels[self.rows]

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0) -> Iterator[Batch]:
        """Batches in row order, or shuffled by a permutation fixed by ``(seed, epoch)`` (so a
        resumed run sees the same order without saving any generator state)."""
        if batch_size <= 0:
            raise TableDataError(f"batch_size must be positive, got {batch_size}")
        rows = self.rows
        if shuffle:
            rows = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
        for start in range(0, len(rows), batch_size):
            yield self.data.batch(rows[start:start + batch_size])


@dataclass
class DataSplits:
    """Train / validation / test sources over the same fields, and facts about the data."""

    train: BatchSource
    val: BatchSource
    test: BatchSource
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        return self.train.fields

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def cardinalities(self) -> list[int]:
        return [f.cardinality for f in self.fields]

    @property
    def num_dense(self) -> int:
        return self.train.num_dense


def split_rows(n: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed random train/validation/test partition of ``n`` rows (sorted index arrays)."""
    fr = [float(x) for x in fractions]
    if len(fr) != 3 or any(x < 0 for x in fr) or not np.isclose(sum(fr), 1.0) or fr[0] <= 0:
        raise TableDataError(f"split must be three non-negative fractions summing to 1, got {list(fractions)}")
    perm = np.random.default_rng([seed, 0x5917]).permutation(n)
    a = int(np.floor(fr[0] * n))
    b = a + int(np.floor(fr[1] * n))
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


def array_splits(data: ArrayDataset, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
                 info: dict[str, Any]) -> DataSplits:
    train, val, test = (ArraySplit(data, r) for r in rows)
    info = dict(info)
    info.update({
        "fields": {f.name: f.cardinality for f in data.fields},
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "positive_rate": {name: float(s.labels.mean()) if len(s) else float("nan")
                          for name, s in (("train", train), ("val", val), ("test", test))},
    })
    return DataSplits(train, val, test, info)
