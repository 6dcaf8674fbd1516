"""Input checks shared by every index kind.

They are cheap (one pass over the query batch) so that bad input fails with a clear
message before it reaches FAISS, numpy or Java, where it would crash or silently
return garbage.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from .errors import InvalidInputError


def check_k(k: int) -> int:
    """Return ``k`` as an int if it is a positive integer, else raise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise InvalidInputError(f"k must be a positive integer, got {k}")
    return int(k)


def check_dense(vectors, dim: int | None = None, name: str = "vectors") -> np.ndarray:
    """Validate a dense batch and return it as a C-contiguous float32 (n, d) array.

    A single vector of shape (d,) is accepted and treated as a batch of one.
    Integer, float16 and float64 input is converted; anything else (object, complex,
    strings) is refused, as are NaN and infinite values and a wrong dimension.
    """
    arr = np.asarray(vectors)
    if arr.dtype.kind not in "fiu":
        raise InvalidInputError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must have shape (n, d), got {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty (0 rows)")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(f"{name} have dimension {arr.shape[1]}, the index expects {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InvalidInputError(f"{name} contain NaN or infinite values (first bad row: {bad})")
    return arr


def check_sparse(matrix, n_cols: int | None = None, name: str = "sparse vectors",
                 allow_negative: bool = False) -> sp.csr_matrix:
    """Validate a sparse batch (rows x vocabulary) and return it as a canonical float32 CSR matrix.

    Canonical means sorted indices and summed duplicates. Input that already is one is
    returned as is (not copied): callers must not modify it. Negative weights are refused
    unless ``allow_negative``: impact indexes assume non-negative term weights.
    """
    if not sp.issparse(matrix):
        raise InvalidInputError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    if matrix.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-D, got shape {matrix.shape}")
    if matrix.dtype.kind not in "fiu":
        raise InvalidInputError(f"{name} must be numeric, got dtype {matrix.dtype}")
    if n_cols is not None and matrix.shape[1] != n_cols:
        raise InvalidInputError(
            f"{name} have vocabulary size {matrix.shape[1]}, the index expects {n_cols}")
    if matrix.format == "csr" and matrix.dtype == np.float32 and matrix.has_canonical_format:
        csr = matrix  # fast path for search: already canonical, nothing to copy
    else:
        csr = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        csr.sum_duplicates()
        csr.sort_indices()
    if not np.isfinite(csr.data).all():
        raise InvalidInputError(f"{name} contain NaN or infinite weights")
    if not allow_negative and (csr.data < 0).any():
        raise InvalidInputError(f"{name} contain negative weights; impact indexes need weights >= 0")
    return csr


def check_ids(ids: Sequence[str], n: int | None = None, name: str = "ids") -> np.ndarray:
    """Validate external ids (non-empty, unique strings) and return them as a numpy unicode array."""
    ids = list(ids)
    for i, x in enumerate(ids):
        if not isinstance(x, str) or not x:
            raise InvalidInputError(f"{name}[{i}] must be a non-empty string, got {x!r}")
    if n is not None and len(ids) != n:
        raise InvalidInputError(f"got {len(ids)} {name} for {n} vectors")
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for x in ids:
            if x in seen:
                dup = x
                break
            seen.add(x)
        raise InvalidInputError(f"{name} must be unique; {dup!r} appears more than once")
    return np.asarray(ids, dtype=str) if ids else np.empty(0, dtype="<U1")
