"""Optimizers for sparse (row) gradients of embedding tables, and a set of optimizers stepped as one.

A 33M-row table trained with dense Adam carries a dense gradient and two dense moment tensors
the size of the table, and every step rewrites all of them (13 GB and ~9 s per step at Criteo
size). With ``trainer.table_optimizer`` the table's row-gathered parameters get sparse
gradients (:meth:`embedx.tables.base.CompressedTable.set_sparse_gradients`) and one of:

- ``sparse_adam``: ``torch.optim.SparseAdam``, Adam's update on the rows a batch read ("lazy
  Adam"); it still keeps two moment tensors the size of the table.
- ``rowwise_adagrad``: :class:`RowWiseAdagrad`, one accumulator per row (the optimizer DLRM
  and FBGEMM use for large tables); its state is one float per row.

The rest of the model keeps the dense optimizer (``trainer.optimizer``); :class:`OptimizerSet`
steps both and checkpoints them as one state dict.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

SPARSE_OPTIMIZERS = ("sparse_adam", "rowwise_adagrad")

__all__ = ["SPARSE_OPTIMIZERS", "RowWiseAdagrad", "OptimizerSet", "sparse_optimizer", "optimizer_name"]


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise AdaGrad: one accumulator ``G_i`` per row ``i`` of a parameter (its first axis),
    the running sum of the row's mean squared gradient,

        ``G_i += mean_j g_ij^2``,  ``w_i -= lr * g_i / (sqrt(G_i) + eps)``

    (Duchi et al. 2011, AdaGrad with its per-coordinate accumulator shared across a row, as in
    DLRM's and FBGEMM's ``rowwise_adagrad``). Sparse gradients update only the rows they name
    (duplicates summed first); dense ones update every row. State: one float per row.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.01, eps: float = 1e-8):
        if not lr > 0 or not eps > 0:
            raise ValueError(f"RowWiseAdagrad needs lr > 0 and eps > 0, got lr={lr}, eps={eps}")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's Optimizer.step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["sum"] = torch.zeros(p.shape[0] if p.dim() else 1, dtype=p.dtype, device=p.device)
                acc = state["sum"]
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    acc.index_add_(0, rows, values.reshape(len(rows), -1).pow(2).mean(1))
                    std = acc[rows].sqrt_().add_(eps)
                    p.index_add_(0, rows, values / _per_row(std, values.dim()), alpha=-lr)
                else:
                    acc.add_(grad.reshape(acc.shape[0], -1).pow(2).mean(1))
                    std = acc.sqrt().add_(eps)
                    p.addcdiv_(grad, _per_row(std, grad.dim()), value=-lr)
        return loss


def _per_row(std: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-row vector shaped to broadcast over a ``ndim``-dimensional tensor of rows."""
    return std.view(-1, *([1] * (ndim - 1))) if ndim else std.view(())


def sparse_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`SPARSE_OPTIMIZERS`) over parameters with sparse gradients."""
    if name == "sparse_adam":
        return torch.optim.SparseAdam(list(params), lr=lr)
    if name == "rowwise_adagrad":
        return RowWiseAdagrad(list(params), lr=lr)
    raise ValueError(f"unknown sparse optimizer {name!r}; choose one of {', '.join(SPARSE_OPTIMIZERS)}")


def optimizer_name(optimizer: Any) -> str:
    """``Adam``, or ``Adam+SparseAdam`` for an :class:`OptimizerSet` (what a checkpoint records)."""
    return getattr(optimizer, "name", type(optimizer).__name__)


class OptimizerSet:
    """Several optimizers over disjoint parameters, used as one: ``zero_grad``, ``step``,
    ``param_groups``, and one ``state_dict`` whose parameter numbers run on across the
    optimizers (each group records which optimizer it belongs to), so a checkpoint of a mixed
    dense + sparse setup has the same flat layout as one of a single optimizer."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("an OptimizerSet needs at least one optimizer")
        self.optimizers = list(optimizers)

    @property
    def name(self) -> str:
        return "+".join(type(o).__name__ for o in self.optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict] = []
        base = 0
        for k, o in enumerate(self.optimizers):
            sd = o.state_dict()
            state.update({base + int(i): v for i, v in sd["state"].items()})
            groups += [{**g, "params": [base + i for i in g["params"]], "optimizer": k} for g in sd["param_groups"]]
            base += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if sorted({g.get("optimizer") for g in groups}) != list(range(len(self.optimizers))):
            raise ValueError(f"the saved optimizer state is not one of {len(self.optimizers)} optimizers")
        base = 0
        for k, o in enumerate(self.optimizers):
            mine = [g for g in groups if g["optimizer"] == k]
            n = sum(len(g["params"]) for g in mine)
            o.load_state_dict({
                "state": {int(i) - base: v for i, v in state_dict["state"].items() if base <= int(i) < base + n},
                "param_groups": [{**{a: b for a, b in g.items() if a != "optimizer"},
                                  "params": [i - base for i in g["params"]]} for g in mine]})
            base += n
