"""ImpactIndex against an independent brute force: a dense float64 product and a full stable sort.

Exact comparisons use "dyadic" weights (small multiples of 1/4 or 1/8) whose sums are exact
in any summation order, so scores must match bit for bit and ties must come out by row.
"""

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import indexing.sparse as sparse_mod
from indexing.errors import BundleError, FormatVersionError, InvalidInputError
from indexing.quantize import quantize_uint8
from indexing.sparse import ImpactIndex


# ---------------------------------------------------------------- brute force reference
def brute_top_k(queries, docs, k, rank_docs=None):
    """Top-k rows and scores by a dense float64 product; order score desc then row asc.

    ``rank_docs`` (default ``docs``) decides the order, ``docs`` gives the scores; used for
    quantised indexes, ranked exactly by integer impacts and scored on dequantised weights.
    """
    q = np.asarray(queries.todense(), dtype=np.float64)
    scores = (q @ np.asarray(docs.todense(), dtype=np.float64).T).astype(np.float32)
    rank = scores if rank_docs is None else (
        q @ np.asarray(rank_docs.todense(), dtype=np.float64).T).astype(np.float32)
    n_q, n_d = scores.shape
    rows = np.full((n_q, k), -1, dtype=np.int64)
    out = np.full((n_q, k), -np.inf, dtype=np.float32)
    for i in range(n_q):
        order = sorted((r for r in range(n_d) if rank[i, r] > 0), key=lambda r: (-rank[i, r], r))[:k]
        rows[i, :len(order)] = order
        out[i, :len(order)] = scores[i, order]
    return rows, out


def random_matrix(rng, n, vocab, density, dyadic=False):
    m = sp.random(n, vocab, density=density, format="csr", dtype=np.float32, random_state=rng)
    if dyadic:  # multiples of 1/4 in (0, 2]: exact sums, many ties
        m.data = (rng.integers(1, 9, m.nnz) / 4).astype(np.float32)
    return m


def make_ids(n):
    return [f"doc{i}" for i in range(n)]


def assert_same(res, rows, scores, ids=None, exact=True):
    np.testing.assert_array_equal(res.rows, rows)
    if exact:
        np.testing.assert_array_equal(res.scores, scores)
    else:
        np.testing.assert_allclose(res.scores, scores, rtol=2e-6)
    if ids is not None:
        expected = np.where(rows >= 0, np.asarray(ids)[np.maximum(rows, 0)], "")
        np.testing.assert_array_equal(res.ids, expected)


# ---------------------------------------------------------------- correctness
@pytest.mark.parametrize("k", [1, 5, 37])
def test_float_index_matches_brute_force(k):
    rng = np.random.default_rng(1)
    docs, queries = random_matrix(rng, 300, 120, 0.05), random_matrix(rng, 25, 120, 0.08)
    index = ImpactIndex.build(make_ids(300), docs)
    rows, scores = brute_top_k(queries, docs, k)
    # Products and sums are float64 inside, so scores are the float32 rounding of the
    # exact inner product, bit for bit with the brute force on this (fixed) data.
    assert_same(index.search(queries, k), rows, scores, make_ids(300))
    assert_same(index.search(queries.tocoo(), k), rows, scores)  # any scipy.sparse format


@pytest.mark.parametrize("quantize", [None, "uint8"])
def test_dyadic_weights_match_exactly_with_ties(quantize):
    rng = np.random.default_rng(2)
    docs, queries = random_matrix(rng, 200, 40, 0.1, dyadic=True), random_matrix(rng, 30, 40, 0.15, dyadic=True)
    if quantize:  # max 255/8 gives scale 1/8: every multiple of 1/8 quantises without error
        docs.data[0] = 255 / 8
    index = ImpactIndex.build(make_ids(200), docs, quantize=quantize)
    np.testing.assert_array_equal(index.doc_vectors().toarray(), docs.toarray())
    rows, scores = brute_top_k(queries, docs, 15)
    assert_same(index.search(queries, 15), rows, scores, make_ids(200))


