"""Preparation (pairs, mining, teacher scores, the file format) and evaluation on tiny data."""

import json

import numpy as np
import pytest

from embedx.sparse.dataset import PreparedData, PreparedDataError
from embedx.sparse.prepare import merge_candidates, supervised_queries, unsupervised_queries

from .conftest import tiny_dataset


def test_merge_candidates_interleaves_by_rank_and_drops_positives():
    bm25 = np.array([[5, 1, 2, 3]])
    dense = np.array([[2, 7, 5, -1]])
    out = merge_candidates([bm25, dense], positives=[[5]], top_k=2)
    # bm25 without positive 5: (1, 2); dense: (2, 7) -> rank 1: 1, 2; rank 2: (2), 7
    assert out.tolist() == [[1, 2, 7]]
    out = merge_candidates([np.array([[0, -1]]), np.array([[3, 4]])], positives=[[9], [9]][:1], top_k=3)
    assert out.tolist() == [[0, 3, 4]]


def test_unsupervised_pairs_are_title_to_abstract_and_share_titles():
    corpus = {"a": {"title": "Same Title", "text": "x"}, "b": {"title": "same  title", "text": "y"},
              "c": {"title": "", "text": "z"}, "d": {"title": "Other", "text": "w"}}
    rows = {d: i for i, d in enumerate(corpus)}
    qids, texts, positives = unsupervised_queries(corpus, rows)
    assert texts == ["Same Title", "Other"]
    assert positives == [[0, 1], [3]]          # duplicate titles are both positives; no title, no pair
    qids, texts, positives = supervised_queries({"q": "claim", "r": "other"}, {"q": {"a": 1, "b": 0}, "r": {}}, rows)
    assert (qids, positives) == (["q"], [[0]])  # grade 0 is not a positive; no positive, no query


def test_prepared_file_content(tiny_prepared):
    corpus, queries, train, _ = tiny_dataset()
    data = PreparedData.load(tiny_prepared)
    assert data.teachers == ["bm25", "dense", "sparse"]
    assert list(data.doc_ids) == list(corpus)
    uns, sup = data.splits["unsupervised"], data.splits["supervised"]
    assert uns.doc_field == "text" and sup.doc_field == "title_text"
    assert len(uns) == 12 and len(sup) == 6
    # unsupervised: the query is the title, the positive that document; its text never holds the title
    for i in range(len(uns)):
        (pos,) = uns.positives(i)
        assert uns.query_texts[i] == corpus[data.doc_ids[pos]]["title"]
        assert uns.query_texts[i] not in data.doc_texts(corpus, "text")[pos]
    for i, q in enumerate(sup.query_ids):
        assert [data.doc_ids[p] for p in sup.positives(i)] == list(train[q])
        cands = sup.candidates[i][sup.candidates[i] >= 0]
        assert len(cands) == len(set(cands)) and not set(cands) & set(sup.positives(i))
        for t in data.teachers:   # scores of real candidates are finite, padding is NaN
            assert np.isfinite(sup.cand_scores[t][i][sup.candidates[i] >= 0]).all()
            assert np.isnan(sup.cand_scores[t][i][sup.candidates[i] < 0]).all()


def test_teacher_scores_match_their_definitions(tiny_prepared, tiny_beir):
    """BM25 scores are the native BM25 impacts' dot products; dense scores are cosines."""
    from embedx.lexical import BM25Weighting
    from embedx.retrieval import doc_text

    from .conftest import HashDense

    corpus, _, _, _ = tiny_dataset()
    data = PreparedData.load(tiny_prepared)
    sup = data.splits["supervised"]
    texts = [doc_text(corpus[d]) for d in data.doc_ids]
    w = BM25Weighting()
    docs = w.fit_transform(texts)
    q = w.queries(sup.query_texts.tolist())
    full = (q @ docs.T).toarray()
    c = sup.candidates
    expected = np.where(c >= 0, np.take_along_axis(full, np.maximum(c, 0), axis=1), np.nan)
    assert np.allclose(sup.cand_scores["bm25"], expected, equal_nan=True, atol=1e-5)
    dense = HashDense().encode(texts)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    qd = HashDense().encode(sup.query_texts.tolist())
    qd /= np.linalg.norm(qd, axis=1, keepdims=True)
    assert np.allclose(sup.pos_scores["dense"], (qd * dense[sup.pos_docs]).sum(1), atol=1e-5)


def test_prepared_file_refuses_damage(tiny_prepared, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PreparedDataError, match="not a readable"):
        PreparedData.load(bad)
    data = PreparedData.load(tiny_prepared)
    data.splits["supervised"].candidates[0, 0] = 999
    with pytest.raises(PreparedDataError, match="outside"):
        data.save(tmp_path / "x.npz")
    data = PreparedData.load(tiny_prepared)
    with pytest.raises(PreparedDataError, match="lacks"):
        data.doc_texts({"d0a": {}}, "text")


def test_flops_stats_by_hand():
    from scipy import sparse

    from embedx.sparse.evaluate import flops_stats

    q = sparse.csr_matrix(np.array([[1.0, 0, 2.0], [0, 0, 1.0]]))
    d = sparse.csr_matrix(np.array([[0.5, 0, 0], [0, 1.0, 3.0], [0, 0, 1.0], [1.0, 0, 0]]))
    # P(q has t) = (1/2, 0, 1); P(d has t) = (2/4, 1/4, 2/4) -> 1/4 + 0 + 1/2
    stats = flops_stats(q, d)
    assert stats["flops"] == pytest.approx(0.75)
    assert stats["doc_terms"] == pytest.approx(5 / 4) and stats["query_terms"] == pytest.approx(1.5)


