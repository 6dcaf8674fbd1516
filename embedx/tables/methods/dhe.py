"""Deep Hash Embedding (Kang, Cheng, Yao, Yi, Chen, Hong and Chi, "Learning to Embed
Categorical Features without Embedding Tables for Recommendation", KDD 2021)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..base import Budget, CompressedTable, TableConfigError, tensor_bytes
from ..export import ExportedTable
from ..hashing import MAX_BUCKETS, hash_buckets, hash_constants
from ._common import (FLOAT_BYTES, HASH_BYTES, base_config, check_positive_int, init_normal,
                      largest_int, on_default_device, require_budget)

DISTRIBUTIONS = ("uniform", "gaussian")
ACTIVATIONS = ("mish", "relu")


def _mlp_floats(k: int, width: int, layers: int, dim: int, batchnorm: bool) -> int:
    """Weights and biases of ``k -> width (x layers) -> dim``, plus BN affine and running stats."""
    linear = (k + 1) * width + (layers - 1) * (width + 1) * width + (width + 1) * dim
    return linear + (4 * width * layers if batchnorm else 0)


class DHETable(CompressedTable):
    """Deep Hash Embedding: no table at all. A global id ``x`` is encoded by ``k`` hash
    functions into ``[0, m)``, made dense and real-valued, and decoded by an MLP:
    ``E(x) = [h_1(x), ..., h_k(x)]`` then ``e(x) = MLP(transform(E(x)))`` (Kang et al. 2021,
    Sec. 3: the encoding function and the decoding network). ``uniform`` maps a bucket to
    ``2 h / (m - 1) - 1`` in ``[-1, 1]``; ``gaussian`` applies Box-Muller to pairs of buckets.
    The decoder has ``hidden_layers`` equal-width layers, each ``Linear -> BatchNorm -> Mish``
    (the paper's choice; ``relu`` optional), then ``Linear -> dim``. Defaults ``k = 1024``,
    ``m = 10^6``, 5 hidden layers follow the paper and the VLDB 2024 benchmark. One network
    serves all fields (ids are global, so fields never share an encoding).

    Sizing rule: the largest hidden width whose parameters, BatchNorm statistics (needed at
    inference) and ``k`` hash functions (16 bytes each) fit the budget. Floor: width 1.
    BatchNorm's ``num_batches_tracked`` counter is a training-only buffer and not counted.
    Initialisation: Xavier-normal weights, zero biases.
    """

    name = "dhe"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 num_hashes: int = 1024, num_buckets: int = 1_000_000, distribution: str = "uniform",
                 hidden_layers: int = 5, activation: str = "mish", batchnorm: bool = True,
                 bn_eps: float = 1e-5, seed: int = 0):
        super().__init__(cardinalities, dim, budget)
        self._check(num_hashes, num_buckets, distribution, hidden_layers, activation)
        self.num_hashes, self.num_buckets = int(num_hashes), int(num_buckets)
        self.distribution, self.activation = distribution, activation
        self.hidden_layers, self.batchnorm, self.bn_eps = int(hidden_layers), bool(batchnorm), float(bn_eps)
        hp = dict(num_hashes=num_hashes, num_buckets=num_buckets, distribution=distribution,
                  hidden_layers=hidden_layers, activation=activation, batchnorm=batchnorm)
        require_budget(self.name, self.budget.bytes, self.min_bytes(self.cardinalities, self.dim, **hp),
                       f"num_hashes={num_hashes}, hidden_layers={hidden_layers}")
        limit = (self.budget.bytes - HASH_BYTES * self.num_hashes) // FLOAT_BYTES
        self.width = largest_int(
            lambda w: _mlp_floats(self.num_hashes, w, self.hidden_layers, self.dim, self.batchnorm) <= limit,
            1, max(1, math.isqrt(limit) + self.num_hashes))
        self.register_buffer("hash_ab", on_default_device(hash_constants(seed, self.num_hashes)))
        gen = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        fan_in = self.num_hashes
        for _ in range(self.hidden_layers):
            layers.append(self._linear(fan_in, self.width, gen))
            if self.batchnorm:
                layers.append(nn.BatchNorm1d(self.width, eps=self.bn_eps))
            layers.append(nn.Mish() if activation == "mish" else nn.ReLU())
            fan_in = self.width
        layers.append(self._linear(fan_in, self.dim, gen))
        self.mlp = nn.Sequential(*layers)

    @staticmethod
    def _check(num_hashes, num_buckets, distribution, hidden_layers, activation) -> None:
        check_positive_int("dhe: num_hashes", num_hashes)
        check_positive_int("dhe: num_buckets", num_buckets, low=2)
        check_positive_int("dhe: hidden_layers", hidden_layers)
        if num_buckets > MAX_BUCKETS:
            raise TableConfigError(f"dhe: num_buckets must be <= {MAX_BUCKETS}, got {num_buckets}")
        if distribution not in DISTRIBUTIONS:
            raise TableConfigError(f"dhe: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if distribution == "gaussian" and num_hashes % 2:
            raise TableConfigError("dhe: the gaussian encoding pairs hashes, num_hashes must be even")
        if activation not in ACTIVATIONS:
            raise TableConfigError(f"dhe: activation must be one of {ACTIVATIONS}, got {activation!r}")

    @staticmethod
    def _linear(fan_in: int, fan_out: int, gen: torch.Generator) -> nn.Linear:
        layer = nn.Linear(fan_in, fan_out, device="meta")  # no draw from the global RNG
        layer.weight = nn.Parameter(init_normal((fan_out, fan_in), math.sqrt(2.0 / (fan_in + fan_out)), gen))
        layer.bias = nn.Parameter(torch.zeros(fan_out))
        return layer

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, num_hashes: int = 1024,
                  num_buckets: int = 1_000_000, distribution: str = "uniform", hidden_layers: int = 5,
                  activation: str = "mish", batchnorm: bool = True, **hparams) -> int:
        cls._check(num_hashes, num_buckets, distribution, hidden_layers, activation)
        return (_mlp_floats(num_hashes, 1, hidden_layers, dim, batchnorm) * FLOAT_BYTES
                + HASH_BYTES * num_hashes)

    def encode(self, g: torch.Tensor) -> torch.Tensor:
        """The dense hash encoding ``(n, k)`` of global ids (no learned parameters)."""
        h = hash_buckets(g[:, None], self.hash_ab[:, 0], self.hash_ab[:, 1], self.num_buckets).float()
        m = float(self.num_buckets)
        if self.distribution == "uniform":
            return h / (m - 1) * 2 - 1
        u1 = (h[:, 0::2] + 1) / m
        u2 = h[:, 1::2] / m
        r = torch.sqrt(-2 * torch.log(u1))
        theta = float(torch.tensor(2 * math.pi, dtype=torch.float32)) * u2
        return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1).reshape(h.shape)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(self.global_ids(fields, ids)))

    def _inference_tensors(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [self.hash_ab]
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                out += [m.weight, m.bias]
            elif isinstance(m, nn.BatchNorm1d):
                out += [m.weight, m.bias, m.running_mean, m.running_var]
        return out

    def memory_bytes(self) -> int:
        return tensor_bytes(*self._inference_tensors())

    def export(self) -> ExportedTable:
        arrays = {"hash": self.hash_ab.cpu().numpy()}
        linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        norms = [m for m in self.mlp if isinstance(m, nn.BatchNorm1d)]
        for i, lin in enumerate(linears[:-1]):
            arrays[f"w{i}"] = lin.weight.detach().cpu().numpy()
            arrays[f"b{i}"] = lin.bias.detach().cpu().numpy()
        for i, bn in enumerate(norms):
            arrays[f"bn{i}_weight"] = bn.weight.detach().cpu().numpy()
            arrays[f"bn{i}_bias"] = bn.bias.detach().cpu().numpy()
            arrays[f"bn{i}_mean"] = bn.running_mean.cpu().numpy()
            arrays[f"bn{i}_var"] = bn.running_var.cpu().numpy()
        arrays["w_out"] = linears[-1].weight.detach().cpu().numpy()
        arrays["b_out"] = linears[-1].bias.detach().cpu().numpy()
        cfg = {**base_config(self), "num_buckets": self.num_buckets, "distribution": self.distribution,
               "activation": self.activation, "batchnorm": self.batchnorm, "bn_eps": self.bn_eps,
               "hidden": [self.width] * self.hidden_layers}
        return ExportedTable(self.name, cfg, arrays)
