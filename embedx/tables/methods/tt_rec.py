"""TT-Rec: tensor-train embedding tables (Yin, Acun, Wu and Liu, "TT-Rec: Tensor Train
Decomposition for Deep Learning Recommendation Model Embeddings", MLSys 2021)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, tensor_bytes
from ..export import ExportedTable
from ._common import FLOAT_BYTES, base_config, init_normal, largest_int, require_budget


def dim_factors(dim: int) -> tuple[int, int, int]:
    """``dim = d1 * d2 * d3`` as balanced as possible (16 -> 2, 2, 4)."""
    best = None
    for d1 in range(1, dim + 1):
        if dim % d1:
            continue
        for d2 in range(d1, dim // d1 + 1):
            if (dim // d1) % d2:
                continue
            d3 = dim // d1 // d2
            if d3 < d2:
                continue
            key = (d3 - d1, d3)
            if best is None or key < best[0]:
                best = (key, (d1, d2, d3))
    return best[1]


def row_factors(card: int) -> tuple[int, int, int]:
    """``n1 * n2 * n3 >= card`` with each factor about ``card^(1/3)`` (ids are padded up)."""
    n1 = 1
    while n1 ** 3 < card:
        n1 += 1
    n2 = math.isqrt(-(-card // n1) - 1) + 1 if card > n1 else 1
    n3 = -(-card // (n1 * n2))
    return n1, n2, n3


def _tt_floats(n: Sequence[int], d: Sequence[int], rank: int) -> int:
    return n[0] * d[0] * rank + n[1] * d[1] * rank * rank + n[2] * d[2] * rank


class TTRecTable(CompressedTable):
    """Tensor-train embeddings: field ``f``'s ``c_f x dim`` table is never stored; with
    ``c_f <= n1 n2 n3``, ``dim = d1 d2 d3`` and id ``x = (i1 n2 + i2) n3 + i3``, row ``x`` is
    ``E[x][(j1, j2, j3)] = sum_{a,b} G1[i1, j1, a] G2[a, i2, j2, b] G3[b, i3, j3]``
    (Yin et al. 2021, eq. 2 with TT-ranks ``(1, R, R, 1)``), computed by two batched matmuls.

    Sizing rule: one TT-rank ``R`` for all fields, the largest that fits the budget; fields
    where a TT of that rank would not be smaller than the plain table are stored plainly; the
    remaining budget then raises single fields to rank ``R + 1`` (largest fields first) while
    it fits. Floor: every field at rank 1 (or plain, if smaller).

    Initialisation: the paper's sampled Gaussian, every core ``N(0, sigma^2)`` with
    ``sigma = (init_std^2 / R^2)^(1/6)`` so that a reconstructed entry (a sum of ``R^2``
    products of three core entries) has standard deviation ``init_std``.
    """

    name = "tt_rec"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        cards = self.cardinalities
        require_budget(self.name, self.budget.bytes, self.min_bytes(cards, self.dim))
        self.dim_factors = dim_factors(self.dim)
        self.row_factors = tuple(row_factors(c) for c in cards)
        self.ranks = tuple(self._solve(cards, self.dim, self.budget.bytes // FLOAT_BYTES))
        gen = torch.Generator().manual_seed(seed)
        d1, d2, d3 = self.dim_factors
        self.params = nn.ParameterDict()
        dense_cards = [c if r == 0 else 0 for c, r in zip(cards, self.ranks)]
        self.params["dense"] = nn.Parameter(init_normal((sum(dense_cards), self.dim), init_std, gen))
        self._dense_offsets = [sum(dense_cards[:f]) for f in range(len(cards))]
        for f, (r, (n1, n2, n3)) in enumerate(zip(self.ranks, self.row_factors)):
            if r == 0:
                continue
            sigma = (init_std ** 2 / r ** 2) ** (1 / 6)
            self.params[f"core0_{f}"] = nn.Parameter(init_normal((n1, 1, d1, r), sigma, gen))
            self.params[f"core1_{f}"] = nn.Parameter(init_normal((n2, r, d2, r), sigma, gen))
            self.params[f"core2_{f}"] = nn.Parameter(init_normal((n3, r, d3, 1), sigma, gen))

    @staticmethod
    def _field_floats(card: int, dim: int, rank: int) -> int:
        if rank == 0:
            return card * dim
        return _tt_floats(row_factors(card), dim_factors(dim), rank)

    @classmethod
    def _plan(cls, cards, dim: int, rank: int) -> list[int]:
        return [rank if cls._field_floats(c, dim, rank) < c * dim else 0 for c in cards]

    @classmethod
    def _solve(cls, cards, dim: int, limit: int) -> list[int]:
        def total(ranks):
            return sum(cls._field_floats(c, dim, r) for c, r in zip(cards, ranks))

        hi = max(1, math.isqrt(max(cards) * dim) + 1)
        rank = largest_int(lambda r: total(cls._plan(cards, dim, r)) <= limit, 1, hi)
        ranks = cls._plan(cards, dim, rank)
        used = total(ranks)
        for f in sorted(range(len(cards)), key=lambda i: -cards[i]):
            if ranks[f] == 0:
                continue
            grown = cls._field_floats(cards[f], dim, ranks[f] + 1)
            extra = grown - cls._field_floats(cards[f], dim, ranks[f])
            if grown < cards[f] * dim and used + extra <= limit:
                ranks[f] += 1
                used += extra
        return ranks

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, **hparams) -> int:
        cards = [int(c) for c in cardinalities]
        return sum(cls._field_floats(c, dim, r) for c, r in zip(cards, cls._plan(cards, dim, 1))) * FLOAT_BYTES

    def _field_embed(self, f: int, x: torch.Tensor) -> torch.Tensor:
        if self.ranks[f] == 0:
            return nn.functional.embedding(x + self._dense_offsets[f], self.params["dense"])
        _, n2, n3 = self.row_factors[f]
        d1, d2, d3 = self.dim_factors
        r, n = self.ranks[f], x.shape[0]
        g1 = self.params[f"core0_{f}"][x // (n2 * n3)].reshape(n, d1, r)
        g2 = self.params[f"core1_{f}"][(x // n3) % n2].reshape(n, r, d2 * r)
        g3 = self.params[f"core2_{f}"][x % n3].reshape(n, r, d3)
        ab = torch.bmm(g1, g2).reshape(n, d1 * d2, r)
        return torch.bmm(ab, g3).reshape(n, self.dim)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = self.params["dense"].new_zeros((ids.shape[0], self.dim))
        for f in torch.unique(fields).tolist():
            mask = fields == f
            out[mask] = self._field_embed(f, ids[mask])
        return out

    def memory_bytes(self) -> int:
        return tensor_bytes(*self.params.values())

    def export(self) -> ExportedTable:
        cfg = {**base_config(self), "dense": [r == 0 for r in self.ranks], "ranks": list(self.ranks),
               "row_factors": [list(n) for n in self.row_factors], "dim_factors": list(self.dim_factors)}
        return ExportedTable(self.name, cfg, {k: v.detach().cpu().numpy() for k, v in self.params.items()})
