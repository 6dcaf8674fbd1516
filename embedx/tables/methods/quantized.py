"""Low-precision embedding tables: fixed-scale INT8/INT16 and ALPT's learned step sizes.

Both keep float32 master weights while training (what :meth:`training_memory_bytes` counts)
and deploy only integer codes plus scales (what :meth:`memory_bytes` counts and ``export()``
writes). Their compression is fixed by the bit width, so their floor (:meth:`min_bytes`) is the
quantised table itself: 4x (INT8), 2x (INT16), 3.2x (ALPT 8-bit, dim 16) smaller than float32.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from ..base import Budget, CompressedTable, TableConfigError, tensor_bytes
from ..export import ExportedTable
from ._common import (FLOAT_BYTES, SeededRng, base_config, init_normal, require_budget,
                      stochastic_round)

_CODE_DTYPES = {8: torch.int8, 16: torch.int16}


def _qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


#: the clipping range both fixed-scale widths share by default: codes cover [-1.28, 1.27]
#: (INT8: 256 steps of 0.01; INT16: 65,536 steps of 0.01 / 256)
FIXED_RANGE_STEP_INT8 = 0.01


class _FixedScaleTable(CompressedTable):
    """Quantised embeddings with one fixed scale ``s`` per table: ``w_hat = s * clip(R(w / s))``
    with codes clipped to ``[-2^(b-1), 2^(b-1) - 1]``.

    Training (quantisation-aware, Guan et al., "Post-Training 4-Bit Quantization on Embedding
    Tables", 2019; the INT8/INT16 baselines of Zhang et al., VLDB 2024, sec. 4): the forward
    pass uses stochastic rounding ``R(v) = floor(v + u)``, ``u ~ U[0, 1)``, of the float32
    master weights, and the straight-through estimator passes the gradient to them unchanged.
    Inference and ``export()`` use round-to-nearest codes. The scale is a per-table
    hyperparameter, not learned and not per row. Its default follows the bit width, as the
    benchmark's fixed-scale setting does: both widths clip to the same range, ``[-1.28, 1.27]``
    (far beyond the trained embeddings' values), and INT16 spends its extra 8 bits on 256x finer
    steps, ``s = 0.01`` for INT8 and ``s = 0.01 / 256`` for INT16. (With one scale for both, any
    weight inside INT8's range would get the same code in both and the two would be identical.)

    Sizing rule: none, the table is ``sum(cards) * dim`` codes (the scale is a config value, like
    the cardinalities, and not counted); a smaller budget is refused (:meth:`min_bytes`).
    """

    bits: ClassVar[int] = 8
    default_scale: ClassVar[float] = FIXED_RANGE_STEP_INT8

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 scale: float | None = None, seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        scale = self.default_scale if scale is None else scale
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise TableConfigError(f"{self.name}: scale must be a positive number, got {scale!r}")
        require_budget(self.name, self.budget.bytes, self.min_bytes(self.cardinalities, self.dim))
        self.qmin, self.qmax = _qrange(self.bits)
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(init_normal((self.total_ids, self.dim), init_std, gen))
        self.scale = float(np.float32(scale))  # a fixed hyperparameter: in the config, not counted
        self._rng = SeededRng(seed)

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, **hparams) -> int:
        return sum(int(c) for c in cardinalities) * dim * cls.bits // 8

    def _codes(self, w: torch.Tensor, stochastic: bool) -> torch.Tensor:
        v = w / self.scale
        v = stochastic_round(v, self._rng) if stochastic else torch.round(v)
        return v.clamp(self.qmin, self.qmax)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        w = self.gather(self.global_ids(fields, ids), self.weight)
        w_hat = self._codes(w.detach(), stochastic=self.training) * self.scale
        return w + (w_hat - w).detach() if self.training else w_hat

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def memory_bytes(self) -> int:
        return self.weight.numel() * self.bits // 8

    def training_memory_bytes(self) -> int:
        return tensor_bytes(self.weight)

    def export(self) -> ExportedTable:
        with torch.no_grad():
            codes = self._codes(self.weight, stochastic=False).to(_CODE_DTYPES[self.bits])
        return ExportedTable(self.name, {**base_config(self), "bits": self.bits, "scale": self.scale},
                             {"codes": codes.cpu().numpy()})


class Int8Table(_FixedScaleTable):
    __doc__ = _FixedScaleTable.__doc__
    name = "int8"
    bits = 8


class Int16Table(_FixedScaleTable):
    __doc__ = _FixedScaleTable.__doc__
    name = "int16"
    bits = 16
    default_scale = FIXED_RANGE_STEP_INT8 / 256


class ALPTTable(CompressedTable):
    """ALPT: Adaptive Low-Precision Training (Li et al., "Adaptive Low-Precision Training for
    Embeddings in Click-Through Rate Prediction", AAAI 2023).

    Every row ``x`` has a learned step size ``D_x``; the embedding is
    ``w_hat = D_x * clip(R(w / D_x), -2^(b-1), 2^(b-1)-1)`` with stochastic rounding ``R`` in
    training (the paper's eq. for quantisation with SR) and round-to-nearest at inference.
    The step gets the LSQ gradient (Esser et al., ICLR 2020; ALPT eq. for dL/dD):
    ``dw_hat/dD = R(v) - v`` inside the range and the clip bound outside, scaled by
    ``g = 1 / sqrt(dim * (2^(b-1) - 1))``; the weights get the straight-through gradient.

    ALPT stores weights in low precision *between* steps: each training lookup writes the
    rounded value ``D_x * code`` back into the row it read, so the optimizer always updates
    a low-precision weight (``w_{t+1} = w_hat_t - lr * grad``), which is quantised again with
    SR when next read. This is a single-pass form of the paper's Algorithm 1: the step's
    gradient comes from the batch that next reads the row rather than a second forward pass
    of the same batch. Here the rows live in a float32 tensor while training (counted by
    :meth:`training_memory_bytes`); ``export()`` writes ``b``-bit codes and float32 steps.

    Sizing rule: none; codes plus one float32 step per row (:meth:`min_bytes`).
    """

    name = "alpt"

    def __init__(self, cardinalities: Sequence[int], dim: int, budget: Budget | None = None, *,
                 bits: int = 8, init_step: float = 0.01, seed: int = 0, init_std: float = 0.01):
        super().__init__(cardinalities, dim, budget)
        if bits not in _CODE_DTYPES:
            raise TableConfigError(f"alpt: bits must be one of {sorted(_CODE_DTYPES)}, got {bits!r}")
        if not (isinstance(init_step, (int, float)) and math.isfinite(init_step) and init_step > 0):
            raise TableConfigError(f"alpt: init_step must be a positive number, got {init_step!r}")
        self.bits = bits
        require_budget(self.name, self.budget.bytes, self.min_bytes(self.cardinalities, self.dim, bits=bits),
                       f"bits={bits}")
        self.qmin, self.qmax = _qrange(bits)
        self.grad_scale = 1.0 / math.sqrt(self.dim * self.qmax)
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(init_normal((self.total_ids, self.dim), init_std, gen))
        self.step = nn.Parameter(torch.full((self.total_ids, 1), float(init_step)))  # a column: gathered like rows
        self._rng = SeededRng(seed)

    @classmethod
    def min_bytes(cls, cardinalities: Sequence[int], dim: int, bits: int = 8, **hparams) -> int:
        if bits not in _CODE_DTYPES:
            raise TableConfigError(f"alpt: bits must be one of {sorted(_CODE_DTYPES)}, got {bits!r}")
        return sum(int(c) for c in cardinalities) * (dim * bits // 8 + FLOAT_BYTES)

    def _delta(self, rows: torch.Tensor) -> torch.Tensor:
        return self.gather(rows, self.step).abs().clamp_min(1e-8)

    def embed(self, fields: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        g = self.global_ids(fields, ids)
        if not self.training:
            delta = self._delta(g)
            return torch.round(self.gather(g, self.weight) / delta).clamp(self.qmin, self.qmax) * delta
        rows, inverse = torch.unique(g, return_inverse=True)
        w = self.gather(rows, self.weight)
        delta = self._delta(rows)
        delta = delta * self.grad_scale + (delta - delta * self.grad_scale).detach()  # LSQ gradient scale
        v = (w / delta).clamp(self.qmin, self.qmax)
        with torch.no_grad():
            code = stochastic_round(v, self._rng).clamp(self.qmin, self.qmax)
            self.weight[rows] = code * delta  # the row is stored in low precision from now on
        w_hat = (v + (code - v).detach()) * delta
        return w_hat[inverse]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight, self.step]

    def memory_bytes(self) -> int:
        return self.weight.numel() * self.bits // 8 + tensor_bytes(self.step)

    def training_memory_bytes(self) -> int:
        return tensor_bytes(self.weight, self.step)

    def export(self) -> ExportedTable:
        with torch.no_grad():
            step = self.step[:, 0].abs().clamp_min(1e-8)
            codes = torch.round(self.weight / step[:, None]).clamp(self.qmin, self.qmax)
        return ExportedTable(self.name, {**base_config(self), "bits": self.bits},
                             {"codes": codes.to(_CODE_DTYPES[self.bits]).cpu().numpy(),
                              "step": step.cpu().numpy()})
