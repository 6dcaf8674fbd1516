"""The ``tables-core`` benchmark pipeline: helper arithmetic, and the whole pipeline on tiny
settings (synthetic Criteo-shaped ids; MovieLens 100K for the quality part, skipped when the
data is absent), through the real runner and the real spec's checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from embedx.bench import runner
from embedx.bench.pipelines import tables_core
from embedx.bench.pipelines.tables_budget import budget_accuracy, criteo_cardinalities, relative_error
from embedx.bench.pipelines.tables_quality import (floor_bytes, rate_key, run_overrides, ue_vs_hash,
                                                   variant_spec)
from embedx.bench.spec import load_spec

DATA = Path(os.environ.get("EMBEDX_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SPEC = Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "tables-core.yaml"
CARDS = [50, 7, 400, 3, 120]


# ----------------------------------------------------------------------------- helpers
def test_ue_vs_hash_margins_against_the_stronger_baseline():
    auc = {"unified": {0.1: 0.80, 0.01: 0.78, 0.001: 0.75},
           "hash": {0.1: 0.79, 0.01: 0.70, 0.001: 0.60},
           "hash_eq": {0.1: 0.795, 0.01: 0.76, 0.001: 0.70}}
    out = ue_vs_hash(auc, "unified", ["hash", "hash_eq"], [0.1, 0.01, 0.001])
    assert out["ue_minus_hash_auc@0.1"] == pytest.approx(0.005)       # hash_eq is stronger at 0.1
    assert out["ue_minus_hash_auc@0.01"] == pytest.approx(0.02)
    assert out["ue_minus_hash_auc@0.001"] == pytest.approx(0.05)
    assert out["ue_minus_baseline_hash_eq_auc@0.01"] == pytest.approx(0.02)
    assert out["ue_minus_baseline_hash_auc@0.01"] == pytest.approx(0.08)
    assert out["ue_minus_baseline_hash_auc@0.1"] == pytest.approx(0.01)
    assert out["ue_minus_hash_auc@0.01"] != pytest.approx(auc["unified"][0.01] - auc["hash"][0.01])
    assert out["best_hash_baseline@0.1"] == "hash_eq"
    assert out["ue_beats_hash_all_budgets"] is True
    assert out["ue_margin_largest_at_smallest_budget"] is True
    assert out["ue_min_margin_auc"] == pytest.approx(0.005)


def test_ue_vs_hash_detects_a_loss_and_a_margin_not_largest_at_the_smallest_budget():
    auc = {"unified": {0.1: 0.80, 0.01: 0.78, 0.001: 0.70},
           "hash": {0.1: 0.81, 0.01: 0.70, 0.001: 0.69}}
    out = ue_vs_hash(auc, "unified", ["hash"], [0.001, 0.1, 0.01])
    assert out["ue_minus_hash_auc@0.1"] == pytest.approx(-0.01)
    assert out["ue_beats_hash_all_budgets"] is False
    assert out["ue_margin_largest_at_smallest_budget"] is False  # 0.01 at 0.001 < 0.08 at 0.01
    assert out["ue_budgets_compared"] == 3


def test_ue_vs_hash_leaves_out_budgets_without_both_sides():
    auc = {"unified": {0.1: 0.8, 0.01: 0.7}, "hash": {0.1: 0.75}}
    out = ue_vs_hash(auc, "unified", ["hash", "hash_eq"], [0.1, 0.01])
    assert out["ue_budgets_missing"] == ["0.01"] and out["ue_budgets_compared"] == 1
    assert out["ue_beats_hash_all_budgets"] is True
    assert "ue_beats_hash_all_budgets" not in ue_vs_hash({}, "unified", ["hash"], [0.1])


def test_small_helpers():
    assert rate_key(0.001) == "0.001" and rate_key(0.1) == "0.1" and rate_key(1) == "1"
    assert relative_error(98, 100) == pytest.approx(0.02) and relative_error(100, 100) == 0
    assert variant_spec("hash_eq", {"hash_eq": {"method": "hash", "params": {"size_exponent": 0}}}) == \
        ("hash", {"size_exponent": 0}, {}, None)
    assert variant_spec("qr", {}) == ("qr", {}, {}, None)
    assert variant_spec("dhe", {"dhe": {"seeds": [0], "trainer": {"epochs": 1}}}) == ("dhe", {}, {"epochs": 1}, [0])
    with pytest.raises(ValueError, match="unknown keys"):
        variant_spec("x", {"x": {"hparams": {}}})
    ov = run_overrides("hash", 0.01, 2, {"size_exponent": 0}, {"epochs": 1}, ["trainer.threads=1"])
    assert {"table.method=hash", "table.rate=0.01", "seed=2", "table.size_exponent=0", "trainer.epochs=1",
            "trainer.threads=1", "output_dir=null"} <= set(ov)
    assert len(criteo_cardinalities()) == 26 and max(criteo_cardinalities()) == 10131227
    assert max(criteo_cardinalities("criteo", 1000)) == 1000 and criteo_cardinalities([5, 6]) == [5, 6]


def test_cached_quality_runs_are_keyed_on_the_training_code(monkeypatch):
    from embedx.bench.pipelines import tables_quality as tq
    stamp = tq.code_stamp()
    assert stamp == tq.code_stamp() and len(stamp) == 16
    key = tq._cache_key("cfg", ["a=1"], [])
    monkeypatch.setattr(tq, "code_stamp", lambda: "changed")
    assert tq._cache_key("cfg", ["a=1"], []) != key  # a code change retrains instead of reusing


def test_floor_bytes_matches_the_methods_own_floor():
    from embedx.tables.registry import get_method
    assert floor_bytes("hash", CARDS, 16, {"size_exponent": 0}) == get_method("hash").min_bytes(CARDS, 16)
    assert floor_bytes("int8", CARDS, 16, {}) == sum(CARDS) * 16
    assert floor_bytes("unified", CARDS, 16, {"chunks": 2}) > floor_bytes("unified", CARDS, 16, {})


def test_budget_accuracy_on_a_small_table():
    m, d = budget_accuracy(["hash", "unified", "int8", "full"], [0.5, 0.1], CARDS, 16)
    pairs = d["pairs"]
    assert pairs["int8@0.1"]["status"] == "below_floor" and pairs["int8@0.1"]["min_bytes"] == sum(CARDS) * 16
    assert pairs["full@0.5"]["status"] == "below_floor"
    assert pairs["hash@0.1"]["status"] == "ok"
    assert m["budget_pairs_built"] + m["budget_pairs_below_floor"] == 8
    assert m["budget_unexplained_failures"] == 0
    errs = [r["rel_error"] for r in pairs.values() if r["status"] == "ok"]
    assert m["budget_max_rel_error"] == max(errs)
    for r in pairs.values():
        if r["status"] == "ok":
            assert r["memory_bytes"] <= r["budget_bytes"]
            assert r["ratio"] == pytest.approx(r["memory_bytes"] / r["budget_bytes"])


def test_headline_lists_only_existing_bar_metrics():
    h = tables_core.headline_metrics({"budget_max_rel_error": 0.0, "ue_minus_hash_auc@0.1": 0.01,
                                      "ml1m_full_auc": 0.88, "lookup_speedup_hash": 2.0}, [0.1, 0.01])
    assert h == ["budget_max_rel_error", "ue_minus_hash_auc@0.1", "ml1m_full_auc", "lookup_speedup_hash"]


# ----------------------------------------------------------------------------- pipeline
def tiny_params(tmp_path: Path, quality: bool) -> dict:
    return {
        "threads": 1, "dim": 8, "methods": ["full", "hash", "qr", "int8", "unified"],
        "budget": {"rates": [0.1, 0.01], "cardinalities": "criteo"},
        "lookup": {"cardinalities": CARDS, "batch": 64, "batches": 2, "calls": 2, "rounds": 2, "rate": 0.1},
        "training": {"methods": ["hash", "full"], "cardinalities": CARDS, "rows": 1000, "batch_size": 128,
                     "warmup_batches": 1, "num_dense": 2, "rate": 0.1,
                     "per_method": {"hash": {"rows": 320, "note": "a smaller stream"},
                                    "full": {"rows": 256, "table_optimizer": "rowwise_adagrad"}},
                     "model_params": {"bottom": [8], "top": [8]}, "timeout_s": 120},
        "quality": {"enabled": quality, "config": "ml100k-dcnv2.yaml", "rates": [0.1, 0.01], "seeds": [0],
                    "overrides": ["trainer.threads=1", "model.deep=[16]", "table.dim=8"],
                    "trainer": {"epochs": 1, "max_train_batches": 3, "batch_size": 256},
                    "methods": ["unified", "hash", "hash_eq"], "hash_baselines": ["hash", "hash_eq"],
                    "floor_runs": ["int8"],
                    "variants": {"hash_eq": {"method": "hash", "params": {"size_exponent": 0}}}},
        "plot": str(tmp_path / "out" / "tables-core.png"),
    }


def run_tiny(tmp_path, monkeypatch, quality: bool) -> dict:
    monkeypatch.setitem(runner.PIPELINES, "tables-core", "embedx.bench.pipelines.tables_core:run")
    spec = load_spec(SPEC)
    rec = runner.run_spec(spec, data_root=DATA, results_dir=tmp_path / "results", work_dir=tmp_path / "work",
                          overrides=tiny_params(tmp_path, quality))
    assert json.loads((tmp_path / "results" / "tables-core.json").read_text())["spec"] == "tables-core"
    return rec


@pytest.mark.slow
def test_pipeline_tiny_without_quality(tmp_path, monkeypatch):
    rec = run_tiny(tmp_path, monkeypatch, quality=False)
    m, d = rec["metrics"], rec["details"]
    # budget part: the real 26 Criteo fields on the meta device
    assert m["budget_max_rel_error"] <= 0.02 and m["budget_unexplained_failures"] == 0
    assert d["budget"]["pairs"]["int8@0.1"]["status"] == "below_floor"
    # lookup part: every method served bit-for-bit like its torch module, timed against EmbeddingBag
    for method in ("full", "hash", "qr", "int8", "unified"):
        assert m[f"lookup_speedup_{method}"] > 0 and m[f"lookup_speedup_hugepages_{method}"] > 0
        assert m[f"lookup_parity_{method}"] <= 1e-6
    assert d["lookup"]["clock"] == "thread" and d["lookup"]["transparent_hugepages"]
    assert d["lookup"]["methods"]["int8"]["memory_bytes"] == sum(CARDS) * 8  # built at its own floor
    # training part: a separate process reports throughput and its own peak RSS
    t = d["training"]["methods"]["hash"]
    assert t["status"] == "ok", t
    # every row of the stream is trained on (3 batches, the last one partial); the first is warm-up
    assert t["rows_trained"] == m["train_rows_hash"] == 320 and t["note"] == "a smaller stream"
    assert t["steps_timed"] == 2 and t["rows_timed"] == 192 and m["train_samples_per_s_hash"] > 0
    assert m["train_cpu_samples_per_s_hash"] > 0
    assert t["peak_rss_bytes"] >= t["rss_after_model"] >= t["rss_after_imports"] > 0
    assert t["optimizer"] == "Adam" and not t["sparse_gradients"]
    f = d["training"]["methods"]["full"]
    assert f["status"] == "ok" and f["optimizer"] == "Adam+RowWiseAdagrad" and f["sparse_gradients"], f
    assert f["rows_trained"] == 256 and f["steps_timed"] == 1
    # the spec's checks were evaluated on these numbers
    checks = {c["metric"]: c for c in rec["checks"]}
    assert checks["budget_max_rel_error"]["passed"] is True
    assert checks["ue_beats_hash_all_budgets"]["value"] is None and checks["ue_beats_hash_all_budgets"]["passed"] is False
    assert set(rec["headline"]) <= set(m)


@pytest.mark.skipif(not (DATA / "movielens" / "ml-100k").is_dir(), reason="MovieLens 100K not available")
def test_pipeline_tiny_quality_on_ml100k(tmp_path, monkeypatch):
    params = tiny_params(tmp_path, True)
    for part in ("budget", "lookup", "training"):
        params[part] = {"enabled": False}
    monkeypatch.setitem(runner.PIPELINES, "tables-core", "embedx.bench.pipelines.tables_core:run")
    spec = load_spec(SPEC)
    spec = type(spec)(**{**spec.__dict__, "dataset": {"name": "movielens-100k", "path": "movielens/ml-100k"}})
    rec = runner.run_spec(spec, data_root=DATA, results_dir=None, work_dir=tmp_path / "work", overrides=params)
    m, q = rec["metrics"], rec["details"]["quality"]
    assert 0.5 < m["ml100k_full_auc"] < 1
    for name in ("unified", "hash", "hash_eq"):
        for r in ("0.1", "0.01"):
            cell = q["table"][name][r]
            assert cell["status"] == "ok" and cell["memory_bytes"] <= cell["budget_bytes"]
            assert m[f"ml100k_{name}_auc_loss@{r}"] == pytest.approx(m["ml100k_full_auc"] - cell["test_auc"])
    best = {r: max(m[f"ml100k_hash_auc@{r}"], m[f"ml100k_hash_eq_auc@{r}"]) for r in ("0.1", "0.01")}
    for r, v in best.items():
        assert m[f"ue_minus_hash_auc@{r}"] == pytest.approx(m[f"ml100k_unified_auc@{r}"] - v)
    assert isinstance(m["ue_beats_hash_all_budgets"], bool)
    floor = q["at_floor"]["int8"]
    assert floor["memory_bytes"] == floor["budget_bytes"] == sum(q["fields"].values()) * 8  # dim 8, one byte each
    assert m["ml100k_int8_auc_loss@floor"] == pytest.approx(m["ml100k_full_auc"] - floor["test_auc"])
    checks = {c["metric"]: c for c in rec["checks"]}
    assert checks["ue_beats_hash_all_budgets"]["passed"] == m["ue_beats_hash_all_budgets"]
    assert Path(q["plot"]).is_file() and Path(q["plot"]).read_bytes()[:4] == b"\x89PNG"
    # a second run is answered from the per-run cache, with the same numbers
    again = runner.run_spec(spec, data_root=DATA, results_dir=None, work_dir=tmp_path / "work", overrides=params)
    assert all(r["cached"] for r in again["details"]["quality"]["runs"])
    assert again["metrics"]["ml100k_full_auc"] == m["ml100k_full_auc"]


def test_quality_part_skips_cleanly_without_data(tmp_path, monkeypatch):
    params = tiny_params(tmp_path, True)
    for part in ("budget", "lookup", "training"):
        params[part] = {"enabled": False}
    monkeypatch.setitem(runner.PIPELINES, "tables-core", "embedx.bench.pipelines.tables_core:run")
    rec = runner.run_spec(load_spec(SPEC), data_root=tmp_path / "no-data", results_dir=None,
                          work_dir=tmp_path / "work", overrides=params)
    assert "not found" in rec["details"]["quality"]["skipped"]
    assert rec["passed"] is False and rec["metrics"] == {}