def test_quantised_index_matches_brute_force_on_dequantised_weights():
    rng = np.random.default_rng(3)
    docs, queries = random_matrix(rng, 400, 90, 0.06), random_matrix(rng, 20, 90, 0.1)
    index = ImpactIndex.build(make_ids(400), docs, quantize="uint8")
    impacts, scale = quantize_uint8(docs.data)
    assert index.scale == pytest.approx(scale)
    np.testing.assert_array_equal(index.impacts().toarray(),
                                  sp.csr_matrix((impacts, docs.indices, docs.indptr), shape=docs.shape).toarray())
    assert index.impacts().dtype == np.uint8
    dequant = index.doc_vectors()
    np.testing.assert_allclose(dequant.toarray(), docs.toarray(), atol=scale / 2 + 1e-7)
    rows, scores = brute_top_k(queries, dequant, 10, rank_docs=index.impacts())
    assert_same(index.search(queries, 10), rows, scores, make_ids(400), exact=False)


def test_raw_impact_scores_are_integer_impacts_without_scale():
    rng = np.random.default_rng(4)
    docs, queries = random_matrix(rng, 150, 50, 0.1), random_matrix(rng, 12, 50, 0.2, dyadic=True)
    index = ImpactIndex.build(make_ids(150), docs, quantize="uint8")
    rows, scores = brute_top_k(queries, index.impacts(), 8)
    raw = index.search(queries, 8, raw_impacts=True)
    assert_same(raw, rows, scores)  # dyadic queries x integer impacts: exact
    scaled = index.search(queries, 8)
    np.testing.assert_array_equal(scaled.rows, raw.rows)
    np.testing.assert_allclose(scaled.scores, raw.scores * index.scale, rtol=1e-6)


def test_raw_impacts_need_a_quantised_index():
    index = ImpactIndex.build(["a"], sp.csr_matrix(np.ones((1, 3), np.float32)))
    with pytest.raises(InvalidInputError, match="quantised"):
        index.search(sp.csr_matrix(np.ones((1, 3))), 1, raw_impacts=True)
    with pytest.raises(InvalidInputError, match="not quantised"):
        index.impacts()


def test_ties_break_by_row_and_are_deterministic():
    docs = sp.csr_matrix(np.array([[0, 1], [2, 0], [1, 1], [0, 1], [2, 0], [0, 0]], dtype=np.float32))
    index = ImpactIndex.build(["e", "d", "c", "b", "a", "z"], docs)
    q = sp.csr_matrix(np.array([[1, 1], [0, 1]], dtype=np.float32))
    res = index.search(q, 4)
    # Query 0: rows 1, 2, 4 score 2 (tie, by row), rows 0 and 3 score 1 (tie, by row).
    np.testing.assert_array_equal(res.rows, [[1, 2, 4, 0], [0, 2, 3, -1]])
    np.testing.assert_array_equal(res.scores[0], [2, 2, 2, 1])
    assert res.hits(0) == [("d", 2.0), ("c", 2.0), ("a", 2.0), ("e", 1.0)]
    again = index.search(q, 4)
    np.testing.assert_array_equal(again.rows, res.rows)
    # The tie at the k-th place is cut by row as well.
    np.testing.assert_array_equal(index.search(q[1], 2).rows, [[0, 2]])


def test_rank_keys_order_by_score_then_row_and_mark_non_positive_scores():
    scores = np.array([[0.0, -0.0, 1.5, np.inf, -2.0, 1e-45, 1.5]], np.float32)
    rows, top = sparse_mod._top_k_of_keys(sparse_mod._rank_keys(scores, np.arange(7)), 5)
    np.testing.assert_array_equal(rows, [[3, 2, 6, 5, -1]])
    np.testing.assert_array_equal(top, [[np.inf, 1.5, 1.5, np.float32(1e-45), -np.inf]])


