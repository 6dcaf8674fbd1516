"""ROBE: Random Offset Block Embedding (Desai, Chou and Shrivastava, "Random Offset Block
Embedding (ROBE) for compressed embedding tables in deep learning recommendation systems",
MLSys 2022)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, TableConfigError, tensor_bytes
from ..export import ExportedTable
from ..hashing import MAX_BUCKETS, hash_buckets, hash_constants
from ._common import (FLOAT_BYTES, HASH_BYTES, base_config, check_positive_int, init_normal,
                      on_default_device, require_budget)


class RobeTable(CompressedTable):
    """ROBE-Z: all embeddings live in one circular parameter array ``M`` of size ``|M|``.

    An embedding is split into ``ceil(dim / Z)`` chunks of ``Z`` values; chunk ``j`` of global
    id ``x`` is the ``Z`` consecutive values starting at offset ``h(x, j)``, wrapping around the
    end: ``e(x)[jZ + i] = g(x, jZ + i) * M[(h(x, j) + i) mod |M|]`` (Desai et al. 2022, Sec. 3,
    the ROBE-Z lookup), with an optional sign hash ``g`` in {-1, +1} per element.
    ``h(x, j)`` hashes the key ``x * n_chunks + j``; ``g`` hashes ``x * dim + element``. Chunks
    here stay inside one embedding, so ``1 <= Z <= dim`` (``Z = 1`` hashes every element
    independently, the setting of the VLDB 2024 benchmark).

    Sizing rule: ``|M| = floor((budget - hash constants) / 4)`` values, capped at the
    uncompressed size. Floor: ``|M| = Z``.
    """

    name = "robe"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 chunk_size: int = 1, signed: bool = True, seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        self.chunk_size = self._check_chunk(chunk_size, self.dim)
        self.signed = bool(signed)
        require_budget(self.name, self.budget.bytes,
                       self.min_bytes(self.cardinalities, self.dim, chunk_size=chunk_size, signed=signed),
                       f"chunk_size={chunk_size}")
        hash_bytes = HASH_BYTES * (2 if self.signed else 1)
        self.size = int(min((self.budget.bytes - hash_bytes) // FLOAT_BYTES, self.total_ids * self.dim,
                            MAX_BUCKETS))
        self.num_chunks = -(-self.dim // self.chunk_size)
        gen = torch.Generator().manual_seed(seed)
        self.array = nn.Parameter(init_normal((self.size,), init_std, gen))
        self.register_buffer("hash_ab", on_default_device(hash_constants(seed, 1, stream=0)))
        if self.signed:
            self.register_buffer("sign_ab", on_default_device(hash_constants(seed, 1, stream=1)))
        self.register_buffer("_steps", on_default_device(torch.arange(self.chunk_size)), persistent=False)
        self.register_buffer("_chunks", on_default_device(torch.arange(self.num_chunks)), persistent=False)
        self.register_buffer("_elems", on_default_device(torch.arange(self.dim)), persistent=False)

    @staticmethod
    def _check_chunk(chunk_size, dim: int) -> int:
        z = check_positive_int("robe: chunk_size", chunk_size)
        if z > dim:
            raise TableConfigError(f"robe: chunk_size must be <= dim={dim}, got {z}")
        return z

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, chunk_size: int = 1, signed: bool = True,
                  **hparams) -> int:
        return cls._check_chunk(chunk_size, dim) * FLOAT_BYTES + HASH_BYTES * (2 if signed else 1)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        g = self.global_ids(fields, ids)[:, None]
        start = hash_buckets(g * self.num_chunks + self._chunks, self.hash_ab[0, 0], self.hash_ab[0, 1],
                             self.size)
        idx = (start[..., None] + self._steps) % self.size
        emb = self.array[idx].reshape(ids.shape[0], -1)[:, :self.dim]
        if self.signed:
            bit = hash_buckets(g * self.dim + self._elems, self.sign_ab[0, 0], self.sign_ab[0, 1], 2)
            emb = emb * (1 - 2 * bit).to(emb.dtype)
        return emb

    def memory_bytes(self) -> int:
        return tensor_bytes(self.array, self.hash_ab, *([self.sign_ab] if self.signed else []))

    def export(self) -> ExportedTable:
        arrays = {"array": self.array.detach().cpu().numpy(), "hash": self.hash_ab.cpu().numpy()}
        if self.signed:
            arrays["sign_hash"] = self.sign_ab.cpu().numpy()
        return ExportedTable(self.name, {**base_config(self), "size": self.size, "chunk_size": self.chunk_size,
                                         "signed": self.signed}, arrays)
