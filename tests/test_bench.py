"""Benchmark specs, runner and README report."""

import json

import pytest

from embedx.bench import runner
from embedx.bench.report import END, START, render_table, update_readme
from embedx.bench.spec import Check, SpecError, find_specs, load_spec


def write_spec(tmp_path, name="toy", body=None):
    body = body or (
        "name: {name}\npipeline: toy\ndescription: a toy\n"
        "params: {{value: 0.5}}\n"
        "checks:\n  - {{metric: score, expected: 0.5, tolerance: 0.01}}\n  - {{metric: speed, min: 2}}\n")
    p = tmp_path / f"{name}.yaml"
    p.write_text(body.replace("{{", "{").replace("}}", "}").replace("{name}", name))
    return p


def test_check_semantics():
    assert Check("m", expected=0.679, tolerance=0.002).evaluate(0.6805)
    assert not Check("m", expected=0.679, tolerance=0.002).evaluate(0.6815)
    assert Check("m", min=1.0).evaluate(1.0) and not Check("m", min=1.0).evaluate(0.99)
    assert Check("m", max=1.05).evaluate(1.04) and not Check("m", max=1.05).evaluate(1.06)
    assert Check("m", equals=True).evaluate(True) and not Check("m", equals=True).evaluate(False)
    assert not Check("m", min=0).evaluate(None)
    assert not Check("m", min=0).evaluate(float("nan"))


