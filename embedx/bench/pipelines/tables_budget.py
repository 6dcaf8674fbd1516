"""``tables-core`` part 1: does every table method fill its memory budget?

Every method is built at each compression rate for the given cardinalities (the 26 Criteo
fields by default) on torch's ``meta`` device, so a 2 GB table is sized and counted without
allocating anything. A build is either within ``memory_bytes() / budget`` of 1, or refused
because the budget is below the method's documented floor (``min_bytes``); any other outcome
(a refusal above the floor, an unexpected error, memory over the budget) is a failure.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)


def criteo_cardinalities(spec: Any = "criteo", max_cardinality: int | None = None) -> list[int]:
    """``"criteo"`` -> the 26 Criteo Kaggle cardinalities; a list as is; optionally capped."""
    from embedx.tables.data.criteo_synth import CRITEO_KAGGLE_CARDINALITIES

    cards = list(CRITEO_KAGGLE_CARDINALITIES) if spec in (None, "criteo") else [int(c) for c in spec]
    if max_cardinality is not None:
        cards = [min(c, int(max_cardinality)) for c in cards]
    return cards


def relative_error(memory: int, budget: int) -> float:
    """``|memory - budget| / budget``: 0 is a table that fills its budget exactly."""
    return abs(memory - budget) / budget


def budget_accuracy(methods: Sequence[str], rates: Sequence[float], cardinalities: Sequence[int],
                    dim: int) -> tuple[dict, dict]:
    """Build each (method, rate) on the meta device; returns (metrics, per-pair details)."""
    import torch

    from embedx.tables.base import Budget, TableConfigError
    from embedx.tables.registry import build_table, get_method

    pairs: dict[str, dict[str, Any]] = {}
    errors, failures, below = [], 0, 0
    for method in methods:
        cls = get_method(method)
        floor = int(cls.min_bytes(list(cardinalities), dim))
        for rate in rates:
            budget = Budget.from_rate(rate, cardinalities, dim).bytes
            key = f"{method}@{rate:g}"
            rec: dict[str, Any] = {"method": method, "rate": rate, "budget_bytes": budget, "min_bytes": floor}
            try:
                with torch.device("meta"):
                    table = build_table(method, cardinalities, dim, rate)
            except TableConfigError as e:
                rec["status"] = "below_floor" if budget < floor else "refused_above_floor"
                rec["error"] = str(e)
                if budget < floor:
                    below += 1
                else:
                    failures += 1
            except Exception as e:  # noqa: BLE001 - any other error is a finding to report, not a crash
                rec.update(status="error", error=f"{type(e).__name__}: {e}")
                failures += 1
            else:
                mem = int(table.memory_bytes())
                err = relative_error(mem, budget)
                rec.update(status="ok", memory_bytes=mem, ratio=mem / budget, rel_error=err,
                           training_memory_bytes=int(table.training_memory_bytes()))
                if mem > budget:
                    rec["status"] = "over_budget"
                    failures += 1
                errors.append(err)
                del table
            pairs[key] = rec
            log.info("budget %s: %s", key, rec["status"])
    metrics = {
        "budget_max_rel_error": max(errors) if errors else float("nan"),
        "budget_pairs_built": len(errors),
        "budget_pairs_below_floor": below,
        "budget_unexplained_failures": failures,
    }
    for key, rec in pairs.items():
        if rec["status"] in ("ok", "over_budget"):
            metrics[f"budget_ratio_{key}"] = rec["ratio"]
    return metrics, {"cardinalities": list(cardinalities), "dim": dim, "rates": list(rates), "pairs": pairs}
