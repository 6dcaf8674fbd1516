"""Integer hashing shared by the compressed embedding tables and their torch-free table store.

Hashed tables must map an id to the *same* row in training (torch) and in serving (numpy),
so the hash is a formula both libraries compute bit for bit, never a library's own hash:

    v = (a * x + b) mod 2**64          multiply-add-shift (Dietzfelbinger, STACS 1996)
    h = v >> 32                        its top 32 bits, uniform over [0, 2**32)
    bucket = (h * m) >> 32             range reduction to [0, m) by multiply-shift (Lemire 2019)

with ``a`` odd. Everything fits 64-bit integers: ``h * m < 2**63`` for ``m <= 2**31``. Numpy
computes it in uint64 (wraparound is defined there); the torch twin
(:mod:`embedx.tables.hashing`) computes it in int64, whose two's-complement wraparound gives
the same bits. The constants ``(a, b)`` come from a seeded SplitMix64 stream in pure Python,
so they are identical on every platform, and tables also store them with their weights.
"""

from __future__ import annotations

import numpy as np

MAX_BUCKETS = 2**31
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(state: int) -> tuple[int, int]:
    """One SplitMix64 step (Steele, Lea and Flood, OOPSLA 2014): (next state, output)."""
    state = (state + _GOLDEN) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def _to_signed(u: int) -> int:
    return u - (1 << 64) if u >= (1 << 63) else u


def hash_constants(seed: int, count: int, stream: int = 0) -> np.ndarray:
    """``count`` hash functions as an int64 array ``(count, 2)`` of ``(a, b)``, ``a`` odd.

    ``stream`` separates independent families drawn from one seed (for example bucket and
    sign hashes). Values are the two's-complement int64 view of the 64-bit constants.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    state = ((int(seed) & _MASK64) * _GOLDEN + (int(stream) & _MASK64) * 0xD1B54A32D192ED03) & _MASK64
    out = np.empty((count, 2), dtype=np.int64)
    for i in range(count):
        state, a = _splitmix64(state)
        state, b = _splitmix64(state)
        out[i, 0] = _to_signed(a | 1)
        out[i, 1] = _to_signed(b)
    return out


def hash_buckets(keys: np.ndarray, a, b, m, out: np.ndarray | None = None) -> np.ndarray:
    """Buckets in ``[0, m)`` (int64) of int64 ``keys``; ``a``, ``b``, ``m`` broadcast against them.

    ``a`` and ``b`` are int64 (as stored) and ``m`` a positive int64 of at most ``2**31``.
    ``out`` (int64, the broadcast shape) receives the result without a new allocation.
    """
    keys = np.asarray(keys, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64).view(np.uint64) if np.ndim(a) else np.int64(a).view(np.uint64)
    b = np.asarray(b, dtype=np.int64).view(np.uint64) if np.ndim(b) else np.int64(b).view(np.uint64)
    m = np.asarray(m, dtype=np.uint64) if np.ndim(m) else np.uint64(m)
    v = np.multiply(keys.view(np.uint64), a, out=None if out is None else out.view(np.uint64))
    v += b
    v >>= np.uint64(32)
    v *= m
    v >>= np.uint64(32)
    return v.view(np.int64)
