"""The ``sparse-scifact`` benchmark pipeline on the bundled demo corpus with a tiny random masked-LM:
rows measured, a missing training output reported as not trained (never a number, never a crash),
the bars of the best trained model present only when one exists, and the spec file itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from embedx.bench.pipelines import sparse_scifact as ss
from embedx.bench.runner import PIPELINES, Context
from embedx.bench.spec import Check, Spec, load_spec

ROOT = Path(__file__).resolve().parents[1]


def _lucene():
    try:
        from indexing.lucene import is_available
    except ImportError as e:
        return False, str(e)
    return is_available()


LUCENE, WHY = _lucene()
needs_lucene = [pytest.mark.lucene, pytest.mark.skipif(not LUCENE, reason=f"Lucene backend: {WHY}")]


@pytest.fixture(autouse=True)
def one_torch_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 1-layer BERT masked-LM with a WordPiece tokenizer that spells any ASCII word."""
    pytest.importorskip("transformers")
    import torch
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    from embedx.export.tiny import tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-mlm")
    tok = tiny_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=128))
    with torch.no_grad():
        mlm.get_output_embeddings().bias.normal_(0.0, 1.0)
    mlm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory) -> Path:
    """A training output folder: model/ and query_encoder/ (IDF over the demo corpus)."""
    from embedx.data import demo_corpus_path, load_corpus
    from embedx.retrieval import doc_text
    from serving.encoders.idf import IdfQueryEncoder

    run = tmp_path_factory.mktemp("run") / "idf-flops"
    shutil.copytree(tiny_model, run / "model")
    texts = [doc_text(d) for d in load_corpus(demo_corpus_path()).values()]
    IdfQueryEncoder.from_corpus(tiny_model / "tokenizer.json", texts).save(run / "query_encoder")
    return run


def _spec(rows, **params) -> Spec:
    from embedx.data import demo_corpus_path

    return Spec(name="sparse-scifact", pipeline="sparse-scifact",
                dataset={"path": str(demo_corpus_path()), "split": "test"},
                params={"rows": rows, "max_length": 64, "batch_size": 8,
                        "latency": {"k": [3], "rounds": 1, "warmup": 0}, "throughput": {"enabled": False}, **params})


def test_registered_and_spec_loads():
    assert PIPELINES["sparse-scifact"] == "embedx.bench.pipelines.sparse_scifact:run"
    spec = load_spec(ROOT / "benchmarks" / "specs" / "sparse-scifact.yaml")
    rows = ss.parse_rows(spec.params["rows"])
    assert [r.kind for r in rows] == ["bm25", "siamese", "idf", "trained", "trained", "trained"]
    for r in rows:
        if r.kind == "trained":  # each trained row names an existing config whose output_dir is its folder
            import yaml
            cfg = yaml.safe_load((ROOT / r.config).read_text())
            assert Path(cfg["output_dir"]) == Path(r.model)
    checked = {c.metric for c in spec.checks}
    assert set(ss.BEST_CHECKS) <= checked
    assert {"start_onnx_int8_docs_per_s", "start_onnx_int8_ndcg@10_delta"} <= checked


def test_parse_rows_rejects_bad_rows():
    with pytest.raises(ValueError, match="kind"):
        ss.parse_rows([{"name": "x", "kind": "dense"}])
    with pytest.raises(ValueError, match="needs a model"):
        ss.parse_rows([{"name": "x", "kind": "idf"}])
    with pytest.raises(ValueError, match="unique"):
        ss.parse_rows([{"name": "x", "kind": "bm25"}, {"name": "x", "kind": "bm25"}])
    with pytest.raises(ValueError, match="seeds"):
        ss.parse_rows([{"name": "x", "kind": "idf", "model": "m", "seeds": ["a"]}])
    with pytest.raises(ValueError, match="seeds"):
        ss.parse_rows([{"name": "x", "kind": "trained", "model": "m", "seeds": "a"}])
    assert ss.parse_rows([{"name": "x", "kind": "trained", "model": "m", "seeds": ["a", "b"]}])[0].seeds == ("a", "b")


def test_training_missing_and_command(tmp_path, trained_run):
    row = ss.Row("idf-flops", "trained", model=str(tmp_path / "nope"), config="embedx/sparse/configs/x.yaml")
    assert "no model/config.json" in ss.training_missing(row)
    assert "embedx train sparse --config embedx/sparse/configs/x.yaml" in ss.train_command(row)
    half = tmp_path / "half"
    shutil.copytree(trained_run / "model", half / "model")
    assert "query_encoder" in ss.training_missing(ss.Row("h", "trained", model=str(half)))
    assert ss.training_missing(ss.Row("ok", "trained", model=str(trained_run))) is None


