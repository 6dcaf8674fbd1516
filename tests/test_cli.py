"""The embedx command line end to end on the bundled demo corpus."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from embedx.cli import main
from embedx.data import demo_corpus_path, load_beir


@pytest.fixture()
def run():
    runner = CliRunner()

    def invoke(*args, ok=True):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result
    return invoke


def all_commands(group, prefix=()):
    import click
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


def test_help_everywhere(run):
    for path in [()] + list(all_commands(main)):
        out = run(*path, "--help").output
        assert "Usage:" in out and "--help" in out


def test_build_search_eval_roundtrip(run, tmp_path):
    corpus = demo_corpus_path()
    bundle = tmp_path / "b"
    run("index", "build", "--corpus", corpus, "--out", bundle, "--kind", "sparse")
    manifest = json.loads(run("index", "info", bundle).output)
    assert manifest["kind"] == "sparse" and manifest["count"] == 72
    out = run("search", bundle, "early electronic computers with vacuum tubes", "-k", "3", "--json").output
    hits = json.loads(out.splitlines()[0])["hits"]
    assert hits[0]["id"] == "computing-03" and hits[0]["title"] == "ENIAC"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    ev = run("eval", "--dataset", corpus, "--bundle", bundle, "--save-run", tmp_path / "run.trec").output
    ndcg = float(ev.split("ndcg@10")[1].split()[0])
    assert ndcg > 0.8
    # the saved TREC run scores the same through --run
    ev2 = run("eval", "--dataset", corpus, "--run", tmp_path / "run.trec").output
    assert ev2 == ev


def test_dense_bundle_from_vectors(run, tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((20, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", vecs)
    (tmp_path / "ids.txt").write_text("\n".join(f"d{i}" for i in range(20)))
    np.save(tmp_path / "q.npy", vecs[[3, 7]])
    run("index", "build", "--kind", "dense", "--vectors", tmp_path / "v.npy", "--ids", tmp_path / "ids.txt",
        "--metric", "l2", "--out", tmp_path / "d")
    out = run("search", tmp_path / "d", "--vectors", tmp_path / "q.npy", "-k", "1", "--json").output
    assert [json.loads(line)["hits"][0]["id"] for line in out.splitlines()] == ["d3", "d7"]


def test_user_errors_are_one_line_messages(run, tmp_path):
    corpus = demo_corpus_path()
    bundle = tmp_path / "b"
    run("index", "build", "--corpus", corpus, "--out", bundle)
    r = run("eval", "--dataset", corpus, "--bundle", bundle, "--metric", "bogus@10", ok=False)
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
    r = run("search", bundle, "-k", "0", "cats", ok=False)
    assert r.exit_code == 1 and "k must be a positive integer" in r.output
    (tmp_path / "notabundle").mkdir()
    r = run("search", tmp_path / "notabundle", "x", ok=False)
    assert r.exit_code == 1 and "manifest" in r.output.lower()
    r = run("index", "build", "--kind", "dense", "--corpus", corpus, "--out", tmp_path / "x", ok=False)
    assert r.exit_code == 2 and "--vectors" in r.output


def test_demo_runs_end_to_end(run, tmp_path):
    out = run("demo", "--out", tmp_path / "bundle").output
    assert "quality:" in out and "timings:" in out and "ENIAC" in out
    assert (tmp_path / "bundle" / "manifest.json").exists()
    # it ends with the server answering the first queries over HTTP
    assert out.count("POST /v1/search") == 3 and "top: [" in out
    # a second run replaces the bundle atomically and still works
    out = run("demo", "--out", tmp_path / "bundle", "--query", "ocean tides", "--no-serve").output
    assert "POST /v1/search" not in out


def test_bench_list(run):
    out = run("bench", "list").output
    assert "scifact-bm25" in out and "index-speed" in out


def test_demo_corpus_is_consistent():
    ds = load_beir(demo_corpus_path())
    assert len(ds.corpus) == 72 and ds.qrels


def test_train_tables_budget_below_floor_is_a_one_line_error(run):
    from pathlib import Path

    import embedx.tables

    config = Path(embedx.tables.__file__).parent / "configs" / "criteo-synth-dlrm.yaml"
    r = run("train", "tables", "--config", config, "table.method=mde", "table.rate=0.00001", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "Error:" in r.output and "needs a budget of at least" in r.output
