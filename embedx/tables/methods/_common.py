"""Helpers every table method shares: budget checks, seeded initialisation, integer searches,
stochastic rounding and the row-allocation rule of the hashed methods."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..base import FLOAT_BYTES, TableConfigError

HASH_BYTES = 16  # one hash function: two int64 constants (a, b)

__all__ = ["FLOAT_BYTES", "HASH_BYTES", "require_budget", "check_positive_int", "as_list", "init_normal",
           "SeededRng", "stochastic_round", "largest_int", "largest_float", "allocate_rows",
           "on_default_device", "base_config"]


def require_budget(method: str, budget_bytes: int, min_bytes: int, detail: str = "") -> None:
    """Raise a :class:`TableConfigError` naming the method's minimum if the budget is below it."""
    if budget_bytes < min_bytes:
        extra = f" ({detail})" if detail else ""
        raise TableConfigError(
            f"{method}: budget of {budget_bytes:,} bytes is below this method's minimum of "
            f"{min_bytes:,} bytes for these cardinalities and dim{extra}; "
            f"raise the budget to at least {min_bytes:,} bytes")


def check_positive_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise TableConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def as_list(name: str, value, n: int, cast=int) -> list:
    """A per-field hyperparameter given as one value or one value per field."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise TableConfigError(f"{name} has {len(value)} entries for {n} fields")
        return [cast(v) for v in value]
    return [cast(value)] * n


def init_normal(shape: Sequence[int], std: float, generator: torch.Generator, mean: float = 0.0) -> torch.Tensor:
    """A ``N(mean, std^2)`` tensor drawn from a CPU generator, placed on the default device.

    Drawing on the CPU keeps initialisation identical across devices; on the ``meta`` device
    (used to size tables without allocating them) nothing is drawn.
    """
    probe = torch.empty(0)
    if probe.device.type == "meta":
        return torch.empty(tuple(shape))
    out = torch.empty(tuple(shape), device="cpu").normal_(mean, std, generator=generator)
    return out.to(probe.device)


class SeededRng:
    """One seeded generator per device, for stochastic rounding that is reproducible from a seed."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._gens: dict[str, torch.Generator] = {}

    def get(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            self._gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gens[key]


def stochastic_round(x: torch.Tensor, rng: SeededRng) -> torch.Tensor:
    """``floor(x + u)``, ``u ~ U[0, 1)``: unbiased rounding (E[result] = x), Gupta et al. 2015."""
    u = torch.rand(x.shape, generator=rng.get(x.device), device=x.device, dtype=x.dtype)
    return torch.floor(x + u)


def largest_int(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest integer in ``[lo, hi]`` for which the monotone ``fits`` holds (None if none)."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def largest_float(fits: Callable[[float], bool], lo: float, hi: float, iters: int = 100) -> float:
    """The (approximately) largest float in ``[lo, hi]`` with monotone ``fits`` true; ``fits(lo)`` must hold."""
    if fits(hi):
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def allocate_rows(cards: Sequence[int], total: int, exponent: float = 1.0) -> list[int]:
    """Split ``total`` rows over fields in proportion to ``c_f ** exponent``, capped at ``c_f``.

    Water-filling: ``rows_f = min(c_f, max(1, floor(lam * c_f ** exponent)))`` for the largest
    ``lam`` that fits, then the few rows left by flooring go one each to the largest uncapped
    fields, so ``sum(rows) == min(total, sum(cards))`` exactly. ``exponent = 1`` is proportional
    to cardinality; ``0`` gives every field an equal share, small fields keeping all their ids.
    Needs ``total >= len(cards)``.
    """
    cards = [int(c) for c in cards]
    if total >= sum(cards):
        return list(cards)
    weights = [c ** exponent for c in cards]

    def rows(lam: float) -> list[int]:
        return [min(c, max(1, math.floor(lam * w))) for c, w in zip(cards, weights)]

    lam = largest_float(lambda x: sum(rows(x)) <= total, 0.0, max(c / w for c, w in zip(cards, weights)))
    out = rows(lam)
    left = total - sum(out)
    order = sorted(range(len(cards)), key=lambda i: -cards[i])
    while left > 0:
        for f in order:
            if left > 0 and out[f] < cards[f]:
                out[f] += 1
                left -= 1
    return out


def on_default_device(t: torch.Tensor) -> torch.Tensor:
    """Move a tensor built on the CPU (constants, index maps) to the current default device."""
    return t.to(torch.empty(0).device)


def base_config(table) -> dict:
    """The config keys every exported table carries."""
    return {"cardinalities": list(table.cardinalities), "dim": table.dim}
