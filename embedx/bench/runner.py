"""Run a benchmark spec: call its pipeline, check the numbers, write ``results/<spec>.json``."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from indexing.fsutil import atomic_write_text

from .environment import git_commit, machine_info, package_versions
from .spec import Spec, SpecError

log = logging.getLogger(__name__)

# Pipeline name (as written in specs) -> "module:function". Imported only when run.
PIPELINES: dict[str, str] = {
    "lucene-bm25": "embedx.bench.pipelines.bm25:run",
    "sparse-parity": "embedx.bench.pipelines.sparse_parity:run",
    "index-speed": "embedx.bench.pipelines.index_speed:run",
    "tables-core": "embedx.bench.pipelines.tables_core:run",
    "serve-load": "embedx.bench.pipelines.serve_load:run",
    "sparse-scifact": "embedx.bench.pipelines.sparse_scifact:run",
}


class BenchmarkSkipped(RuntimeError):
    """A pipeline cannot run here (for example its data set is absent)."""


@dataclass
class Context:
    """What a pipeline gets besides its spec."""

    spec: Spec
    data_root: Path
    work_dir: Path
    params: dict = field(default_factory=dict)

    def dataset_path(self) -> Path:
        rel = self.spec.dataset.get("path")
        if not rel:
            raise ValueError(f"spec {self.spec.name} names no dataset path")
        p = Path(rel)
        p = p if p.is_absolute() else self.data_root / p
        if not p.exists():
            raise BenchmarkSkipped(f"data set {p} not found (set EMBEDX_DATA or --data-root)")
        return p


def resolve_pipeline(name: str) -> Callable[[Context], dict]:
    try:
        target = PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; known: {sorted(PIPELINES)}") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def evaluate_checks(spec_checks, metrics: dict, not_run: dict) -> list[dict]:
    """Each spec check against the metrics. A check whose metric the pipeline declares not run
    (with the reason, e.g. a model that was never trained) gets ``passed: None`` and the reason,
    so it is neither a pass nor a failure, and the record's ``not_run`` lists it."""
    checks = []
    for c in spec_checks:
        value = metrics.get(c.metric)
        if value is None and c.metric in not_run:
            checks.append({"metric": c.metric, "value": None, "target": c.describe(), "passed": None,
                           "note": f"not run: {not_run[c.metric]}"})
            continue
        checks.append({"metric": c.metric, "value": value, "target": c.describe(), "passed": c.evaluate(value),
                       "note": c.note})
    return checks


def override_params(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``overrides`` applied (dotted keys reach into blocks), as a copy."""
    from embedx.config import ConfigError, apply_parsed

    try:
        return apply_parsed(params, [(key.split("."), value) for key, value in overrides.items()])
    except ConfigError as e:
        raise SpecError(f"--set: {e}") from None


def run_spec(spec: Spec, *, data_root: Path, results_dir: Path | None, work_dir: Path,
             overrides: dict[str, Any] | None = None, merge: bool = False) -> dict:
    """Run one spec and return its result record; written to ``results_dir/<name>.json`` if given.

    ``overrides`` replace spec parameters; a dotted key (``lookup.rounds``) sets a value inside
    a parameter block and leaves the block's other settings alone. With ``merge``, the saved
    result's metrics and details that this run did not produce (parts switched off) are kept,
    and the record names the run they came from (see :func:`merge_records`).
    """
    params = override_params(spec.params, overrides or {})
    pipeline = resolve_pipeline(spec.pipeline)
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(spec=spec, data_root=data_root, work_dir=work_dir, params=params)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    out = pipeline(ctx)
    elapsed = time.perf_counter() - t0
    metrics = out.get("metrics", {})
    headline = out.get("headline", [c.metric for c in spec.checks])
    details = out.get("details", {})
    merged_from = None
    saved = results_dir / f"{spec.name}.json" if results_dir is not None else None
    if merge and saved is not None and saved.exists():
        metrics, headline, details, merged_from = merge_records(json.loads(saved.read_text()), metrics,
                                                                headline, details)
    checks = evaluate_checks(spec.checks, metrics, out.get("not_run", {}))
    record = {
        "spec": spec.name,
        "description": spec.description,
        "pipeline": spec.pipeline,
        "dataset": spec.dataset,
        "params": params,
        "metrics": metrics,
        "headline": headline,
        "details": details,
        "checks": checks,
        "passed": all(c["passed"] is not False for c in checks),
        "not_run": sorted(c["metric"] for c in checks if c["passed"] is None),
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 2),
        "machine": machine_info(),
        "versions": package_versions(),
        "commit": git_commit(),
    }
    if merged_from is not None:
        record["merged_from"] = merged_from
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(results_dir / f"{spec.name}.json", json.dumps(record, indent=2, default=_jsonable) + "\n")
    return record


def merge_records(previous: dict, metrics: dict, headline: list, details: dict) -> tuple[dict, list, dict, dict]:
    """This run's numbers over a saved result's: what the run did not produce is kept.

    Returns the merged metrics, headline and details, and ``merged_from``: the previous run's
    date, commit, duration, machine and parameters, with the metric and detail names taken from it (a
    chain when that run was itself merged), so every number stays traceable to its run.
    """
    def overlay(old: dict, new: dict) -> dict:  # the saved order, new values in place, new keys last
        return {**{k: new.get(k, v) for k, v in old.items()}, **new}

    old_metrics, old_details = previous.get("metrics", {}), previous.get("details", {})
    kept_metrics = [k for k in old_metrics if k not in metrics]
    kept_details = [k for k in old_details if k not in details]
    merged_metrics, merged_details = overlay(old_metrics, metrics), overlay(old_details, details)
    merged_headline = list(dict.fromkeys([*previous.get("headline", []), *headline]))
    merged_headline = [h for h in merged_headline if h in merged_metrics]
    source = {"date": previous.get("date"), "commit": previous.get("commit"),
              "duration_s": previous.get("duration_s"), "machine": previous.get("machine"),
              "params": previous.get("params"),
              "metrics": kept_metrics, "details": kept_details}
    if previous.get("merged_from"):
        source["merged_from"] = previous["merged_from"]
    return merged_metrics, merged_headline, merged_details, source


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
