"""``tables-core`` part 2: quality of every table method on a CTR data set (MovieLens 1M with
DCN-v2 by default) at several budgets, against the uncompressed table, and the Unified
Embedding bar: UE beats separate per-field hashing at every budget, by the largest margin at
the smallest one (Coleman et al., NeurIPS 2023, Table 1).

Each (variant, budget, seed) is one :func:`embedx.tables.train.train_from_config` run of the
spec's config with command-line style overrides, so the run is exactly what
``embedx train tables --config ... key=value`` would do. A *variant* is a method plus fixed
hyperparameters (``hash_eq`` = per-field hashing with ``size_exponent: 0``), so two baselines
of one method can be reported side by side. Results are cached per run under the work
folder (keyed by the config text, the overrides, the data files' identity and a hash of the
``embedx.tables`` source), so an interrupted benchmark resumes where it stopped while a code
change retrains everything; a cached run says so in its record.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from indexing.fsutil import atomic_write_text

log = logging.getLogger(__name__)

#: trainer overrides every quality run gets unless the spec says otherwise: quiet, no files
BASE_OVERRIDES = ("trainer.progress=false", "trainer.checkpoint=false", "output_dir=null")


def rate_key(rate: float) -> str:
    """The budget's tag in metric names: ``0.001`` -> ``"0.001"``."""
    return f"{float(rate):g}"


def resolve_config(name: str) -> Path:
    """A config path as given, else relative to ``embedx/tables/configs``."""
    p = Path(name)
    if p.is_file():
        return p
    from embedx import tables
    q = Path(tables.__file__).resolve().parent / "configs" / p.name
    if q.is_file():
        return q
    raise FileNotFoundError(f"no tables config {name!r} (looked in . and {q.parent})")


def variant_spec(name: str, variants: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict, dict, list | None]:
    """``(method, table hyperparameters, trainer overrides, seeds or None)`` of a variant name;
    a name that is not in ``variants`` is a plain method with its defaults."""
    v = dict(variants.get(name, {}))
    method = v.pop("method", name)
    trainer = dict(v.pop("trainer", {}) or {})
    params = dict(v.pop("params", {}) or {})
    seeds = v.pop("seeds", None)
    if v:
        raise ValueError(f"variant {name!r} has unknown keys {sorted(v)} (method, params, trainer, seeds)")
    return method, params, trainer, None if seeds is None else [int(s) for s in seeds]


def floor_bytes(method: str, cardinalities: Sequence[int], dim: int, params: Mapping[str, Any]) -> int:
    """The method's documented minimum budget for these fields (its ``min_bytes``)."""
    from embedx.tables.registry import get_method

    fn = get_method(method).min_bytes
    sig = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        params = {k: v for k, v in params.items() if k in sig}
    return int(fn(list(cardinalities), dim, **params))


def _yaml_value(v: Any) -> str:
    return json.dumps(v)  # JSON is YAML: lists, numbers, null, strings all parse back


def run_overrides(method: str, rate: float | None, seed: int, params: Mapping[str, Any], trainer: Mapping[str, Any],
                  common: Sequence[str], budget_bytes: int | None = None) -> list[str]:
    """The ``key=value`` overrides of one run: a budget as a ``rate``, or as ``budget_bytes``."""
    out = list(BASE_OVERRIDES) + list(common)
    if budget_bytes is None:
        budget = [f"table.rate={_yaml_value(float(rate))}", "table.bytes=null"]
    else:
        budget = ["table.rate=null", f"table.bytes={int(budget_bytes)}"]
    out += [f"table.method={method}", *budget, f"seed={seed}"]
    out += [f"table.{k}={_yaml_value(v)}" for k, v in params.items()]
    out += [f"trainer.{k}={_yaml_value(v)}" for k, v in trainer.items()]
    return out


