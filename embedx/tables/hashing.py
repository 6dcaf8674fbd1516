"""Torch twin of :mod:`indexing.hashing`: the same bucket formula, bit for bit, in int64.

``v = a*x + b`` wraps modulo 2**64 in int64 exactly as numpy's uint64 does; the top 32 bits
are taken with an arithmetic shift and a mask (torch has no logical shift), and the range
reduction ``(h * m) >> 32`` stays below 2**63. Tests check both twins agree on random keys.
"""

from __future__ import annotations

import torch

from indexing.hashing import MAX_BUCKETS, hash_constants as _np_hash_constants

__all__ = ["MAX_BUCKETS", "hash_constants", "hash_buckets"]

_LOW32 = 0xFFFFFFFF


def hash_constants(seed: int, count: int, stream: int = 0) -> torch.Tensor:
    """``(count, 2)`` int64 tensor of hash functions ``(a, b)``, identical to the numpy twin's."""
    return torch.from_numpy(_np_hash_constants(seed, count, stream))


def hash_buckets(keys: torch.Tensor, a: torch.Tensor, b: torch.Tensor, m) -> torch.Tensor:
    """Buckets in ``[0, m)`` of int64 ``keys``; ``a``, ``b`` (int64) and ``m`` broadcast."""
    v = keys * a + b
    v = (v >> 32) & _LOW32
    return (v * m) >> 32
