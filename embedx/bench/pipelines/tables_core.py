"""``tables-core``: the bars of the first embedding-tables issue, measured in one run.

1. Budget accuracy of every method at each compression rate (:mod:`.tables_budget`).
2. Lookup throughput of the exported torch-free tables against ``torch.nn.EmbeddingBag`` on
   the uncompressed table (:mod:`.tables_lookup`), measured first, on a quiet process.
3. Training throughput and peak RSS per method, one process each (:mod:`.tables_train`).
4. Quality (test AUC / logloss, AUC loss against uncompressed) of every method at each
   budget on MovieLens 1M with DCN-v2, and the Unified Embedding bar (:mod:`.tables_quality`).

Every setting comes from the spec's ``params`` (see ``benchmarks/specs/tables-core.yaml``);
each part can be switched off with ``enabled: false`` in its block. A part whose data is
absent is skipped and says so in ``details``; the others still run. An AUC-against-memory
chart (one line per method over the budgets) is drawn to ``params.plot`` when matplotlib is
installed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

from ..figures import plot_path, pyplot, save_figure
from ..runner import BenchmarkSkipped, Context

log = logging.getLogger(__name__)

ALL_METHODS = ("full", "hash", "hash_shared", "qr", "tt_rec", "dhe", "robe", "mde", "int8", "int16", "alpt",
               "unified")


def _block(params: Mapping[str, Any], name: str) -> dict:
    """A part's settings, with the top-level ``threads`` as its default."""
    block = dict(params.get(name) or {})
    block.setdefault("threads", params.get("threads", 1))
    return block


def headline_metrics(metrics: Mapping[str, Any], rates: list[float]) -> list[str]:
    """The bar metrics, in reading order, that exist in ``metrics``."""
    from .tables_quality import rate_key

    names = ["budget_max_rel_error", "budget_unexplained_failures", "ue_beats_hash_all_budgets",
             "ue_margin_largest_at_smallest_budget"]
    names += [f"ue_minus_hash_auc@{rate_key(r)}" for r in sorted(rates)]
    names += [m for m in metrics if m.endswith("_full_auc")]
    names += [f"lookup_speedup_{m}" for m in ("hash", "qr", "unified", "int8")]
    names += [f"lookup_speedup_hugepages_{m}" for m in ("hash", "qr", "unified", "int8")]
    names += [f"train_{k}_full" for k in ("samples_per_s", "peak_rss_mb")]
    return [n for n in names if n in metrics]


def run(ctx: Context) -> dict:
    import torch

    p = ctx.params
    torch.set_num_threads(int(p.get("threads", 1)))
    dim = int(p.get("dim", 16))
    methods = list(p.get("methods", ALL_METHODS))
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}

    b = _block(p, "budget")
    if b.get("enabled", True):
        from .tables_budget import budget_accuracy, criteo_cardinalities

        cards = criteo_cardinalities(b.get("cardinalities", "criteo"), b.get("max_cardinality"))
        m, d = budget_accuracy(b.get("methods", methods), [float(r) for r in b.get("rates", [0.1, 0.01, 0.001])],
                               cards, dim)
        metrics.update(m)
        details["budget"] = d

    lk = _block(p, "lookup")
    if lk.get("enabled", True):
        from .tables_lookup import lookup_speed

        m, d = lookup_speed(lk.get("methods", methods), lk, dim)
        metrics.update(m)
        details["lookup"] = d

    tr = _block(p, "training")
    if tr.get("enabled", True):
        from .tables_train import training_speed

        m, d = training_speed(tr.get("methods", methods), tr, dim)
        metrics.update(m)
        details["training"] = d

    q = dict(p.get("quality") or {})
    rates = [float(r) for r in q.get("rates", [0.1, 0.01, 0.001])]
    if q.get("enabled", True):
        from .tables_quality import quality

        try:
            m, d = quality(ctx)
        except BenchmarkSkipped as e:
            log.warning("quality part skipped: %s", e)
            m, d = {}, {"skipped": str(e)}
        metrics.update(m)
        details["quality"] = d
        if m and p.get("plot"):
            details["quality"]["plot"] = plot_quality(d, plot_path(p["plot"]))

    return {"metrics": metrics, "headline": headline_metrics(metrics, rates), "details": details}


def plot_quality(details: Mapping[str, Any], path: Path) -> str | None:
    """Test AUC against table bytes (log scale), one line per method over its budgets, the
    uncompressed table as a dashed line: points up and to the left are better."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    full = details["full"]
    ax.axhline(full["test_auc"], color="black", ls="--", lw=1, label=f"uncompressed ({full['memory_bytes'] / 1e3:.0f} kB)")
    markers = "osD^v<>phX*P"
    for i, (name, row) in enumerate(sorted(details["table"].items())):
        pts = sorted((c["memory_bytes"], c["test_auc"], c.get("test_auc_std", 0.0)) for c in row.values()
                     if c.get("status") == "ok" and math.isfinite(c["test_auc"]))
        if not pts:
            continue
        x, y, s = zip(*pts)
        ax.errorbar(x, y, yerr=s, marker=markers[i % len(markers)], ms=5, lw=1.5 if name in ("unified", "hash",
                    "hash_eq") else 1, capsize=2, label=name)
    for name, cell in sorted((details.get("at_floor") or {}).items()):
        ax.scatter([cell["memory_bytes"]], [cell["test_auc"]], marker="x", s=40, label=f"{name} (own ratio)")
    ax.set_xscale("log")
    ax.set_xlabel("table memory (bytes, log scale)")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{details.get('data', '')} / {details.get('model', '')}: AUC against table memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    return save_figure(fig, path, dpi=120)
