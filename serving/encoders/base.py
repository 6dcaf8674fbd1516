"""The one encoder interface the server, the benchmarks and the trainers share.

An encoder lives in a folder with ``encoder.json``; its ``type`` names the class that loads it,
so a server config only points at folders. Every encoder reports the representation space it
writes into (``space_id``) and a content hash, which index bundles record and the server checks.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

ENCODER_FILE = "encoder.json"


class EncoderError(ValueError):
    """An encoder folder that is missing, malformed or of an unknown type."""


@runtime_checkable
class QueryEncoder(Protocol):
    kind: str            # "dense": float32 (n, dimension) array; "sparse": csr_matrix (n, dimension)
    dimension: int       # vector width, or vocabulary size for sparse encoders
    space_id: str | None  # representation space; a bundle built in another space is refused
    encoder_hash: str    # content hash of the weights and settings

    def encode(self, texts: Sequence[str]) -> Any: ...

    def describe(self) -> dict: ...


_TYPES: dict[str, str] = {
    "idf": "serving.encoders.idf:IdfQueryEncoder",
    "onnx-dense": "serving.encoders.onnx:OnnxDenseEncoder",
    "onnx-sparse": "serving.encoders.onnx:OnnxSparseEncoder",
}


def register_encoder_type(name: str, target: str) -> None:
    """Map an ``encoder.json`` type to ``"module:Class"`` (the class has ``load(folder)``)."""
    _TYPES[name] = target


def read_encoder_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / ENCODER_FILE
    if not path.is_file():
        raise EncoderError(f"{folder} is not an encoder folder (no {ENCODER_FILE})")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{path}: cannot read encoder config: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise EncoderError(f"{path}: encoder config needs a string 'type'")
    return config


def load_encoder(folder: str | os.PathLike) -> QueryEncoder:
    """Load the encoder saved in ``folder`` by the class its ``encoder.json`` names."""
    config = read_encoder_config(folder)
    target = _TYPES.get(config["type"])
    if target is None:
        raise EncoderError(f"{folder}: unknown encoder type {config['type']!r}; known: {sorted(_TYPES)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name).load(folder)


def sparse_rows(weights: np.ndarray, *, prune_ratio: float = 0.0):
    """Dense ``(n, V)`` non-negative weights -> ``csr_matrix``, dropping zeros and, per row,
    weights below ``prune_ratio`` times the row's maximum (the paper's optional pruning)."""
    from scipy import sparse

    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2:
        raise ValueError(f"expected (n, V) weights, got shape {weights.shape}")
    if prune_ratio:
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
        floor = weights.max(axis=1, keepdims=True) * prune_ratio
        weights = np.where(weights >= floor, weights, 0.0).astype(np.float32)
    out = sparse.csr_matrix(np.maximum(weights, 0.0))
    out.eliminate_zeros()
    return out
