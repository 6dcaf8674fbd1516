"""Render committed benchmark results as a markdown table and splice it into the README
between ``<!-- bench:start -->`` and ``<!-- bench:end -->``."""

from __future__ import annotations

import json
from pathlib import Path

from indexing.fsutil import atomic_write_text

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def load_results(results_dir: Path) -> list[dict]:
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: invalid JSON: {e}") from None
    return out


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        a = abs(v)
        if v == 0 or 0.001 <= a < 1:
            return f"{v:.4g}"
        if 1 <= a < 100:
            return f"{v:.3f}".rstrip("0").rstrip(".")
        if 100 <= a < 1e7:
            return f"{v:,.1f}".rstrip("0").rstrip(".")
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "—" if v is None else str(v)


def _run(r: dict) -> str:
    return f"{r.get('date', '?')}, {r.get('duration_s', '?')} s, commit `{(r.get('commit') or '?')[:12]}`"


def provenance(r: dict) -> str:
    """Which run measured what: a merged result (``bench run --merge``) names each earlier run
    and the parts (detail blocks) still taken from it."""
    text = f"Run {_run(r)}."
    src = r.get("merged_from")
    taken = list(src.get("details", [])) if src else []   # parts the record takes from ``src``'s record
    while src:
        earlier = src.get("merged_from")
        older = set(earlier.get("details", [])) if earlier else set()
        own = [d for d in taken if d not in older]          # measured by ``src`` itself
        if own:
            text += f" Kept from the run of {_run(src)}: {', '.join(own)}."
        taken = [d for d in taken if d in older]
        src = earlier
    return text


def render_table(results: list[dict]) -> str:
    lines = ["| Benchmark | Metric | Value | Target | Status |", "|---|---|---|---|---|"]
    for r in results:
        checks = {c["metric"]: c for c in r.get("checks", [])}
        for metric in r.get("headline", []):
            c = checks.get(metric)
            value = r.get("metrics", {}).get(metric)
            target = c["target"] if c else ""
            status = ({True: "pass", False: "**FAIL**", None: "not run"}[c["passed"]]) if c else ""
            lines.append(f"| `{r['spec']}` | {metric} | {_fmt(value)} | {target} | {status} |")
    machines = {(r.get("machine", {}).get("cpu"), r.get("machine", {}).get("cpu_count")) for r in results}
    foot = [f"- `{r['spec']}`: {r.get('description', '').strip()} {provenance(r)}" for r in results]
    mach = "; ".join(f"{cpu or '?'} ({n} cores)" for cpu, n in sorted(machines, key=str))
    return "\n".join(lines + ["", f"Measured on: {mach}.", ""] + foot)


def update_readme(readme: Path, results_dir: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{readme}: no '{START}' ... '{END}' block to fill")
    table = render_table(load_results(results_dir))
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(readme, f"{head}{START}\n{table}\n{END}{tail}")
    return table
