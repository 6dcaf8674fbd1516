"""The hashing trick (Weinberger et al., "Feature Hashing for Large Scale Multitask Learning",
ICML 2009), per field and shared across fields."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, TableConfigError, tensor_bytes
from ..export import ExportedTable
from ..hashing import hash_buckets, hash_constants, MAX_BUCKETS
from ._common import (FLOAT_BYTES, HASH_BYTES, allocate_rows, base_config, init_normal,
                      on_default_device, require_budget)


class HashTable(CompressedTable):
    """Per-field hashing trick: field ``f`` has its own table of ``m_f`` rows and
    ``e(x) = E_f[h_f(x)]``, ``h_f(x) = ((a_f x + b_f) mod 2^64 >> 32) * m_f >> 32``
    (Weinberger et al. 2009, eq. 1 without the sign hash, as in the VLDB 2024 benchmark).

    Sizing rule: after the hash constants (16 bytes per field) the budget buys
    ``R = floor(rest / (4 dim))`` rows, split over fields in proportion to
    ``c_f ** size_exponent`` and capped at ``c_f`` (:func:`allocate_rows`). The default 1 is
    proportional to cardinality, as in the VLDB 2024 benchmark; at tiny budgets it leaves small
    fields a single row, and ``size_exponent = 0`` (equal shares, small fields kept whole) is
    the stronger baseline there. A field whose table holds all its ids is stored uncompressed
    (``h_f`` = identity). Floor: one row per field. The per-field tables are stored back to back
    in one parameter so a lookup is a single gather.
    """

    name = "hash"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 size_exponent: float = 1.0, seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        cards = self.cardinalities
        if not (isinstance(size_exponent, (int, float)) and 0 <= size_exponent <= 1):
            raise TableConfigError(f"hash: size_exponent must be in [0, 1], got {size_exponent!r}")
        self.size_exponent = float(size_exponent)
        require_budget(self.name, self.budget.bytes, self.min_bytes(cards, self.dim))
        total = (self.budget.bytes - HASH_BYTES * len(cards)) // (self.dim * FLOAT_BYTES)
        rows = allocate_rows(cards, min(total, MAX_BUCKETS), self.size_exponent)
        self.rows = tuple(rows)
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(init_normal((sum(rows), self.dim), init_std, gen))
        self.register_buffer("hash_ab", on_default_device(hash_constants(seed, len(cards))))
        row_t = torch.tensor(rows, dtype=torch.long)
        self.register_buffer("_rows", on_default_device(row_t), persistent=False)
        self.register_buffer("_row_offsets", on_default_device(row_t.cumsum(0) - row_t), persistent=False)
        self.register_buffer("_identity", on_default_device(row_t == torch.tensor(cards)), persistent=False)

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, **hparams) -> int:
        return len(cardinalities) * (dim * FLOAT_BYTES + HASH_BYTES)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ab = self.hash_ab[fields]
        rows = hash_buckets(ids, ab[:, 0], ab[:, 1], self._rows[fields])
        rows = torch.where(self._identity[fields], ids, rows)
        return self.gather(rows + self._row_offsets[fields], self.weight)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def memory_bytes(self) -> int:
        return tensor_bytes(self.weight, self.hash_ab)

    def export(self) -> ExportedTable:
        return ExportedTable(self.name, {**base_config(self), "rows": list(self.rows)},
                             {"weight": self.weight.detach().cpu().numpy(),
                              "hash": self.hash_ab.cpu().numpy()})


class SharedHashTable(CompressedTable):
    """One hashed table for all fields: ``e(x) = E[h(offset_f + x)]`` over global ids
    (Weinberger et al. 2009, eq. 1; the shared-table hashing baseline of the VLDB 2024 study).

    Sizing rule: ``R = floor((budget - 16) / (4 dim))`` rows, capped at the number of ids (then
    the lookup is the identity). Floor: one row plus the hash constants.
    """

    name = "hash_shared"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        require_budget(self.name, self.budget.bytes, self.min_bytes(self.cardinalities, self.dim))
        rows = (self.budget.bytes - HASH_BYTES) // (self.dim * FLOAT_BYTES)
        self.num_rows = int(min(rows, self.total_ids, MAX_BUCKETS))
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(init_normal((self.num_rows, self.dim), init_std, gen))
        self.register_buffer("hash_ab", on_default_device(hash_constants(seed, 1)))

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, **hparams) -> int:
        return dim * FLOAT_BYTES + HASH_BYTES

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        g = self.global_ids(fields, ids)
        if self.num_rows < self.total_ids:
            g = hash_buckets(g, self.hash_ab[0, 0], self.hash_ab[0, 1], self.num_rows)
        return self.gather(g, self.weight)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def memory_bytes(self) -> int:
        return tensor_bytes(self.weight, self.hash_ab)

    def export(self) -> ExportedTable:
        return ExportedTable(self.name, {**base_config(self), "rows": self.num_rows},
                             {"weight": self.weight.detach().cpu().numpy(),
                              "hash": self.hash_ab.cpu().numpy()})
