"""Training objectives of the inference-free sparse retriever (Geng et al., 2024).

All functions are plain torch on already-computed tensors, so each one can be checked
against a hand computation:

- :func:`student_scores`: ``s(q, d) = sum_t q_t * w_d(t)``, where a query vector is its
  IDF weights (or ones) over its unique tokens (see :mod:`embedx.sparse.query`).
- :func:`flops_loss` / :func:`flops_lambda`: the FLOPS regulariser on document vectors only,
  ``L_F = sum_j (mean_i w_{d_i}[j])^2``, with the quadratic warm-up
  ``lambda(step) = lambda_d * min(1, ((step + 1) / T)^2)``. It is *IDF-aware* because the
  ranking loss that it is traded against sees IDF-weighted scores: a low-IDF token earns
  little score for the FLOPS it costs, so it is pruned; a high-IDF token is kept.
- :func:`infonce_loss`, :func:`margin_mse_loss`, :func:`kl_distill_loss`: the ranking losses.
- :func:`minmax_normalize` / :func:`ensemble_teacher_scores`: the heterogeneous teacher, each
  teacher's scores min-max normalised per query, averaged and scaled by ``S``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

LOSS_NAMES = ("infonce", "kl", "marginmse")
_EPS = 1e-6  # the released code's guard against a constant row in min-max normalisation
_MASKED = -1e30


def flops_lambda(step: int, lambda_d: float, warmup_steps: int) -> float:
    """``lambda_d * min(1, ((step + 1) / T)^2)``: the FLOPS weight at 0-based ``step``."""
    if warmup_steps <= 0:
        return float(lambda_d)
    return float(lambda_d) * min(1.0, ((step + 1) / warmup_steps) ** 2)


def flops_loss(doc_weights: torch.Tensor, threshold: int | None = None) -> torch.Tensor:
    """``sum_j (mean_i w_i[j])^2`` over a batch of ``(n_docs, vocab)`` document vectors.

    With ``threshold`` (the released code's ``flops_threshold`` variant) only documents with
    more than ``threshold`` non-zero terms are penalised; the mean still divides by all
    documents, so short documents simply contribute nothing.
    """
    if doc_weights.dim() != 2:
        raise ValueError(f"expected (n_docs, vocab) weights, got shape {tuple(doc_weights.shape)}")
    w = doc_weights.abs().float()
    if threshold is not None:
        long_docs = (w > 0).sum(dim=1) > threshold
        w = w * long_docs.unsqueeze(1).to(w.dtype)
    return (w.mean(dim=0) ** 2).sum()


def student_scores(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """``(n_q, V) x (n_d, V) -> (n_q, n_d)`` dot products, in float32."""
    return queries.float() @ docs.float().T


def group_scores(all_scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Pick each query's own documents out of the ``(n_q, n_d)`` score matrix: ``columns`` is
    ``(n_q, G)`` column indices (positive first, then that query's hard negatives)."""
    return torch.gather(all_scores, 1, columns)


def infonce_loss(scores: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the positive column ``target[i]`` against every other column of row i.

    ``scores`` is ``(n_q, n_d)`` (a query's hard negatives plus, with in-batch negatives, the
    other queries' documents); ``exclude`` marks columns that must not act as negatives (other
    known positives of the query, duplicates of its positive). The target column is never excluded.
    """
    scores = scores.float()
    if exclude is not None:
        exclude = exclude.clone()
        exclude[torch.arange(len(target), device=exclude.device), target] = False
        scores = scores.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(scores, target)


def margin_mse_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the student's and the teacher's margins ``s(q, d+) - s(q, d-)``.

    ``(n_q, G)`` scores with the positive in column 0; ``valid`` masks padded negatives.
    """
    s_margin = student[:, :1].float() - student[:, 1:].float()
    t_margin = teacher[:, :1].float() - teacher[:, 1:].float()
    err = (s_margin - t_margin) ** 2
    if valid is None:
        return err.mean()
    mask = valid[:, 1:].to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def kl_distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(softmax(teacher / tau) || softmax(student / tau))`` summed over candidates, averaged
    over queries (the released code's reduction; no ``tau^2`` factor)."""
    s = student.float() / temperature
    t = teacher.float() / temperature
    if valid is not None:  # a huge finite negative, not -inf: keeps every term (and gradient) finite
        s = s.masked_fill(~valid, _MASKED)
        t = t.masked_fill(~valid, _MASKED)
    log_p_s = F.log_softmax(s, dim=1)
    log_p_t = F.log_softmax(t, dim=1)
    terms = log_p_t.exp() * (log_p_t - log_p_s)
    if valid is not None:
        terms = terms.masked_fill(~valid, 0.0)
    return terms.sum(dim=1).mean()


def minmax_normalize(scores: torch.Tensor, valid: torch.Tensor | None = None, eps: float = _EPS) -> torch.Tensor:
    """Per-row ``(x - min) / (max - min + eps)`` over the valid entries; invalid entries -> 0."""
    x = scores.float()
    if valid is None:
        lo = x.min(dim=1, keepdim=True).values
        hi = x.max(dim=1, keepdim=True).values
        return (x - lo) / (hi - lo + eps)
    lo = x.masked_fill(~valid, float("inf")).min(dim=1, keepdim=True).values
    hi = x.masked_fill(~valid, float("-inf")).max(dim=1, keepdim=True).values
    out = (x - lo) / (hi - lo + eps)
    return out.masked_fill(~valid, 0.0)


def ensemble_teacher_scores(per_teacher: Sequence[torch.Tensor], scale: float = 30.0,
                            valid: torch.Tensor | None = None) -> torch.Tensor:
    """The heterogeneous ensemble: each teacher's ``(n_q, G)`` scores min-max normalised per
    query, averaged over teachers, times ``scale`` (``S``; 30 in the released code)."""
    if not per_teacher:
        raise ValueError("the ensemble needs at least one teacher")
    norm = torch.stack([minmax_normalize(t, valid) for t in per_teacher]).mean(dim=0)
    return norm * scale
