"""The uncompressed baseline: one float32 row per id of every field."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, tensor_bytes
from ..export import ExportedTable
from ._common import FLOAT_BYTES, init_normal, require_budget


class FullTable(CompressedTable):
    """Uncompressed embedding table: ``E[offset_f + x]`` for id ``x`` of field ``f``.

    The reference point of every compression rate (``Budget.from_rate(1.0, ...)``). Sizing
    rule: none, the table always holds ``sum(cardinalities) * dim`` floats; a budget below
    that is refused (:meth:`min_bytes`). Initialisation ``N(0, init_std^2)``.
    """

    name = "full"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        require_budget(self.name, self.budget.bytes, self.min_bytes(self.cardinalities, self.dim))
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(init_normal((self.total_ids, self.dim), init_std, gen))

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, **hparams) -> int:
        return sum(int(c) for c in cardinalities) * dim * FLOAT_BYTES

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.gather(self.global_ids(fields, ids), self.weight)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def memory_bytes(self) -> int:
        return tensor_bytes(self.weight)

    def export(self) -> ExportedTable:
        return ExportedTable(self.name, {"cardinalities": list(self.cardinalities), "dim": self.dim},
                             {"weight": self.weight.detach().cpu().numpy()})
