"""Unified Embedding / feature multiplexing (Coleman, Kang, Fahrbach, Wang, Hong, Chi and Cheng,
"Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, TableConfigError, tensor_bytes
from ..export import ExportedTable
from ..hashing import MAX_BUCKETS, hash_buckets, hash_constants
from ._common import (FLOAT_BYTES, HASH_BYTES, as_list, base_config, check_positive_int, init_normal,
                      on_default_device, require_budget)


def _groups(chunks: Sequence[int], dim: int, num_tables: int) -> list[dict]:
    """Fields grouped by chunk width ``dim / c_f`` (tables of one group share that width)."""
    groups: dict[int, dict] = {}
    for f, c in enumerate(chunks):
        w = dim // c
        groups.setdefault(w, {"width": w, "chunks": c, "fields": []})["fields"].append(f)
    out = list(groups.values())
    for g in out:
        g["num_tables"] = min(num_tables, len(g["fields"]) * g["chunks"])
    return out


class UnifiedTable(CompressedTable):
    """Unified Embedding: every feature's values are hashed into the *same* shared table(s).

    Feature ``f`` with ``c_f`` chunks embeds id ``x`` as the concatenation
    ``e_f(x) = [T_{t(f,1)}[h_{f,1}(x)], ..., T_{t(f,c_f)}[h_{f,c_f}(x)]]`` (Coleman et al. 2023,
    Sec. 5 and Fig. 1: one lookup per chunk, each (feature, chunk) pair with its own hash
    function, results concatenated). With ``c_f = 1`` for every feature this is plain feature
    multiplexing (Sec. 3, one table for all features). Because every field must return ``dim``
    columns here, a chunk is ``dim / c_f`` wide, so features with the same chunk count share
    tables of that width; within such a group the (feature, chunk) pairs are assigned
    round-robin to ``num_tables`` shared tables, ``t(p) = p mod num_tables``.

    Sizing rule: after the hash constants (16 bytes per pair), each width group gets floats in
    proportion to the cardinalities of its features (the size its features would have
    uncompressed), at least one row per table; its rows are split evenly over its tables.
    Floor: one row per table plus the hash constants.
    """

    name = "unified"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 chunks: int | Sequence[int] = 1, num_tables: int = 1, seed: int = 0,
                 init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        cards = self.cardinalities
        self.chunks = tuple(self._check_chunks(chunks, len(cards), self.dim))
        self.num_tables = check_positive_int("unified: num_tables", num_tables)
        require_budget(self.name, self.budget.bytes,
                       self.min_bytes(cards, self.dim, chunks=chunks, num_tables=num_tables),
                       f"chunks={chunks}, num_tables={num_tables}")
        self.groups = _groups(self.chunks, self.dim, self.num_tables)
        n_pairs = sum(self.chunks)
        floats = (self.budget.bytes - HASH_BYTES * n_pairs) // FLOAT_BYTES
        spare = floats - sum(g["num_tables"] * g["width"] for g in self.groups)
        total_card = sum(cards)
        gen = torch.Generator().manual_seed(seed)
        constants = hash_constants(seed, n_pairs)
        self.weights = nn.ParameterDict()
        self._group_of = [0] * len(cards)
        self._local = [0] * len(cards)
        start = 0
        for gi, g in enumerate(self.groups):
            w, c, k = g["width"], g["chunks"], g["num_tables"]
            share = spare * sum(cards[f] for f in g["fields"]) // total_card
            rows = k + share // w
            g["table_rows"] = [min(rows // k + (1 if t < rows % k else 0), MAX_BUCKETS) for t in range(k)]
            self.weights[f"w{w}"] = nn.Parameter(init_normal((sum(g["table_rows"]), w), init_std, gen))
            pairs = len(g["fields"]) * c
            self.register_buffer(f"hash_w{w}", on_default_device(constants[start:start + pairs].clone()))
            start += pairs
            table_rows = torch.tensor(g["table_rows"], dtype=torch.long)
            table = torch.arange(pairs) % k
            toff = (table_rows.cumsum(0) - table_rows)[table]
            self.register_buffer(f"_m_w{w}", on_default_device(table_rows[table].view(-1, c)), persistent=False)
            self.register_buffer(f"_toff_w{w}", on_default_device(toff.view(-1, c)), persistent=False)
            for i, f in enumerate(g["fields"]):
                self._group_of[f], self._local[f] = gi, i
        self.register_buffer("_group", on_default_device(torch.tensor(self._group_of)), persistent=False)
        self.register_buffer("_local_t", on_default_device(torch.tensor(self._local)), persistent=False)

    @staticmethod
    def _check_chunks(chunks, n_fields: int, dim: int) -> list[int]:
        out = as_list("unified: chunks", chunks, n_fields)
        for f, c in enumerate(out):
            if c < 1 or dim % c:
                raise TableConfigError(f"unified: field {f} has {c} chunks; chunk counts must be "
                                       f">= 1 and divide dim={dim}")
        return out

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, chunks: int | Sequence[int] = 1,
                  num_tables: int = 1, **hparams) -> int:
        ch = cls._check_chunks(chunks, len(cardinalities), dim)
        groups = _groups(ch, dim, check_positive_int("unified: num_tables", num_tables))
        return HASH_BYTES * sum(ch) + FLOAT_BYTES * sum(g["num_tables"] * g["width"] for g in groups)

    def _group_embed(self, g: dict, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        w = g["width"]
        local = self._local_t[fields]
        ab = getattr(self, f"hash_w{w}").view(-1, g["chunks"], 2)[local]          # (n, c, 2)
        rows = hash_buckets(ids[:, None], ab[..., 0], ab[..., 1], getattr(self, f"_m_w{w}")[local])
        rows = rows + getattr(self, f"_toff_w{w}")[local]
        return self.gather(rows, self.weights[f"w{w}"]).reshape(ids.shape[0], self.dim)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if len(self.groups) == 1:
            return self._group_embed(self.groups[0], fields, ids)
        out = self.weights[f"w{self.groups[0]['width']}"].new_zeros((ids.shape[0], self.dim))
        group = self._group[fields]
        for gi, g in enumerate(self.groups):
            mask = group == gi
            out[mask] = self._group_embed(g, fields[mask], ids[mask])
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.weights.values())

    def memory_bytes(self) -> int:
        return tensor_bytes(*self.weights.values(), *(getattr(self, f"hash_w{g['width']}") for g in self.groups))

    def export(self) -> ExportedTable:
        groups = [{k: g[k] for k in ("width", "chunks", "fields", "table_rows")} for g in self.groups]
        arrays = {}
        for g in self.groups:
            w = g["width"]
            arrays[f"weight_w{w}"] = self.weights[f"w{w}"].detach().cpu().numpy()
            arrays[f"hash_w{w}"] = getattr(self, f"hash_w{w}").cpu().numpy()
        return ExportedTable(self.name, {**base_config(self), "chunks": list(self.chunks),
                                         "num_tables": self.num_tables, "groups": groups}, arrays)
