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
from .spec import Spec

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


def run_spec(spec: Spec, *, data_root: Path, results_dir: Path | None, work_dir: Path,
             overrides: dict[str, Any] | None = None) -> dict:
    """Run one spec and return its result record; written to ``results_dir/<name>.json`` if given."""
    params = {**spec.params, **(overrides or {})}
    pipeline = resolve_pipeline(spec.pipeline)
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(spec=spec, data_root=data_root, work_dir=work_dir, params=params)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    out = pipeline(ctx)
    elapsed = time.perf_counter() - t0
    metrics = out.get("metrics", {})
    checks = evaluate_checks(spec.checks, metrics, out.get("not_run", {}))
    record = {
        "spec": spec.name,
        "description": spec.description,
        "pipeline": spec.pipeline,
        "dataset": spec.dataset,
        "params": params,
        "metrics": metrics,
        "headline": out.get("headline", [c.metric for c in spec.checks]),
        "details": out.get("details", {}),
        "checks": checks,
        "passed": all(c["passed"] is not False for c in checks),
        "not_run": sorted(c["metric"] for c in checks if c["passed"] is None),
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 2),
        "machine": machine_info(),
        "versions": package_versions(),
        "commit": git_commit(),
    }
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(results_dir / f"{spec.name}.json", json.dumps(record, indent=2, default=_jsonable) + "\n")
    return record


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
