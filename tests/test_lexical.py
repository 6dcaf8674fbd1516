"""BM25-as-impacts must give exactly BM25 scores: checked against a direct per-pair formula."""

import math

import numpy as np
import pytest

from embedx.lexical import Analyzer, BM25Weighting, Vocabulary, term_counts

DOCS = ["The cat sat on the mat", "Dogs and cats are pets", "A cat, a cat, a cat!", "Quantum chromodynamics"]


def bm25_direct(docs_tokens, query_tokens, k1, b):
    n = len(docs_tokens)
    avgdl = sum(map(len, docs_tokens)) / n
    scores = []
    for d in docs_tokens:
        s = 0.0
        for t in query_tokens:
            df = sum(t in dd for dd in docs_tokens)
            tf = d.count(t)
            if not tf:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(s)
    return np.array(scores)


def test_analyzer_lowercases_splits_and_drops_stopwords():
    assert Analyzer()("The Cat, and THE mat!") == ["cat", "mat"]
    assert Analyzer(frozenset())("a b") == ["a", "b"]


@pytest.mark.parametrize("k1,b", [(0.9, 0.4), (1.2, 0.75), (0.5, 0.0)])
def test_bm25_impacts_reproduce_bm25_scores(k1, b):
    w = BM25Weighting(k1=k1, b=b)
    m = w.fit_transform(DOCS)
    tokens = [w.analyzer(d) for d in DOCS]
    for query in ["cat mat", "cats pets cat", "quantum", "unknownword cat"]:
        got = (w.queries([query]) @ m.T).toarray().ravel()
        want = bm25_direct(tokens, w.analyzer(query), k1, b)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_hand_computed_idf():
    w = BM25Weighting()
    w.fit_transform(DOCS)
    # "cat" occurs in docs 0 and 2 of 4: ln(1 + (4 - 2 + 0.5) / (2 + 0.5)) = ln 2
    assert w.idf[w.vocab.get("cat")] == pytest.approx(math.log(2), rel=1e-6)


def test_term_counts_ignore_unknown_terms_and_count_repeats():
    v = Vocabulary(["a", "b"])
    m = term_counts([["a", "a", "z"], []], v)
    assert m.toarray().tolist() == [[2, 0], [0, 0]]


def test_save_load_roundtrip(tmp_path):
    w = BM25Weighting(k1=1.1, b=0.3)
    m = w.fit_transform(DOCS)
    w.save(tmp_path / "w.json")
    w2 = BM25Weighting.load(tmp_path / "w.json")
    assert w2.vocab.terms == w.vocab.terms and (w2.k1, w2.b) == (1.1, 0.3)
    np.testing.assert_array_equal((w2.queries(["cat"]) @ m.T).toarray(), (w.queries(["cat"]) @ m.T).toarray())


def test_load_refuses_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"type": "splade"}')
    with pytest.raises(ValueError, match="not a BM25"):
        BM25Weighting.load(tmp_path / "x.json")