def test_top_k_of_scores_orders_like_the_rank_keys():
    scores = np.array([0.0, -0.0, 1.5, np.inf, 1e-45, 1.5, 2.0, 1.5], np.float32)
    for k in range(1, 10):
        want_rows, want = sparse_mod._top_k_of_keys(sparse_mod._rank_keys(scores[None], np.arange(8)), k)
        rows, top = sparse_mod._top_k_of_scores(scores, k)
        hit = want_rows[0] >= 0
        np.testing.assert_array_equal(rows, want_rows[0][hit])
        np.testing.assert_array_equal(top, want[0][hit])
    assert sparse_mod._top_k_of_scores(np.zeros(4, np.float32), 2)[0].size == 0


def test_batch_and_single_queries_give_bit_identical_results():
    rng = np.random.default_rng(5)
    docs, queries = random_matrix(rng, 500, 200, 0.05), random_matrix(rng, 40, 200, 0.05)
    index = ImpactIndex.build(make_ids(500), docs)
    batch = index.search(queries, 10)
    for i in range(queries.shape[0]):
        single = index.search(queries[i], 10)
        np.testing.assert_array_equal(single.rows[0], batch.rows[i])
        np.testing.assert_array_equal(single.scores[0], batch.scores[i])


@pytest.mark.parametrize("dense_cells,per_posting,max_postings,slice_per_term",
                         [(0, 0, 1 << 22, 256), (600, 16, 50, 256), (10**6, 16, 1, 256), (0, 2, 100, 256),
                          (1 << 16, 16, 1 << 17, 0), (0, 0, 1 << 17, 0), (600, 16, 50, 20)])
def test_dense_sparse_and_chunked_accumulation_agree(monkeypatch, dense_cells, per_posting, max_postings,
                                                     slice_per_term):
    rng = np.random.default_rng(6)
    docs, queries = random_matrix(rng, 300, 80, 0.08), random_matrix(rng, 33, 80, 0.1)
    index = ImpactIndex.build(make_ids(300), docs, quantize="uint8")
    reference = index.search(queries, 12)
    monkeypatch.setattr(sparse_mod, "_DENSE_CELLS", dense_cells)  # 0 and 0: touched-documents path
    monkeypatch.setattr(sparse_mod, "_DENSE_PER_POSTING", per_posting)
    monkeypatch.setattr(sparse_mod, "_MAX_POSTINGS", max_postings)
    monkeypatch.setattr(sparse_mod, "_SLICE_PER_TERM", slice_per_term)  # 0: always copy whole ranges
    other = index.search(queries, 12)
    np.testing.assert_array_equal(other.rows, reference.rows)
    np.testing.assert_array_equal(other.scores, reference.scores)
    np.testing.assert_array_equal(other.ids, reference.ids)


def test_zero_weights_never_match():
    # Explicitly stored zeros, and a weight that quantises to impact 0, are not postings.
    docs = sp.csr_matrix((np.array([0.0, 1.0, 255.0, 0.001], np.float32), np.array([0, 1, 2, 0]),
                          np.array([0, 2, 3, 4])), shape=(3, 3))
    for quantize, postings in ((None, 3), ("uint8", 2)):
        index = ImpactIndex.build(["a", "b", "c"], docs, quantize=quantize)
        assert index.manifest_fields()["postings"] == postings
        res = index.search(sp.csr_matrix(np.array([[1.0, 0, 0]], np.float32)), 3)
        expected = [2, -1, -1] if quantize is None else [-1, -1, -1]
        np.testing.assert_array_equal(res.rows[0], expected)