def code_stamp() -> str:
    """A hash of the training code (every ``.py`` file of :mod:`embedx.tables`): a cached run
    is reused only while the code that produced it is unchanged."""
    from embedx import tables

    root = Path(tables.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _cache_key(config_text: str, overrides: Sequence[str], data_stamp: Any) -> str:
    blob = json.dumps({"config": config_text, "overrides": list(overrides), "data": data_stamp,
                       "code": code_stamp()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _data_stamp(folder: Path) -> list:
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in folder.iterdir() if p.is_file())


_KEEP = ("test_auc", "test_logloss", "val_auc", "val_logloss", "memory_bytes", "budget_bytes", "full_table_bytes",
         "training_memory_bytes", "table_params", "head_params", "throughput", "train_seconds", "train_samples",
         "epochs", "best_epoch", "stopped_early", "wall_seconds")


def train_one(config: Path, overrides: list[str], cache_dir: Path | None, data_stamp: Any) -> dict:
    """One training run (or its cached record)."""
    from embedx.tables.train import train_from_config

    key = _cache_key(config.read_text(encoding="utf-8"), overrides, data_stamp)
    cached = cache_dir / f"{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        rec = json.loads(cached.read_text(encoding="utf-8"))
        rec["cached"] = True
        return rec
    t0 = time.perf_counter()
    result = train_from_config(config, overrides)
    rec = {k: result[k] for k in _KEEP}
    rec["history"] = [{k: h[k] for k in ("epoch", "train_loss", "val_auc", "samples_per_s")} for h in result["history"]]
    rec["overrides"] = overrides
    rec["run_seconds"] = time.perf_counter() - t0
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cached, json.dumps(rec, indent=1, default=float))
    rec["cached"] = False
    return rec


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def _std(xs: Sequence[float]) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def ue_vs_hash(auc: Mapping[str, Mapping[float, float]], ue: str, baselines: Sequence[str],
               rates: Sequence[float]) -> dict[str, Any]:
    """The Unified Embedding bar from mean test AUCs ``auc[variant][rate]``.

    Per budget: UE minus each hash baseline (``ue_minus_baseline_<name>_auc@<rate>``) and minus
    the strongest one there (``ue_minus_hash_auc@<rate>``, the honest comparison);
    ``ue_beats_hash_all_budgets``: the margin over the strongest is > 0 at every budget where
    UE and at least one baseline were built; ``ue_margin_largest_at_smallest_budget``:
    that margin at the smallest such budget is >= the margin at every other one.
    Budgets where UE or every baseline is missing are left out (and listed).
    """
    out: dict[str, Any] = {}
    margins: dict[float, float] = {}
    missing = []
    for r in sorted(rates):
        u = auc.get(ue, {}).get(r)
        hs = {b: auc.get(b, {}).get(r) for b in baselines}
        hs = {b: v for b, v in hs.items() if v is not None and math.isfinite(v)}
        for b, v in hs.items():
            if u is not None:
                out[f"ue_minus_baseline_{b}_auc@{rate_key(r)}"] = u - v
        if u is None or not math.isfinite(u) or not hs:
            missing.append(r)
            continue
        best = max(hs, key=hs.get)
        margins[r] = u - hs[best]
        out[f"ue_minus_hash_auc@{rate_key(r)}"] = margins[r]
        out[f"best_hash_baseline@{rate_key(r)}"] = best
    if margins:
        smallest = min(margins)
        out["ue_beats_hash_all_budgets"] = bool(all(m > 0 for m in margins.values()))
        out["ue_margin_largest_at_smallest_budget"] = bool(
            all(margins[smallest] >= m for m in margins.values()))
        out["ue_min_margin_auc"] = float(min(margins.values()))
        out["ue_budgets_compared"] = len(margins)
    if missing:
        out["ue_budgets_missing"] = [rate_key(r) for r in missing]
    return out


def quality(ctx) -> tuple[dict, dict]:
    """Run the quality grid; returns (flat metrics, details)."""
    from embedx.tables.config import load_config
    from embedx.tables.data import load_dataset

    p = dict(ctx.params.get("quality") or {})
    if not p.get("enabled", True):
        return {}, {"skipped": "disabled"}
    root = ctx.dataset_path()  # BenchmarkSkipped when the data set is absent
    config = resolve_config(p.get("config", "ml1m-dcnv2.yaml"))
    common = list(p.get("overrides", [])) + [f"data.root={_yaml_value(str(root))}"]
    rates = [float(r) for r in p.get("rates", [0.1, 0.01, 0.001])]
    seeds = [int(s) for s in p.get("seeds", [0])]
    variants = p.get("variants", {}) or {}
    names = list(p.get("methods", ["unified", "hash"]))
    trainer = dict(p.get("trainer", {}) or {})
    cache_dir = ctx.work_dir / "tables-quality" if p.get("cache", True) else None
    stamp = _data_stamp(root)

    cfg = load_config(config, [o for o in list(BASE_OVERRIDES) + common])
    splits = load_dataset(cfg.data.name, fields=cfg.data.fields, **cfg.data.options)
    cards, dim = splits.cardinalities, cfg.table.dim
    details: dict[str, Any] = {"config": str(config), "data": cfg.data.name, "model": cfg.model.name,
                               "fields": dict(zip(splits.field_names, cards)), "dim": dim,
                               "full_table_bytes": sum(cards) * dim * 4, "rates": rates, "seeds": seeds,
                               "trainer": trainer, "variants": {}, "runs": []}
    metrics: dict[str, Any] = {}
    prefix = cfg.data.name

    def run_all(name: str, method: str, params: dict, rate: float | None, extra: dict,
                run_seeds: list | None = None, budget_bytes: int | None = None) -> list[dict]:
        recs = []
        for seed in run_seeds or seeds:
            ov = run_overrides(method, rate, seed, params, {**trainer, **extra}, common, budget_bytes)
            log.info("quality: %s at %s, seed %d", name,
                     f"rate {rate_key(rate)}" if budget_bytes is None else f"{budget_bytes:,} B", seed)
            rec = train_one(config, ov, cache_dir, stamp)
            rec.update(variant=name, method=method, rate=rate, seed=seed)
            details["runs"].append(rec)
            recs.append(rec)
        return recs

    full = run_all("full", "full", {}, 1.0, dict(p.get("full_trainer", {}) or {}))
    full_auc = _mean([r["test_auc"] for r in full])
    metrics[f"{prefix}_full_auc"] = full_auc
    metrics[f"{prefix}_full_logloss"] = _mean([r["test_logloss"] for r in full])
    metrics[f"{prefix}_full_bytes"] = full[0]["memory_bytes"]

    auc: dict[str, dict[float, float]] = {}
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        method, params, extra, vseeds = variant_spec(name, variants)
        details["variants"][name] = {"method": method, "params": params, "trainer": {**trainer, **extra},
                                     "seeds": vseeds or seeds}
        row: dict[str, Any] = {}
        for rate in rates:
            budget = math.floor(rate * sum(cards) * dim * 4)
            floor = floor_bytes(method, cards, dim, params)
            tag = rate_key(rate)
            if budget < floor:
                row[tag] = {"status": "below_floor", "budget_bytes": budget, "min_bytes": floor}
                continue
            recs = run_all(name, method, params, rate, extra, vseeds)
            aucs = [r["test_auc"] for r in recs]
            cell = {"status": "ok", "test_auc": _mean(aucs), "test_auc_std": _std(aucs),
                    "test_logloss": _mean([r["test_logloss"] for r in recs]),
                    "auc_loss": full_auc - _mean(aucs), "memory_bytes": recs[0]["memory_bytes"],
                    "budget_bytes": recs[0]["budget_bytes"], "epochs": [r["epochs"] for r in recs],
                    "train_samples": [r["train_samples"] for r in recs], "seeds": len(recs)}
            row[tag] = cell
            auc.setdefault(name, {})[rate] = cell["test_auc"]
            metrics[f"{prefix}_{name}_auc@{tag}"] = cell["test_auc"]
            metrics[f"{prefix}_{name}_logloss@{tag}"] = cell["test_logloss"]
            metrics[f"{prefix}_{name}_auc_loss@{tag}"] = cell["auc_loss"]
        table[name] = row
    details["table"] = table
    # methods with a fixed ratio (INT8, INT16, ALPT) cannot meet these budgets: each is also
    # trained once at its own floor, so its AUC loss against uncompressed is on record too
    at_floor: dict[str, Any] = {}
    for name in p.get("floor_runs", []) or []:
        method, params, extra, vseeds = variant_spec(name, variants)
        floor = floor_bytes(method, cards, dim, params)
        recs = run_all(name, method, params, None, extra, vseeds, budget_bytes=floor)
        aucs = [r["test_auc"] for r in recs]
        at_floor[name] = {"status": "ok", "budget_bytes": floor, "rate": floor / (sum(cards) * dim * 4),
                          "test_auc": _mean(aucs), "test_auc_std": _std(aucs),
                          "test_logloss": _mean([r["test_logloss"] for r in recs]), "auc_loss": full_auc - _mean(aucs),
                          "memory_bytes": recs[0]["memory_bytes"], "seeds": len(recs)}
        metrics[f"{prefix}_{name}_auc@floor"] = at_floor[name]["test_auc"]
        metrics[f"{prefix}_{name}_auc_loss@floor"] = at_floor[name]["auc_loss"]
    details["at_floor"] = at_floor
    details["full"] = {"test_auc": full_auc, "test_logloss": metrics[f"{prefix}_full_logloss"],
                       "memory_bytes": metrics[f"{prefix}_full_bytes"]}
    ue = p.get("ue", "unified")
    baselines = list(p.get("hash_baselines", ["hash"]))
    bar = ue_vs_hash(auc, ue, baselines, rates)
    details["ue_vs_hash"] = {"ue": ue, "baselines": baselines, **bar}
    metrics.update({k: v for k, v in bar.items() if isinstance(v, (bool, int, float))})
    return metrics, details
