"""Benchmark specs: one YAML file per benchmark, naming the data set, the pipeline, its
parameters and the checks (expected value and tolerance, or a bound) on the numbers it produces.

The same spec drives ``embedx bench run`` and the regression checks, in the manner of
Pyserini's reproduction matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class SpecError(ValueError):
    """A benchmark spec file is malformed."""


@dataclass(frozen=True)
class Check:
    """One expectation on a result number: ``expected`` +- ``tolerance``, or ``min``/``max`` bounds,
    or ``equals`` for exact values (counts, booleans)."""

    metric: str
    expected: float | None = None
    tolerance: float | None = None
    min: float | None = None
    max: float | None = None
    equals: Any = None
    note: str = ""

    def evaluate(self, value: Any) -> bool:
        if value is None:
            return False
        if self.equals is not None:
            return value == self.equals
        v = float(value)
        if math.isnan(v):
            return False
        if self.expected is not None and abs(v - self.expected) > (self.tolerance or 0.0) + 1e-12:
            return False
        if self.min is not None and v < self.min:
            return False
        if self.max is not None and v > self.max:
            return False
        return True

    def describe(self) -> str:
        if self.equals is not None:
            return f"= {self.equals}"
        parts = []
        if self.expected is not None:
            parts.append(f"{self.expected} ± {self.tolerance or 0}")
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Spec:
    name: str
    pipeline: str
    description: str = ""
    dataset: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    path: Path | None = None


_CHECK_KEYS = {"metric", "expected", "tolerance", "min", "max", "equals", "note"}


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a mapping")
    for key in ("name", "pipeline"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SpecError(f"{path}: missing required string field {key!r}")
    if raw["name"] != path.stem:
        raise SpecError(f"{path}: name {raw['name']!r} must equal the file name {path.stem!r}")
    checks = []
    for i, c in enumerate(raw.get("checks") or []):
        if not isinstance(c, dict) or "metric" not in c:
            raise SpecError(f"{path}: checks[{i}] must be a mapping with a 'metric'")
        unknown = set(c) - _CHECK_KEYS
        if unknown:
            raise SpecError(f"{path}: checks[{i}] has unknown keys {sorted(unknown)}")
        if not ({"expected", "min", "max", "equals"} & set(c)):
            raise SpecError(f"{path}: checks[{i}] ({c['metric']}) needs expected, min, max or equals")
        checks.append(Check(**c))
    for key in ("dataset", "params"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise SpecError(f"{path}: {key} must be a mapping")
    return Spec(name=raw["name"], pipeline=raw["pipeline"], description=raw.get("description", ""),
                dataset=raw.get("dataset") or {}, params=raw.get("params") or {},
                checks=tuple(checks), path=path)


def find_specs(specs_dir: str | Path) -> dict[str, Path]:
    """Spec name -> file, for every ``*.yaml`` in the folder."""
    return {p.stem: p for p in sorted(Path(specs_dir).glob("*.yaml"))}