@pytest.mark.parametrize("dense_cells", [0, 1 << 18])
def test_explicit_zero_query_weight_matches_nothing(monkeypatch, dense_cells):
    monkeypatch.setattr(sparse_mod, "_DENSE_CELLS", dense_cells)  # 0: touched-documents path
    monkeypatch.setattr(sparse_mod, "_DENSE_PER_POSTING", 0)
    index = ImpactIndex.build(["a", "b"], sp.csr_matrix(np.array([[1, 0], [0, 1]], np.float32)))
    query = sp.csr_matrix((np.array([0.0, 2.0], np.float32), np.array([0, 1]), np.array([0, 2])), shape=(1, 2))
    assert query.nnz == 2
    np.testing.assert_array_equal(index.search(query, 2).rows, [[1, -1]])


# ---------------------------------------------------------------- padding and edge cases
def test_k_larger_than_matching_docs_is_padded():
    docs = sp.csr_matrix(np.array([[1, 0, 0], [0, 2, 0], [3, 0, 0]], np.float32))
    index = ImpactIndex.build(["a", "b", "c"], docs)
    res = index.search(sp.csr_matrix(np.array([[1, 0, 0]], np.float32)), 5)
    np.testing.assert_array_equal(res.rows, [[2, 0, -1, -1, -1]])
    np.testing.assert_array_equal(res.ids, [["c", "a", "", "", ""]])
    assert np.isneginf(res.scores[0, 2:]).all()
    assert res.hits(0) == [("c", 3.0), ("a", 1.0)]


def test_queries_without_known_terms_are_fully_padded():
    docs = sp.csr_matrix(np.array([[1, 0, 0], [0, 2, 0]], np.float32))
    index = ImpactIndex.build(["a", "b"], docs, vocab=["x", "y", "z"])
    queries = sp.csr_matrix(np.array([[0, 0, 0], [0, 0, 4], [0, 1, 0]], np.float32))
    res = index.search(queries, 2)
    np.testing.assert_array_equal(res.rows, [[-1, -1], [-1, -1], [1, -1]])
    assert res.hits(0) == [] and res.hits(1) == []
    only_unknown = index.encode_terms({"nope": 1.0})
    assert index.search(only_unknown, 3).hits(0) == []


def test_empty_index_returns_padding():
    index = ImpactIndex.build([], sp.csr_matrix((0, 4), dtype=np.float32))
    assert len(index) == 0
    res = index.search(sp.csr_matrix(np.ones((2, 4), np.float32)), 3)
    assert (res.rows == -1).all() and (res.ids == "").all()


# ---------------------------------------------------------------- bad input
@pytest.fixture
def small_index():
    docs = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], np.float32))
    return ImpactIndex.build(["a", "b"], docs, vocab=["x", "y", "z"])


def test_empty_query_batch_is_refused(small_index):
    with pytest.raises(InvalidInputError, match="empty"):
        small_index.search(sp.csr_matrix((0, 3), dtype=np.float32), 2)


@pytest.mark.parametrize("k", [0, -3, 2.0, True, "5"])
def test_bad_k_is_refused(small_index, k):
    with pytest.raises(InvalidInputError, match="k must be"):
        small_index.search(sp.csr_matrix(np.ones((1, 3), np.float32)), k)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_negative_or_non_finite_weights_are_refused(small_index, bad):
    m = np.array([[1, bad, 0]], dtype=np.float32)
    with pytest.raises(InvalidInputError, match="negative|NaN"):
        small_index.search(sp.csr_matrix(m), 1)
    with pytest.raises(InvalidInputError, match="negative|NaN"):
        ImpactIndex.build(["a"], sp.csr_matrix(m))
    with pytest.raises(InvalidInputError, match="negative|NaN"):
        ImpactIndex.build(["a"], sp.csr_matrix(m), quantize="uint8")


def test_vocabulary_size_mismatch_is_refused(small_index):
    with pytest.raises(InvalidInputError, match="vocabulary size 4"):
        small_index.search(sp.csr_matrix(np.ones((1, 4), np.float32)), 1)
    with pytest.raises(InvalidInputError, match="vocab has 2 terms"):
        ImpactIndex.build(["a"], sp.csr_matrix(np.ones((1, 3), np.float32)), vocab=["x", "y"])
    with pytest.raises(InvalidInputError, match="unique"):
        ImpactIndex.build(["a"], sp.csr_matrix(np.ones((1, 3), np.float32)), vocab=["x", "y", "x"])


