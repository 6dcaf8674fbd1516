"""Per-user negative sampling for implicit feedback (MovieLens 1M has only positives).

Each user with ``n`` positives gets ``round(ratio * n)`` distinct items it never interacted
with, drawn uniformly without replacement from its complement (capped at the complement's
size), as in NCF (He et al., WWW 2017), which draws negatives per user from the
non-interacted items. Exact and vectorised: for a block of users, every item gets a random
key, positives get +inf, and each user keeps its ``k`` smallest keys.
"""

from __future__ import annotations

import logging

import numpy as np

from .dataset import TableDataError

log = logging.getLogger(__name__)

_BLOCK_USERS = 256  # fixed: the random stream is drawn block by block, so this is part of the result


def sample_negatives(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                     ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Negative ``(users, items)`` (int64, grouped by user) for positive pairs ``(users, items)``.

    Deterministic in ``seed``; never returns a positive pair or the same pair twice.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise TableDataError("users and items must be 1-d arrays of the same length")
    if ratio < 0:
        raise TableDataError(f"negative ratio must be >= 0, got {ratio}")
    if len(users) and (users.min() < 0 or users.max() >= num_users or items.min() < 0 or items.max() >= num_items):
        raise TableDataError("user or item codes out of range")
    pairs = np.sort(users * num_items + items)
    pairs = pairs[np.concatenate([[True], np.diff(pairs) != 0])] if len(pairs) else pairs
    pos_users, pos_items = pairs // num_items, pairs % num_items
    n_pos = np.bincount(pos_users, minlength=num_users)
    want = np.rint(ratio * n_pos).astype(np.int64)
    k = np.minimum(want, num_items - n_pos)
    if (short := int((want - k).sum())) > 0:
        log.warning("%d negatives could not be drawn: %d users interacted with too many items for ratio %g",
                    short, int((want > k).sum()), ratio)
    starts = np.searchsorted(pos_users, np.arange(num_users + 1))
    rng = np.random.default_rng([seed, 0x4E47])
    out_users, out_items = [], []
    cols = np.arange(num_items)
    for lo in range(0, num_users, _BLOCK_USERS):
        hi = min(lo + _BLOCK_USERS, num_users)
        keys = rng.random((hi - lo, num_items))
        block = slice(starts[lo], starts[hi])
        keys[pos_users[block] - lo, pos_items[block]] = np.inf
        kb = k[lo:hi]
        if not kb.any():
            continue
        # the kmax smallest keys per user, then in key order (keys are distinct reals, so the
        # result is the same whatever the selection algorithm)
        kmax = int(kb.max())
        part = np.argpartition(keys, kmax - 1, axis=1)[:, :kmax]
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, 1), axis=1), 1)
        keep = cols[None, :kmax] < kb[:, None]
        out_items.append(order[keep])
        out_users.append(np.repeat(np.arange(lo, hi), kb))
    if not out_users:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_users), np.concatenate(out_items).astype(np.int64)