def test_load_spec_and_errors(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert spec.name == "toy" and spec.params == {"value": 0.5} and len(spec.checks) == 2
    with pytest.raises(SpecError, match="file name"):
        load_spec(write_spec(tmp_path, "other", "name: nope\npipeline: toy\n"))
    with pytest.raises(SpecError, match="pipeline"):
        load_spec(write_spec(tmp_path, "nopipe", "name: nopipe\n"))
    with pytest.raises(SpecError, match="unknown keys"):
        load_spec(write_spec(tmp_path, "badcheck", "name: badcheck\npipeline: t\nchecks:\n  - {metric: x, min: 1, maxx: 2}\n"))
    with pytest.raises(SpecError, match="needs expected"):
        load_spec(write_spec(tmp_path, "nobound", "name: nobound\npipeline: t\nchecks:\n  - {metric: x}\n"))
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(write_spec(tmp_path, "broken", "name: [\n"))


def test_project_specs_are_valid():
    from embedx.paths import benchmarks_dir
    specs = find_specs(benchmarks_dir() / "specs")
    assert {"scifact-bm25", "sparse-parity", "index-speed"} <= set(specs)
    for path in specs.values():
        spec = load_spec(path)
        runner.resolve_pipeline(spec.pipeline)  # every named pipeline exists and imports


def test_run_spec_writes_result_and_checks(tmp_path, monkeypatch):
    import sys
    import types
    mod = types.ModuleType("toy_pipeline")
    mod.run = lambda ctx: {"metrics": {"score": ctx.params["value"], "speed": 1.5}}
    monkeypatch.setitem(sys.modules, "toy_pipeline", mod)
    monkeypatch.setitem(runner.PIPELINES, "toy", "toy_pipeline:run")
    spec = load_spec(write_spec(tmp_path))
    rec = runner.run_spec(spec, data_root=tmp_path, results_dir=tmp_path / "results", work_dir=tmp_path / "w")
    saved = json.loads((tmp_path / "results" / "toy.json").read_text())
    assert saved["metrics"] == {"score": 0.5, "speed": 1.5}
    assert [c["passed"] for c in saved["checks"]] == [True, False] and saved["passed"] is False
    assert {"machine", "versions", "date", "commit"} <= set(saved) and rec["spec"] == "toy"
    rec = runner.run_spec(spec, data_root=tmp_path, results_dir=None, work_dir=tmp_path / "w",
                          overrides={"value": 0.9})
    assert rec["checks"][0]["passed"] is False


def test_dotted_overrides_reach_into_blocks():
    params = {"lookup": {"rounds": 7, "batch": 4096}, "threads": 1}
    out = runner.override_params(params, {"lookup.rounds": 3, "budget.enabled": False, "threads": 2})
    assert out == {"lookup": {"rounds": 3, "batch": 4096}, "budget": {"enabled": False}, "threads": 2}
    assert params["lookup"]["rounds"] == 7  # the spec's own params are not touched
    with pytest.raises(SpecError, match="threads is not a block"):
        runner.override_params(params, {"threads.x": 1})


def test_merge_keeps_the_parts_a_run_switched_off(tmp_path, monkeypatch):
    """A run of one part merged into the saved result: its numbers replace the saved ones, the
    rest are kept and traced to the run they came from; checks are judged on the merged set."""
    import sys
    import types

    def run(ctx):
        metrics, details = {}, {}
        for part in ("a", "b"):
            if ctx.params[part]["enabled"]:
                metrics[f"{part}_score"] = ctx.params[part]["value"]
                details[part] = {"value": ctx.params[part]["value"]}
        return {"metrics": metrics, "details": details, "headline": sorted(metrics)}

    mod = types.ModuleType("parts_pipeline")
    mod.run = run
    monkeypatch.setitem(sys.modules, "parts_pipeline", mod)
    monkeypatch.setitem(runner.PIPELINES, "parts", "parts_pipeline:run")
    spec = load_spec(write_spec(tmp_path, "parts", "name: parts\npipeline: parts\nparams:\n"
                                "  a: {enabled: true, value: 1}\n  b: {enabled: true, value: 0.2}\n"
                                "checks:\n  - {metric: a_score, min: 1}\n  - {metric: b_score, min: 0.5}\n"))
    results = tmp_path / "results"
    first = runner.run_spec(spec, data_root=tmp_path, results_dir=results, work_dir=tmp_path / "w")
    assert first["passed"] is False and "merged_from" not in first
    again = runner.run_spec(spec, data_root=tmp_path, results_dir=results, work_dir=tmp_path / "w", merge=True,
                            overrides={"a.enabled": False, "b.value": 0.7})
    saved = json.loads((results / "parts.json").read_text())
    assert saved == json.loads(json.dumps(again))
    assert saved["metrics"] == {"a_score": 1, "b_score": 0.7} and saved["passed"] is True
    assert saved["details"] == {"a": {"value": 1}, "b": {"value": 0.7}}
    assert saved["headline"] == ["a_score", "b_score"]
    src = saved["merged_from"]
    assert src["metrics"] == ["a_score"] and src["details"] == ["a"] and src["date"] == first["date"]
    assert src["params"]["b"]["value"] == 0.2
    # without --merge a partial run replaces the saved result
    alone = runner.run_spec(spec, data_root=tmp_path, results_dir=results, work_dir=tmp_path / "w",
                            overrides={"a.enabled": False})
    assert alone["metrics"] == {"b_score": 0.2} and "merged_from" not in alone


def test_unknown_pipeline():
    with pytest.raises(ValueError, match="unknown pipeline"):
        runner.resolve_pipeline("nope")


def test_missing_dataset_skips(tmp_path):
    spec = load_spec(write_spec(tmp_path, "ds", "name: ds\npipeline: toy\ndataset: {path: absent}\n"))
    ctx = runner.Context(spec=spec, data_root=tmp_path, work_dir=tmp_path)
    with pytest.raises(runner.BenchmarkSkipped):
        ctx.dataset_path()


def test_report_splices_table_into_readme(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "a.json").write_text(json.dumps({
        "spec": "a", "description": "A.", "metrics": {"ndcg@10": 0.6789, "qps": 1234.5}, "headline": ["ndcg@10", "qps"],
        "checks": [{"metric": "ndcg@10", "target": "0.679 ± 0.002", "passed": True}],
        "date": "2026-01-01", "duration_s": 3, "commit": "abc", "machine": {"cpu": "X", "cpu_count": 2}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    update_readme(readme, res)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| `a` | ndcg@10 | 0.6789 | 0.679 ± 0.002 | pass |" in text
    assert "| `a` | qps | 1,234.5 |" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="bench:start"):
        update_readme(readme, res)
    assert "Measured on" in render_table([])


def test_checks_declared_not_run_are_neither_pass_nor_fail():
    from embedx.bench.runner import evaluate_checks
    from embedx.bench.spec import Check

    checks = [Check(metric="a", min=1.0), Check(metric="b", min=1.0), Check(metric="c", min=1.0)]
    out = evaluate_checks(checks, {"a": 2.0}, {"b": "model not trained"})
    assert [c["passed"] for c in out] == [True, None, False]
    assert "not trained" in out[1]["note"]


def test_report_names_the_runs_of_a_merged_result():
    from embedx.bench.report import provenance

    run0 = {"date": "d0", "duration_s": 10, "commit": "c0" * 10, "details": ["a", "b", "c"]}
    run1 = {"date": "d1", "duration_s": 2, "commit": "c1" * 10, "details": ["a", "b", "c"], "merged_from": run0}
    record = {"date": "d2", "duration_s": 3, "commit": "c2" * 10, "details": {"a": 1, "b": 2, "c": 3},
              "merged_from": run1}
    # d2 measured c; d1 measured b (kept then), d0 measured a (kept through d1)
    run1["details"], run0["details"] = ["a", "b"], ["a", "c"]
    assert provenance(record) == ("Run d2, 3 s, commit `c2c2c2c2c2c2`. Kept from the run of d1, 2 s, commit "
                                  "`c1c1c1c1c1c1`: b. Kept from the run of d0, 10 s, commit `c0c0c0c0c0c0`: a.")
    assert provenance({"date": "d", "duration_s": 1, "commit": None}) == "Run d, 1 s, commit `?`."


def test_charts_are_written_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    from embedx.bench.figures import plot_path
    from embedx.bench.pipelines.serve_load import plot_latencies

    out = plot_latencies({"sparse_c1": [0.4, 0.5, 0.7], "sparse_inproc": [0.2, 0.3]}, tmp_path / "charts" / "l.png")
    assert out == str(tmp_path / "charts" / "l.png")
    assert (tmp_path / "charts" / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "charts").iterdir()] == ["l.png"]  # no temporary file left
    assert plot_path(str(tmp_path)) == tmp_path and plot_path("benchmarks/x.png").parts[-2:] == ("benchmarks", "x.png")


def test_machine_identity_names_the_simd_level():
    from embedx.bench.environment import cpu_identity

    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n\n"
            "processor\t: 1\nmodel name\t: other\n")
    assert cpu_identity(text) == {"cpu_family": 26, "cpu_model": 2, "cpu": "AMD EPYC",
                                  "simd": ["avx2", "fma", "avx512f", "avx512_vnni"]}