def test_dense_input_is_refused(small_index):
    with pytest.raises(InvalidInputError, match="scipy.sparse"):
        small_index.search(np.ones((1, 3), np.float32), 1)


def test_id_count_mismatch_and_duplicate_ids_are_refused():
    docs = sp.csr_matrix(np.ones((3, 2), np.float32))
    with pytest.raises(InvalidInputError, match="2 ids for 3"):
        ImpactIndex.build(["a", "b"], docs)
    with pytest.raises(InvalidInputError, match="unique"):
        ImpactIndex.build(["a", "b", "a"], docs)


def test_unknown_quantize_mode_is_refused():
    with pytest.raises(InvalidInputError, match="quantize"):
        ImpactIndex.build(["a"], sp.csr_matrix(np.ones((1, 2), np.float32)), quantize="int4")


# ---------------------------------------------------------------- term encoding
def test_encode_terms_maps_terms_and_drops_unknown_ones(small_index, caplog):
    with caplog.at_level(logging.DEBUG, logger="indexing.sparse"):
        q = small_index.encode_terms([{"z": 0.5, "x": 2, "what": 9.0}, {}, {"y": np.float32(1.5)}])
    assert "not in the vocabulary" in caplog.text and "what" in caplog.text
    np.testing.assert_array_equal(q.toarray(), [[2, 0, 0.5], [0, 0, 0], [0, 1.5, 0]])
    single = small_index.encode_terms({"y": 1.0})
    assert single.shape == (1, 3)
    np.testing.assert_array_equal(small_index.search(q, 2).rows, [[0, -1], [-1, -1], [1, -1]])


def test_encode_terms_refuses_bad_weights_and_missing_vocab(small_index):
    with pytest.raises(InvalidInputError, match="negative"):
        small_index.encode_terms({"x": -1.0})
    with pytest.raises(InvalidInputError, match="number"):
        small_index.encode_terms({"x": "heavy"})
    with pytest.raises(InvalidInputError, match="dict"):
        small_index.encode_terms(["x"])
    no_vocab = ImpactIndex.build(["a"], sp.csr_matrix(np.ones((1, 2), np.float32)))
    with pytest.raises(InvalidInputError, match="without a vocabulary"):
        no_vocab.encode_terms({"x": 1.0})


# ---------------------------------------------------------------- persistence
@pytest.mark.parametrize("quantize", [None, "uint8"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip_gives_identical_results(tmp_path, quantize, mmap):
    rng = np.random.default_rng(7)
    docs, queries = random_matrix(rng, 120, 30, 0.2), random_matrix(rng, 9, 30, 0.2)
    vocab = [f"t{i}" for i in range(30)]
    index = ImpactIndex.build(make_ids(120), docs, quantize=quantize, vocab=vocab)
    listed = index.save(tmp_path)
    assert sorted(listed) == sorted(p.name for p in tmp_path.iterdir())  # no stray temporary files
    loaded = ImpactIndex.load(tmp_path, mmap=mmap)
    assert loaded.manifest_fields() == index.manifest_fields()
    assert loaded.vocab == vocab and len(loaded) == 120 and loaded.scale == index.scale
    assert loaded._weights.flags.writeable is (not mmap)  # mmap_mode="r" maps read-only
    for raw in ([False, True] if quantize else [False]):
        a, b = index.search(queries, 7, raw_impacts=raw), loaded.search(queries, 7, raw_impacts=raw)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(loaded.doc_vectors().toarray(), index.doc_vectors().toarray())
    np.testing.assert_array_equal(loaded.encode_terms({"t3": 1.0}).toarray(),
                                  index.encode_terms({"t3": 1.0}).toarray())


def test_manifest_fields():
    docs = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], np.float32))
    assert ImpactIndex.build(["a", "b"], docs).manifest_fields() == {
        "kind": "sparse", "metric": "ip", "vocab_size": 3, "count": 2, "quantize": None, "scale": None,
        "postings": 3}
    fields = ImpactIndex.build(["a", "b"], docs, quantize="uint8").manifest_fields()
    assert fields["quantize"] == "uint8" and fields["scale"] == pytest.approx(3 / 255)
    json.dumps(fields)


