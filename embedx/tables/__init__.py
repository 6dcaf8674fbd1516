"""Compressed embedding tables, the CTR models that train them, and their data.

Importing this package is cheap (no torch): the heavy parts load on first use.

- :mod:`embedx.tables.base`: the :class:`~embedx.tables.base.CompressedTable` interface.
- :mod:`embedx.tables.registry`: method name -> class, :func:`~embedx.tables.registry.build_table`.
- :mod:`embedx.tables.config`: the YAML run configuration with ``a.b=c`` overrides.
- :mod:`embedx.tables.data`: MovieLens readers and the Criteo-shaped generator.
- :mod:`embedx.tables.models`: DLRM, DCN-v2, Wide & Deep, DeepFM over any table.
- :mod:`embedx.tables.trainer` / :mod:`embedx.tables.train`: training, evaluation,
  checkpoints, and ``train_from_config``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "build_table": "embedx.tables.registry",
    "available_methods": "embedx.tables.registry",
    "load_config": "embedx.tables.config",
    "train_from_config": "embedx.tables.train",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
