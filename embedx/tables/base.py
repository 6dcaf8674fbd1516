"""The one interface every compressed (or uncompressed) embedding table implements.

A table maps integer feature ids of several categorical fields to ``dim``-wide embeddings.
It is built from the fields' cardinalities, the dimension and a memory budget, sizes
itself to that budget, and reports exactly how many bytes it needs at inference
(:meth:`CompressedTable.memory_bytes`) and while training
(:meth:`CompressedTable.training_memory_bytes`).

Subclasses implement :meth:`CompressedTable.embed`, a lookup of flat ids that already carry
their field; the base class does the shared work: input validation, global id offsets,
multi-hot pooling, and budget arithmetic. Everything that differs between methods lives
in the subclass, whose docstring names its paper and equation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

FLOAT_BYTES = 4


class TableConfigError(ValueError):
    """A table cannot be built as asked: budget below the method's floor, bad hyperparameters."""


class TableInputError(ValueError):
    """Ids a table cannot look up: out of range, negative, wrong dtype or shape."""


@dataclass(frozen=True)
class Budget:
    """A memory budget in bytes, usually given as a compression rate of the full table.

    ``rate`` is the fraction of the uncompressed float32 table's memory that is kept
    (0.1 = 10x compression), as in the VLDB 2024 benchmark.
    """

    bytes: int

    @classmethod
    def from_rate(cls, rate: float, cardinalities: Sequence[int], dim: int) -> "Budget":
        if not 0 < rate <= 1:
            raise TableConfigError(f"compression rate must be in (0, 1], got {rate}")
        return cls(int(math.floor(rate * sum(cardinalities) * dim * FLOAT_BYTES)))

    @classmethod
    def full(cls, cardinalities: Sequence[int], dim: int) -> "Budget":
        return cls(sum(cardinalities) * dim * FLOAT_BYTES)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class CompressedTable(nn.Module, ABC):
    """Base class of every embedding table method (see the module docstring).

    Input ids are ``(batch, fields)`` (one id per field) or ``(batch, fields, bag)`` for
    multi-hot fields padded with ``-1``; multi-hot bags are mean-pooled. Ids are per-field
    (0 .. cardinality-1); :attr:`offsets` turns them into global ids for methods that
    share storage across fields.
    """

    name: ClassVar[str] = ""

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None):
        super().__init__()
        cards = [int(c) for c in cardinalities]
        if not cards or any(c <= 0 for c in cards):
            raise TableConfigError(f"cardinalities must be positive, got {list(cardinalities)}")
        if dim <= 0:
            raise TableConfigError(f"dim must be positive, got {dim}")
        self.cardinalities = tuple(cards)
        self.dim = int(dim)
        self.budget = budget or Budget.full(cards, dim)
        offsets = torch.tensor([0] + cards[:-1], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("_cards", torch.tensor(cards, dtype=torch.long), persistent=False)
        self.sparse_grad = False

    @property
    def num_fields(self) -> int:
        return len(self.cardinalities)

    @property
    def total_ids(self) -> int:
        return sum(self.cardinalities)

    # -- to implement -------------------------------------------------------------
    @abstractmethod
    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(n, dim)`` of flat, validated ``ids`` (n,) of the given ``fields`` (n,)."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes of every parameter and buffer needed to answer lookups at inference."""

    def training_memory_bytes(self) -> int:
        """Bytes held while training (parameters, full-precision copies, optimizer-free);
        defaults to the inference bytes."""
        return self.memory_bytes()

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, **hparams) -> int:
        """The smallest budget this method can be built with (its documented floor)."""
        return 0

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The parameters read by a plain row gather (:meth:`gather`), which can be trained with
        sparse row gradients; empty for methods whose lookup computes rows (TT-Rec, DHE, ...)."""
        return []

    def set_sparse_gradients(self, enabled: bool = True) -> list[nn.Parameter]:
        """Make :meth:`gather` emit sparse gradients, so an optimizer for sparse gradients
        (``SparseAdam``, row-wise Adagrad) touches only the rows a batch read instead of the whole
        table: what makes a 33M-row table trainable. Returns :meth:`sparse_parameters`; a method
        without any is refused with a :class:`TableConfigError`."""
        params = self.sparse_parameters()
        if enabled and not params:
            raise TableConfigError(f"table method {self.name!r} has no row-gathered parameters, so it cannot "
                                   "train with sparse gradients; use a dense optimizer for it")
        self.sparse_grad = bool(enabled)
        return params

    def gather(self, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight[rows]``, with a sparse gradient when :meth:`set_sparse_gradients` is on."""
        return nn.functional.embedding(rows, weight, sparse=self.sparse_grad)

    # -- shared -----------------------------------------------------------------
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(batch, fields)`` or ``(batch, fields, bag)`` ids -> ``(batch, fields, dim)``."""
        ids = self.check_ids(ids)
        if ids.dim() == 2:
            b, f = ids.shape
            fields = torch.arange(f, device=ids.device).expand(b, f).reshape(-1)
            return self.embed(fields, ids.reshape(-1)).view(b, f, self.dim)
        b, f, l = ids.shape
        valid = ids >= 0
        fields = torch.arange(f, device=ids.device).view(1, f, 1).expand(b, f, l)
        out = ids.new_zeros((b, f, l, self.dim), dtype=torch.float32)
        if valid.any():
            out[valid] = self.embed(fields[valid], ids[valid])
        counts = valid.sum(-1, keepdim=True).clamp(min=1).to(out.dtype)
        return out.sum(2) / counts

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            raise TableInputError(f"ids must be a torch tensor, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TableInputError(f"ids must be int64 or int32, got {ids.dtype}")
        if ids.dim() not in (2, 3) or ids.shape[1] != self.num_fields:
            raise TableInputError(
                f"ids must be (batch, {self.num_fields}) or (batch, {self.num_fields}, bag), got {tuple(ids.shape)}")
        ids = ids.long()
        cards = self._cards.view(1, -1, *([1] * (ids.dim() - 2)))
        low = -1 if ids.dim() == 3 else 0
        bad = (ids < low) | (ids >= cards)
        if bad.any():
            pos = bad.nonzero()[0].tolist()
            raise TableInputError(f"id {int(ids[tuple(pos)])} at {tuple(pos)} is out of range for field "
                                  f"{pos[1]} (cardinality {self.cardinalities[pos[1]]})")
        return ids

    def global_ids(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per-field ids -> one id space over all fields."""
        return ids + self.offsets[fields]

    def extra_repr(self) -> str:
        return (f"fields={self.num_fields}, ids={self.total_ids:,}, dim={self.dim}, "
                f"budget={self.budget.bytes:,} B, memory={self.memory_bytes():,} B")