def test_load_refuses_damaged_or_newer_files(tmp_path, small_index):
    small_index.save(tmp_path)
    settings = json.loads((tmp_path / "sparse.json").read_text())

    (tmp_path / "sparse.json").write_text(json.dumps({**settings, "format_version": 99}))
    with pytest.raises(FormatVersionError):
        ImpactIndex.load(tmp_path)
    (tmp_path / "sparse.json").write_text(json.dumps({**settings, "vocab_size": 5}))
    with pytest.raises(BundleError, match="expected int64"):
        ImpactIndex.load(tmp_path)
    (tmp_path / "sparse.json").write_text(json.dumps({**settings, "n_docs": 3}))
    with pytest.raises(BundleError, match="2 ids for 3"):
        ImpactIndex.load(tmp_path)
    (tmp_path / "sparse.json").write_text(json.dumps({**settings, "quantize": "uint8", "scale": 0.5}))
    with pytest.raises(BundleError, match="expected uint8"):
        ImpactIndex.load(tmp_path)
    (tmp_path / "sparse.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot read"):
        ImpactIndex.load(tmp_path)
    (tmp_path / "sparse.json").write_text(json.dumps(settings))
    (tmp_path / "postings_rows.npy").unlink()
    with pytest.raises(BundleError, match="missing"):
        ImpactIndex.load(tmp_path)


def test_save_needs_an_existing_directory(tmp_path, small_index):
    with pytest.raises(FileNotFoundError):
        small_index.save(tmp_path / "absent")


# ---------------------------------------------------------------- property test
@st.composite
def problems(draw):
    n_docs, vocab, n_q = draw(st.integers(1, 25)), draw(st.integers(1, 12)), draw(st.integers(1, 6))
    cells = st.integers(0, 8).map(lambda x: x / 4)  # zero, or an exact multiple of 1/4
    docs = np.array(draw(st.lists(cells, min_size=n_docs * vocab, max_size=n_docs * vocab)), np.float32)
    queries = np.array(draw(st.lists(cells, min_size=n_q * vocab, max_size=n_q * vocab)), np.float32)
    k = draw(st.integers(1, n_docs + 3))
    return docs.reshape(n_docs, vocab), queries.reshape(n_q, vocab), k, draw(st.sampled_from([None, "uint8"]))


@settings(max_examples=60, deadline=None)
@given(problems())
def test_property_matches_brute_force(problem):
    docs, queries, k, quantize = problem
    docs, queries = sp.csr_matrix(docs), sp.csr_matrix(queries)
    index = ImpactIndex.build(make_ids(docs.shape[0]), docs, quantize=quantize)
    res = index.search(queries, k)
    for i in range(queries.shape[0]):   # one query alone takes its own top-k path
        single = index.search(queries[i], k)
        np.testing.assert_array_equal(single.rows[0], res.rows[i])
        np.testing.assert_array_equal(single.scores[0], res.scores[i])
    if quantize is None:
        rows, scores = brute_top_k(queries, docs, k)
        assert_same(res, rows, scores, make_ids(docs.shape[0]))
    else:  # ranked exactly by integer impacts, scored on the dequantised weights
        rows, scores = brute_top_k(queries, index.doc_vectors(), k, rank_docs=index.impacts())
        assert_same(res, rows, scores, make_ids(docs.shape[0]), exact=False)
        raw_rows, raw_scores = brute_top_k(queries, index.impacts(), k)
        assert_same(index.search(queries, k, raw_impacts=True), raw_rows, raw_scores)
