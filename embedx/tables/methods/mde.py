"""Mixed-dimension embeddings (Ginart, Naumov, Mudigere, Yang and Zou, "Mixed Dimension
Embeddings with Application to Memory-Efficient Recommendation Systems", ISIT 2021)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, TableConfigError, tensor_bytes
from ..export import ExportedTable
from ._common import FLOAT_BYTES, as_list, base_config, init_normal, largest_float, require_budget


def _dims(pop_alpha: Sequence[float], dim: int, lam: float) -> list[int]:
    return [min(dim, max(1, round(lam * p))) for p in pop_alpha]


def _floats(cards: Sequence[int], dims: Sequence[int], dim: int) -> int:
    """Table rows plus the ``d_f x dim`` projection of every field narrower than ``dim``."""
    return sum(c * d + (d * dim if d < dim else 0) for c, d in zip(cards, dims))


class MDETable(CompressedTable):
    """Mixed-dimension embeddings: field ``f`` has a ``c_f x d_f`` table and a ``d_f x dim``
    projection, ``e(x) = E_f[x] P_f`` (Ginart et al. 2021, Sec. 3). Dimensions follow the
    paper's power-law rule ``d_f = lam * p_f^alpha`` (eq. for the MD embedding dims, with
    temperature ``alpha``), rounded and clipped to ``[1, dim]``; ``p_f`` is the per-row access
    probability of field ``f`` (``popularity``; default ``1 / c_f``, uniform access within the
    field), so smaller, more popular fields get wider rows. A field at full ``dim`` has no
    projection.

    Sizing rule: the largest ``lam`` whose tables and projections fit the budget, then one
    extra dimension at a time to fields in order of popularity while it still fits (rounding
    leaves whole rows of a big field unused otherwise). Floor: every field at ``d_f = 1``,
    about ``dim`` times smaller than the full table, so MDE cannot reach 100x at dim 16.

    Initialisation: tables ``N(0, init_std^2)``, projections ``N(0, 1/d_f)`` so a projected row
    keeps about ``init_std``.
    """

    name = "mde"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 alpha: float = 0.3, popularity: Sequence[float] | None = None, seed: int = 0,
                 init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        cards = self.cardinalities
        require_budget(self.name, self.budget.bytes, self.min_bytes(cards, self.dim))
        self.alpha = float(alpha)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise TableConfigError(f"mde: alpha must be >= 0, got {alpha!r}")
        pop = [1.0 / c for c in cards] if popularity is None else as_list("mde: popularity", popularity,
                                                                          len(cards), float)
        if any(not (math.isfinite(p) and p > 0) for p in pop):
            raise TableConfigError("mde: popularity values must be positive")
        self.dims = tuple(self._solve(cards, self.dim, [p ** self.alpha for p in pop],
                                      self.budget.bytes // FLOAT_BYTES))
        gen = torch.Generator().manual_seed(seed)
        self.params = nn.ParameterDict()
        for f, (c, d) in enumerate(zip(cards, self.dims)):
            self.params[f"table_{f}"] = nn.Parameter(init_normal((c, d), init_std, gen))
            if d < self.dim:
                self.params[f"proj_{f}"] = nn.Parameter(init_normal((d, self.dim), 1 / math.sqrt(d), gen))

    @staticmethod
    def _solve(cards, dim: int, pop_alpha: list[float], limit: int) -> list[int]:
        hi = dim / min(pop_alpha) * 2
        lam = largest_float(lambda x: _floats(cards, _dims(pop_alpha, dim, x), dim) <= limit, 0.0, hi)
        dims = _dims(pop_alpha, dim, lam)
        order = sorted(range(len(cards)), key=lambda f: -pop_alpha[f])
        grew = True
        while grew:
            grew = False
            for f in order:
                if dims[f] < dim:
                    dims[f] += 1
                    if _floats(cards, dims, dim) <= limit:
                        grew = True
                    else:
                        dims[f] -= 1
        return dims

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, **hparams) -> int:
        cards = [int(c) for c in cardinalities]
        return _floats(cards, [1] * len(cards), dim) * FLOAT_BYTES

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = self.params["table_0"].new_zeros((ids.shape[0], self.dim))
        for f in torch.unique(fields).tolist():
            mask = fields == f
            e = self.gather(ids[mask], self.params[f"table_{f}"])
            if self.dims[f] < self.dim:
                e = e @ self.params[f"proj_{f}"]
            out[mask] = e
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [p for k, p in self.params.items() if k.startswith("table_")]  # projections stay dense

    def memory_bytes(self) -> int:
        return tensor_bytes(*self.params.values())

    def export(self) -> ExportedTable:
        return ExportedTable(self.name, {**base_config(self), "dims": list(self.dims)},
                             {k: v.detach().cpu().numpy() for k, v in self.params.items()})