@pytest.mark.slow
def test_evaluate_a_trained_run_and_an_encoder_object(tiny_prepared, tiny_beir, tiny_model, tmp_path):
    from embedx.sparse.config import load_config
    from embedx.sparse.evaluate import evaluate_sparse
    from embedx.sparse.train import train_from_config
    from serving.encoders.idf import IdfQueryEncoder

    raw = {"seed": 0, "output_dir": str(tmp_path / "run"),
           "data": {"prepared": str(tiny_prepared), "corpus": str(tiny_beir)},
           "model": {"path": str(tiny_model), "max_length": 24}, "trainer": {"progress": False},
           "stages": {"finetune": {"data": "supervised", "steps": 2, "batch_size": 2, "negatives": 1}}}
    train_from_config(config=load_config(raw=raw))
    res = evaluate_sparse(tmp_path / "run", tiny_beir, engines=("native", "native-uint8"),
                          cache_dir=tmp_path / "cache", progress=False)
    assert res["queries"] == 6 and res["documents"] == 12
    for key in ("native_ndcg@10", "native_recall@100", "native-uint8_ndcg@10", "flops", "doc_terms", "query_terms"):
        assert 0 <= res[key] and np.isfinite(res[key]), key
    assert res["native_recall@100"] == 1.0           # 12 documents: all are retrieved
    assert list((tmp_path / "cache").glob("splade-*-docs-*.npz"))   # the corpus encoding was cached

    class Fixed:  # any object with encode(texts) -> csr plugs in
        def __init__(self, m):
            self.m = m

        def encode(self, texts):
            return self.m[:len(texts)]

    from scipy import sparse
    qenc = IdfQueryEncoder.load(tmp_path / "run" / "query_encoder")
    m = sparse.random(12, qenc.dimension, density=0.2, format="csr", random_state=0, dtype=np.float32)
    res2 = evaluate_sparse(Fixed(m), tiny_beir, query_encoder=qenc, engines=("native",), progress=False)
    assert res2["doc_terms"] == pytest.approx(m.getnnz(axis=1).mean())
    # query-time pruning: a high min_idf leaves queries fewer tokens; non-IDF query encoders refuse it
    pruned = evaluate_sparse(Fixed(m), tiny_beir, query_encoder=qenc, engines=("native",), progress=False,
                             min_idf=2.0)
    assert pruned["query_terms"] < res2["query_terms"]
    with pytest.raises(ValueError, match="min_idf"):
        evaluate_sparse(Fixed(m), tiny_beir, query_encoder=Fixed(m), engines=("native",), progress=False,
                        min_idf=1.0)

    # vectors encoded elsewhere (a GPU machine) come back as one .npz and score the same
    from embedx.data import load_corpus
    from embedx.retrieval import doc_text
    from embedx.sparse.evaluate import save_doc_vectors

    corpus = load_corpus(tiny_beir)
    path = save_doc_vectors(tmp_path / "docs.npz", list(corpus), m, [doc_text(corpus[d]) for d in corpus])
    res3 = evaluate_sparse(path, tiny_beir, query_encoder=qenc, engines=("native",), progress=False)
    assert res3["native_ndcg@10"] == res2["native_ndcg@10"] and res3["flops"] == res2["flops"]
    from embedx.sparse.evaluate import encode_corpus

    info = encode_corpus(tmp_path / "run", tiny_beir, tmp_path / "enc.npz", batch_size=32, device="cpu",
                         progress=False)
    assert info["documents"] == 12
    res4 = evaluate_sparse(tmp_path / "enc.npz", tiny_beir, query_encoder=tmp_path / "run" / "query_encoder",
                           engines=("native", "native-uint8"), progress=False)
    for key in ("native_ndcg@10", "native-uint8_ndcg@10", "flops", "doc_terms"):
        assert res4[key] == pytest.approx(res[key], abs=1e-9), key
    wrong = save_doc_vectors(tmp_path / "wrong.npz", list(corpus)[::-1], m, None)
    with pytest.raises(ValueError, match="not this corpus"):
        evaluate_sparse(wrong, tiny_beir, query_encoder=qenc, engines=("native",), progress=False)


def test_cli_prepare_describe_and_errors(tiny_beir, tmp_path):
    from click.testing import CliRunner

    from embedx.sparse.cli import sparse

    runner = CliRunner()
    out = tmp_path / "bm25.npz"
    res = runner.invoke(sparse, ["prepare", "--dataset", str(tiny_beir), "--out", str(out), "--teacher", "bm25",
                                 "--top-k", "3"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["teachers"] == ["bm25"] and info["splits"]["supervised"]["queries"] == 6
    res = runner.invoke(sparse, ["describe", str(out)])
    assert res.exit_code == 0 and "unsupervised" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: {a: {steps: 1}}\n")
    res = runner.invoke(sparse, ["train", "--config", str(bad)])
    assert res.exit_code == 1 and "Error:" in res.output and "data" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(sparse, ["--help"])
    assert all(c in res.output for c in ("prepare", "evaluate", "train", "describe"))
