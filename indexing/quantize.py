"""8-bit impact quantisation shared by the native sparse index and the Lucene impact backend.

One global scale per index: ``q = rint(w / scale)`` with ``scale = max(w) / 255``, so the
largest weight maps to 255 and scores computed from integer impacts times ``scale``
approximate the float scores. Both backends take the *same* integer impacts, which is
what makes their rankings and scores comparable.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

UINT8_LEVELS = 255


def uint8_scale(weights: np.ndarray) -> float:
    """The scale that maps the largest weight to 255 (1.0 for an all-zero input)."""
    if weights.size and (weights < 0).any():
        raise InvalidInputError("impact weights must be >= 0 to quantise")
    top = float(weights.max()) if weights.size else 0.0
    return top / UINT8_LEVELS if top > 0 else 1.0


def quantize_uint8(weights: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, float]:
    """Quantise non-negative weights to uint8 impacts; returns (impacts, scale).

    Weights above ``255 * scale`` (possible when a given scale comes from another batch)
    saturate at 255.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if scale is None:
        scale = uint8_scale(weights)
    if not np.isfinite(scale) or scale <= 0:
        raise InvalidInputError(f"quantisation scale must be a positive finite number, got {scale}")
    q = np.rint(weights / np.float32(scale))
    return np.clip(q, 0, UINT8_LEVELS).astype(np.uint8), float(scale)


def dequantize_uint8(impacts: np.ndarray, scale: float) -> np.ndarray:
    return impacts.astype(np.float32) * np.float32(scale)
