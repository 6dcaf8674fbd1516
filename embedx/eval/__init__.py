"""Evaluation: standard IR metrics (trec_eval semantics, computed by ranx)."""

from .metrics import DEFAULT_METRICS, EvaluationError, Metric, evaluate, parse_metric

__all__ = ["DEFAULT_METRICS", "EvaluationError", "Metric", "evaluate", "parse_metric"]
