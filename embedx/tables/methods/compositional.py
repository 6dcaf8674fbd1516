"""Compositional embeddings with the quotient-remainder trick (Shi, Mudigere, Naumov and Yang,
"Compositional Embeddings Using Complementary Partitions for Memory-Efficient Recommendation
Systems", KDD 2020)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, TableConfigError, tensor_bytes
from ..export import ExportedTable
from ._common import (FLOAT_BYTES, base_config, init_normal, largest_float, on_default_device,
                      require_budget)

OPS = ("mult", "add", "concat")


def _widths(op: str, dim: int) -> tuple[int, int]:
    """(quotient width, remainder width): full ``dim`` each, or halves for ``concat``."""
    if op == "concat":
        return dim // 2, dim - dim // 2
    return dim, dim


def _plan(cards: Sequence[int], dim: int, op: str, lam: float) -> list[int]:
    """Remainder-table size per field for collision fraction ``lam`` (0 = dense field)."""
    wq, wr = _widths(op, dim)
    out = []
    for c in cards:
        m = min(c, max(math.ceil(math.sqrt(c)), math.ceil(lam * c)))
        out.append(m if m * wr + math.ceil(c / m) * wq < c * dim else 0)
    return out


def _floats(cards: Sequence[int], dim: int, op: str, plan: Sequence[int]) -> int:
    wq, wr = _widths(op, dim)
    return sum(m * wr + math.ceil(c / m) * wq if m else c * dim for c, m in zip(cards, plan))


class QRTable(CompressedTable):
    """Quotient-remainder compositional embedding (Shi et al., KDD 2020, Sec. 3, eq. for the
    QR trick): id ``x`` of a field with remainder size ``m`` reads ``E_q[x // m]`` and
    ``E_r[x mod m]`` from two tables and combines them by ``op``: element-wise product
    (``mult``, the paper's default), sum (``add``) or concatenation (``concat``: each table
    then has ``dim/2`` columns). The pair (quotient, remainder) is unique per id, so no two ids
    share both rows (complementary partitions).

    Sizing rule: every field gets ``m_f = clamp(ceil(lam * c_f), ceil(sqrt(c_f)), c_f)``
    remainder rows and ``ceil(c_f / m_f)`` quotient rows; the largest ``lam`` whose total fits
    the budget is used. A field whose two tables would not be smaller than its plain table is
    stored uncompressed (``m_f = 0`` in :attr:`remainders`). Floor: every field at
    ``m_f = ceil(sqrt(c_f))``.

    Initialisation: plain and remainder rows ``N(0, init_std^2)``; quotient rows ``N(1, init_std^2)``
    for ``mult`` (so the product starts near the remainder row), ``N(0, init_std^2)`` otherwise;
    ``add`` halves both variances so the sum keeps ``init_std``.
    """

    name = "qr"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 op: str = "mult", seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        if op not in OPS:
            raise TableConfigError(f"qr: op must be one of {OPS}, got {op!r}")
        if op == "concat" and self.dim < 2:
            raise TableConfigError("qr: op 'concat' needs dim >= 2")
        self.op = op
        cards = self.cardinalities
        require_budget(self.name, self.budget.bytes, self.min_bytes(cards, self.dim, op=op), f"op={op}")
        limit = self.budget.bytes // FLOAT_BYTES
        lam = largest_float(lambda x: _floats(cards, self.dim, op, _plan(cards, self.dim, op, x)) <= limit,
                            0.0, 1.0)
        self.remainders = tuple(_plan(cards, self.dim, op, lam))
        self.quotients = tuple(math.ceil(c / m) if m else 0 for c, m in zip(cards, self.remainders))
        dense_cards = [c if m == 0 else 0 for c, m in zip(cards, self.remainders)]
        wq, wr = _widths(op, self.dim)
        gen = torch.Generator().manual_seed(seed)
        std = init_std / math.sqrt(2) if op == "add" else init_std
        self.quotient = nn.Parameter(init_normal((sum(self.quotients), wq), std, gen,
                                                 mean=1.0 if op == "mult" else 0.0))
        self.remainder = nn.Parameter(init_normal((sum(self.remainders), wr), std, gen))
        self.dense = nn.Parameter(init_normal((sum(dense_cards), self.dim), init_std, gen))

        def buf(name, values):
            t = torch.tensor(values, dtype=torch.long)
            self.register_buffer(name, on_default_device(t), persistent=False)
            return t

        buf("_m", [max(m, 1) for m in self.remainders])
        q = buf("_q", list(self.quotients))
        r = buf("_r", list(self.remainders))
        d = buf("_d", dense_cards)
        self.register_buffer("_qoff", on_default_device(q.cumsum(0) - q), persistent=False)
        self.register_buffer("_roff", on_default_device(r.cumsum(0) - r), persistent=False)
        self.register_buffer("_doff", on_default_device(d.cumsum(0) - d), persistent=False)
        self.register_buffer("_is_dense", on_default_device(torch.tensor([m == 0 for m in self.remainders])),
                             persistent=False)
        self._all_compressed = all(m > 0 for m in self.remainders)

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, op: str = "mult", **hparams) -> int:
        cards = [int(c) for c in cardinalities]
        return _floats(cards, dim, op, _plan(cards, dim, op, 0.0)) * FLOAT_BYTES

    def _compose(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        m = self._m[fields]
        eq = self.gather(ids // m + self._qoff[fields], self.quotient)
        er = self.gather(ids % m + self._roff[fields], self.remainder)
        if self.op == "mult":
            return eq * er
        if self.op == "add":
            return eq + er
        return torch.cat([eq, er], dim=-1)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self._all_compressed:
            return self._compose(fields, ids)
        dense = self._is_dense[fields]
        out = self.dense.new_zeros((ids.shape[0], self.dim))
        d_ids = ids[dense]
        out[dense] = self.gather(d_ids + self._doff[fields[dense]], self.dense)
        comp = ~dense
        out[comp] = self._compose(fields[comp], ids[comp])
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.quotient, self.remainder, self.dense]

    def memory_bytes(self) -> int:
        return tensor_bytes(self.quotient, self.remainder, self.dense)

    def export(self) -> ExportedTable:
        cfg = {**base_config(self), "op": self.op, "remainders": list(self.remainders),
               "quotients": list(self.quotients), "dense": [m == 0 for m in self.remainders]}
        return ExportedTable(self.name, cfg, {
            "quotient": self.quotient.detach().cpu().numpy(),
            "remainder": self.remainder.detach().cpu().numpy(),
            "dense": self.dense.detach().cpu().numpy()})
