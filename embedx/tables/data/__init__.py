"""Data sets for the CTR models: MovieLens 100K / 1M readers and a Criteo-shaped generator.

Each data set has a name, an options dataclass (the keys of a config's ``data:`` block)
and a loader returning :class:`~embedx.tables.data.dataset.DataSplits`. Loader modules
import on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import fields as dc_fields
from typing import Any, Sequence

from .dataset import (ArrayDataset, ArraySplit, Batch, BatchSource, DataSplits, FieldSpec, TableDataError,
                      num_batches, split_rows)

# name -> (module, options class, loader function)
DATASETS: dict[str, tuple[str, str, str]] = {
    "ml100k": ("embedx.tables.data.movielens", "MovieLens100KOptions", "load_ml100k"),
    "ml1m": ("embedx.tables.data.movielens", "MovieLens1MOptions", "load_ml1m"),
    "criteo_synth": ("embedx.tables.data.criteo_synth", "CriteoSynthOptions", "load_criteo_synth"),
}

__all__ = ["ArrayDataset", "ArraySplit", "Batch", "BatchSource", "DATASETS", "DataSplits", "FieldSpec",
           "TableDataError", "dataset_options", "load_dataset", "num_batches", "split_rows"]


def _entry(name: str) -> tuple[Any, str]:
    try:
        module, options, loader = DATASETS[name]
    except KeyError:
        raise TableDataError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}") from None
    mod = importlib.import_module(module)
    return mod, options, loader


def dataset_options(name: str) -> type:
    """The options dataclass of data set ``name``."""
    mod, options, _ = _entry(name)
    return getattr(mod, options)


def load_dataset(name: str, fields: Sequence[str] | None = None, **options: Any) -> DataSplits:
    """Load data set ``name`` with ``options``; ``fields`` keeps those fields, in that order."""
    mod, opt_name, loader = _entry(name)
    cls = getattr(mod, opt_name)
    known = {f.name for f in dc_fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TableDataError(f"data set {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
                             f"options: {', '.join(sorted(known))}")
    splits = getattr(mod, loader)(cls(**options))
    if fields is not None:
        splits = select_fields(splits, fields)
    return splits


def select_fields(splits: DataSplits, names: Sequence[str]) -> DataSplits:
    """Keep only ``names`` (in that order); works for in-memory splits."""
    if list(names) == splits.field_names:
        return splits
    parts = []
    for part in (splits.train, splits.val, splits.test):
        if not isinstance(part, ArraySplit):
            raise TableDataError(f"field selection needs in-memory data, not {type(part).__name__}")
        parts.append(part)
    data = parts[0].data.select(list(names))
    train, val, test = (ArraySplit(data, p.rows) for p in parts)
    info = dict(splits.info)
    info["fields"] = {f.name: f.cardinality for f in data.fields}
    return DataSplits(train, val, test, info)