def test_training_record_reads_the_runs_own_config_and_summary(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    row = ss.Row("ours", "trained", model=str(run))
    assert ss.training_record(row) == {}
    (run / "config.yaml").write_text("name: x\nstages:\n  pretrain: null\n  finetune: {steps: 400}\n")
    (run / "summary.json").write_text('{"global_step": 400}')
    assert ss.training_record(row) == {"config": {"name": "x", "stages": {"pretrain": None, "finetune": {"steps": 400}}},
                                       "summary": {"global_step": 400}}


def test_latency_pair_ratio_of_medians():
    ticks = iter(np.arange(0, 1000, 1.0))
    # a fake clock that advances by 1 per reading: every call of a takes 1, of b takes 1 -> ratio 1
    st = ss.latency_pair(lambda i: None, lambda i: None, 4, 2, warmup=0, clock=lambda: next(ticks))
    assert st["ratio_p50"] == pytest.approx(1.0) and st["ratio_total"] == pytest.approx(1.0)
    assert st["a_p50_us"] == pytest.approx(1e6)


def test_tables_mark_untrained_rows():
    rows = [ss.Row("bm25", "bm25", "BM25"), ss.Row("t", "trained", "ours", model="x")]
    m = {"bm25_ndcg@10": 0.679, "bm25_recall@100": 0.925}
    table = ss.ablation_table(rows, m, {"t": "not trained (x): embedx train sparse --config c.yaml"})
    lines = table.splitlines()
    assert len(lines) == 4 and "0.679" in lines[2] and "not trained" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    enc = ss.encoding_table([("start", "SPLADE-tiny")], {"start_onnx_int8_docs_per_s": 70.0})
    assert "70.0" in enc and "—" in enc


@pytest.mark.slow
def test_pipeline_on_demo_corpus(tiny_model, trained_run, tmp_path, monkeypatch):
    if not LUCENE:
        pytest.skip(f"Lucene backend: {WHY}")
    monkeypatch.setenv("EMBEDX_CACHE", str(tmp_path / "cache"))
    rows = [{"name": "bm25", "kind": "bm25"},
            {"name": "sia", "kind": "siamese", "model": str(tiny_model)},
            {"name": "idf", "kind": "idf", "model": str(tiny_model)},
            {"name": "gone", "kind": "trained", "model": str(tmp_path / "missing"), "config": "c.yaml"}]
    spec = _spec(rows)
    out = ss.run(Context(spec=spec, data_root=tmp_path, work_dir=tmp_path / "work", params=spec.params))
    m, d = out["metrics"], out["details"]
    for row in ("bm25", "sia", "idf"):
        assert 0.0 <= m[f"{row}_ndcg@10"] <= 1.0 and 0.0 <= m[f"{row}_recall@100"] <= 1.0
    for row in ("sia", "idf"):
        assert m[f"{row}_lucene_ratio_p50@k3"] > 0 and m[f"{row}_native_ratio_p50@k3"] > 0
        assert m[f"{row}_doc_terms"] > 0
    assert m["idf_query_terms"] < m["sia_query_terms"]   # IDF queries keep only their own tokens
    from embedx.pretrained import local_model_path
    if local_model_path("splade-tiny") is not None:       # tokenizer vs word cache, same ids (checked inside)
        assert m["query_tokenize_p50_us_tokenizer"] > 0 and m["query_tokenize_p50_us_word_cache"] > 0
    # the IDF row is timed on folded impacts, whose ranking is checked against the evaluated one
    assert d["rows"]["idf"]["latency_index"].startswith("query weights folded")
    assert abs(m["idf_lucene_folded_ndcg@10"] - m["idf_lucene_ndcg@10"]) < 0.05
    assert d["rows"]["sia"]["latency_index"] == "as evaluated" and "sia_lucene_folded_ndcg@10" not in m
    assert not any(k.startswith("gone_") for k in m)       # no number for a row that was not trained
    assert m["trained_rows"] == 0 and "best_trained_ndcg@10" not in m
    assert d["not_trained"]["gone"]["command"].endswith("embedx train sparse --config c.yaml")
    assert "not trained" in d["table"]
    # the bars of the best trained model have no value: listed as not run (and in the headline,
    # so the README table shows them); the runner counts a missing value as a failed check
    assert set(out["not_run"]) == set(ss.BEST_CHECKS) and set(ss.BEST_CHECKS) <= set(out["headline"])
    assert "gone" in out["not_run"]["best_trained_ndcg@10"]
    assert Check("best_trained_ndcg@10", min=0.7).evaluate(m.get("best_trained_ndcg@10")) is False


@pytest.mark.slow
def test_pipeline_with_a_trained_run(tiny_model, trained_run, tmp_path, monkeypatch):
    if not LUCENE:
        pytest.skip(f"Lucene backend: {WHY}")
    monkeypatch.setenv("EMBEDX_CACHE", str(tmp_path / "cache"))
    import yaml

    seed1 = tmp_path / "seed1"                    # the same weights under another seed: the same quality
    shutil.copytree(trained_run, seed1)
    (seed1 / "config.yaml").write_text(yaml.safe_dump({"seed": 1}))
    rows = [{"name": "bm25", "kind": "bm25"},
            {"name": "ours", "kind": "trained", "model": str(trained_run),
             "seeds": [str(seed1), str(tmp_path / "never-trained")]}]
    spec = _spec(rows)
    out = ss.run(Context(spec=spec, data_root=tmp_path, work_dir=tmp_path / "work", params=spec.params))
    m = out["metrics"]
    assert m["trained_rows"] == 1 and m["best_trained"] == "ours" and out["not_run"] == {}
    assert m["best_trained_ndcg@10"] == m["ours_ndcg@10"]
    assert m["best_trained_lucene_ratio_p50@k3"] == m["ours_lucene_ratio_p50@k3"]
    # the run's own query encoder is used: its IDF weights are the query values
    assert m["ours_query_terms"] > 0
    # seeds: the row's own run and every finished seed run; a missing one is listed, not counted
    assert m["ours_seeds"] == 2 and m["best_trained_seeds"] == 2
    assert m["ours_ndcg@10_mean"] == pytest.approx(m["ours_ndcg@10"]) and m["ours_ndcg@10_sd"] == pytest.approx(0)
    records = out["details"]["rows"]["ours"]["seeds"]
    assert [r.get("seed") for r in records[:2]] == [None, 1] and records[2]["status"] == "not trained"
    assert "(2 seeds)" in out["details"]["table"]
