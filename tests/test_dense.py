"""DenseIndex against an independent brute force (numpy float64 products and a full sort),
plus persistence, memory mapping, per-call search parameters and every kind of bad input."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexing.dense import INDEX_FILE, SETTINGS_FILE, DenseIndex, ReadOnlyIndexError
from indexing.errors import BundleError, FormatVersionError, InvalidInputError
from indexing.ids import IDS_FILE

D = 16


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """On a small shared machine FAISS's OpenMP threads spin against each other: 10-20x slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def rand(n, d=D, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def clustered(n, nq=0, d=32, n_clusters=20, seed=0):
    """Docs (and queries from the same distribution): clusters on an 8-dim subspace plus a
    little noise, so graph and IVF indexes reach high recall, as on real embeddings."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, d))
    centres = 4 * rng.standard_normal((n_clusters, 8))
    latent = centres[rng.integers(0, n_clusters, n + nq)] + rng.standard_normal((n + nq, 8))
    x = (latent @ basis + 0.1 * rng.standard_normal((n + nq, d))).astype(np.float32)
    return (x[:n], x[n:]) if nq else x


def noisy(n, nq, d=32, seed=0):
    """Clusters with full-rank noise: hard for a sparse HNSW graph at a small efSearch."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((20, d))
    x = (centres[rng.integers(0, 20, n + nq)] + rng.standard_normal((n + nq, d))).astype(np.float32)
    return x[:n], x[n:]


def ids_for(n, start=0):
    return [f"doc-{i}" for i in range(start, start + n)]


def brute(queries, docs, k, metric):
    """Rows and scores of the top k by float64 numpy; higher is better."""
    q, x = queries.astype(np.float64), docs.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "l2":
        s = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        s = q @ x.T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(s, rows, axis=1)


def build(factory="Flat", metric="ip", n=300, d=D, seed=0, data=None):
    x = rand(n, d, seed) if data is None else data
    idx = DenseIndex(x.shape[1], factory, metric)
    idx.add(ids_for(len(x)), x)
    return idx, x


def recall(found_rows, true_rows):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found_rows.tolist(), true_rows.tolist())])


# ---------------------------------------------------------------- exact search
@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_flat_equals_brute_force(metric):
    idx, x = build("Flat", metric)
    q = rand(25, seed=1)
    res = idx.search(q, 10)
    rows, scores = brute(q, x, 10, metric)
    np.testing.assert_array_equal(res.rows, rows)
    np.testing.assert_array_equal(res.ids, np.array(ids_for(300))[rows])
    np.testing.assert_allclose(res.scores, scores, rtol=1e-4, atol=1e-4)
    assert res.rows.dtype == np.int64 and res.scores.dtype == np.float32


def test_l2_scores_are_negative_squared_distances_by_hand():
    idx = DenseIndex(2, "Flat", "l2")
    idx.add(["a", "b", "c"], np.array([[0, 0], [1, 0], [0, 2]], dtype=np.float32))
    res = idx.search(np.array([1, 0.5], dtype=np.float32), 3)
    assert res.hits(0) == [("b", -0.25), ("a", -1.25), ("c", -3.25)]


def test_cosine_by_hand_and_input_left_untouched():
    docs = np.array([[3, 4], [1, 0], [0, -2]], dtype=np.float32)
    before = docs.copy()
    idx = DenseIndex(2, "Flat", "cosine")
    idx.add(["a", "b", "c"], docs)
    q = np.array([[2, 0]], dtype=np.float32)
    res = idx.search(q, 3)
    np.testing.assert_array_equal(docs, before)
    np.testing.assert_array_equal(q, [[2, 0]])
    assert res.ids[0].tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(res.scores[0], [1.0, 0.6, 0.0], atol=1e-6)


def test_single_query_and_input_layouts_agree():
    idx, _ = build()
    q = rand(8, seed=2)
    batch = idx.search(q, 5)
    single = idx.search(q[3], 5)
    assert single.rows.shape == (1, 5)
    np.testing.assert_array_equal(single.rows[0], batch.rows[3])
    np.testing.assert_array_equal(single.scores[0], batch.scores[3])
    # the same float32 values in other layouts and types take the slow path: same answers
    for variant in (q.astype(np.float64), np.asfortranarray(q), q.tolist(), np.repeat(q, 2, axis=0)[::2]):
        other = idx.search(variant, 5)
        np.testing.assert_array_equal(other.rows, batch.rows)
        np.testing.assert_array_equal(other.scores, batch.scores)


def test_huge_but_finite_queries_pass_the_finite_check():
    """Their squares overflow float32: the fast check must fall back to the exact one."""
    idx, x = build("Flat", "l2")
    q = np.full((1, D), 1e20, dtype=np.float32)
    assert idx.search(q, 3).rows.shape == (1, 3)
    assert idx.search(q[0], 3).rows.shape == (1, 3)


# ---------------------------------------------------------------- approximate search
def test_hnsw_and_ivf_recall_against_brute_force():
    x, q = clustered(2000, 50)
    true_rows, _ = brute(q, x, 10, "l2")
    for factory, params, floor in [("HNSW32", {}, 0.97), ("HNSW32,Flat", {"efSearch": 64}, 0.98),
                                   ("IVF32,Flat", {"nprobe": 8}, 0.97), ("IVF32,SQ8", {"nprobe": 8}, 0.95),
                                   ("IVF16,PQ8np", {"nprobe": 8}, 0.7)]:
        idx, _ = build(factory, "l2", data=x)
        res = idx.search(q, 10, **params)
        assert recall(res.rows, true_rows) >= floor, factory
        np.testing.assert_array_equal(res.ids, np.array(ids_for(2000))[res.rows])


def test_nprobe_is_per_call_and_exhaustive_nprobe_is_exact():
    x, q = clustered(1500, 40)
    idx, _ = build("IVF32,Flat", "l2", data=x)
    true_rows, true_scores = brute(q, x, 10, "l2")
    default = idx.search(q, 10)
    full = idx.search(q, 10, nprobe=32)
    np.testing.assert_array_equal(full.rows, true_rows)
    np.testing.assert_allclose(full.scores, true_scores, rtol=1e-4, atol=1e-3)
    assert recall(default.rows, true_rows) < 1.0  # nprobe=1 misses some: the parameter mattered
    assert idx.index.nprobe == 1  # nothing leaked into the index
    np.testing.assert_array_equal(idx.search(q, 10).rows, default.rows)


def test_efsearch_is_per_call():
    x, q = noisy(2000, 50)
    idx, _ = build("HNSW8", "l2", data=x)
    true_rows, _ = brute(q, x, 10, "l2")
    low = recall(idx.search(q, 10, efSearch=10).rows, true_rows)
    high = recall(idx.search(q, 10, efSearch=400).rows, true_rows)
    assert high >= 0.99 and high > low
    assert idx.index.hnsw.efSearch == 16


def test_concurrent_searches_with_different_params_do_not_interfere():
    x, q = noisy(1500, 30)
    idx, _ = build("IVF32,Flat", "l2", data=x)
    expected = {p: idx.search(q, 10, nprobe=p).rows for p in (1, 4, 32)}
    jobs = [1, 4, 32] * 20
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: (p, idx.search(q, 10, nprobe=p).rows), jobs))
    for p, rows in got:
        np.testing.assert_array_equal(rows, expected[p])


def test_params_reach_nested_indexes():
    x, q = clustered(1500, 20)
    true_rows, _ = brute(q, x, 5, "l2")
    ivf_hnsw, _ = build("IVF32_HNSW16,Flat", "l2", data=x)
    res = ivf_hnsw.search(q, 5, nprobe=32, efSearch=64)
    np.testing.assert_array_equal(res.rows, true_rows)
    refined, _ = build("IVF16,PQ8np,RFlat", "l2", data=x)
    res = refined.search(q, 5, nprobe=16, k_factor=50.0)
    np.testing.assert_array_equal(res.rows, true_rows)  # exact re-ranking of a wide candidate list
    pre, _ = build("PCA16,IVF16,Flat", "l2", data=x)
    assert pre.search(q, 5, nprobe=16).rows.shape == (20, 5)


@pytest.mark.parametrize("factory,params,message", [
    ("Flat", {"nprobe": 4}, "accepts none"),
    ("HNSW32", {"nprobe": 4}, "efSearch"),
    ("IVF8,Flat", {"efsearch": 4}, "nprobe"),
    ("IVF8,Flat", {"nprobe": 0}, ">= 1"),
    ("IVF8,Flat", {"nprobe": "4"}, "integer"),
    ("IVF8,Flat", {"nprobe": True}, "integer"),
    ("IVF8,Flat", {"nprobe": 2.5}, "integer"),
    ("HNSW32", {"efSearch": -1}, ">= 1"),
    ("HNSW32", {"bounded_queue": 1}, "True or False"),
    ("IVF8,Flat", {"nprobe": [1]}, "plain numbers"),
])
def test_bad_search_params(factory, params, message):
    idx, _ = build(factory, "l2", n=400)
    with pytest.raises(InvalidInputError, match=message):
        idx.search(rand(2, seed=1), 3, **params)


# ---------------------------------------------------------------- padding
def test_k_larger_than_count_pads():
    idx, x = build("Flat", "ip", n=4)
    q = rand(3, seed=1)
    res = idx.search(q, 7)
    rows, scores = brute(q, x, 4, "ip")
    np.testing.assert_array_equal(res.rows[:, :4], rows)
    np.testing.assert_allclose(res.scores[:, :4], scores, rtol=1e-5, atol=1e-5)
    assert (res.rows[:, 4:] == -1).all() and (res.ids[:, 4:] == "").all()
    assert np.isneginf(res.scores[:, 4:]).all()
    assert [h for h, _ in res.hits(0)] == np.array(ids_for(4))[rows[0]].tolist()


def test_empty_index_returns_only_padding():
    for factory in ("Flat", "HNSW32"):
        res = DenseIndex(D, factory).search(rand(2), 3)
        assert (res.rows == -1).all() and (res.ids == "").all() and np.isneginf(res.scores).all()


def test_ivf_misses_are_padding_not_wrong_ids():
    x = clustered(600)
    idx, _ = build("IVF64,Flat", "l2", data=x)
    res = idx.search(x[:20], 200)  # one list holds far fewer than 200 vectors
    missing = res.rows < 0
    assert missing.any()
    assert (res.ids[missing] == "").all() and np.isneginf(res.scores[missing]).all()
    assert (res.ids[~missing] == np.array(ids_for(600))[res.rows[~missing]]).all()


def test_minus_one_rows_anywhere_become_padding():
    """Whatever FAISS returns, a -1 row never turns into the last id (seen with IVF fast-scan)."""
    idx, _ = build("Flat", "ip", n=50)

    class Fake:
        def search_c(self, n, x, k, distances, labels, params):
            faiss.rev_swig_ptr(distances, n * k)[:] = np.arange(n * k, 0, -1)
            out = faiss.rev_swig_ptr(labels, n * k)
            out[:] = np.arange(n * k) % 50
            out[1] = -1  # a hole in the middle, with an ordinary score

    idx.index = Fake()
    res = idx.search(rand(2, seed=1), 4)
    assert res.rows[0, 1] == -1 and res.ids[0, 1] == "" and np.isneginf(res.scores[0, 1])
    assert res.ids[0, 0] == "doc-0" and res.ids[1].tolist() == ["doc-4", "doc-5", "doc-6", "doc-7"]


# ---------------------------------------------------------------- building
def test_incremental_add_equals_one_shot():
    x = rand(300)
    q = rand(10, seed=1)
    whole = DenseIndex(D, "Flat", "l2")
    whole.add(ids_for(300), x)
    parts = DenseIndex(D, "Flat", "l2")
    for lo, hi in [(0, 100), (100, 101), (101, 300)]:
        parts.add(ids_for(hi - lo, lo), x[lo:hi])
    assert len(parts) == 300 and parts.manifest_fields()["count"] == 300
    a, b = whole.search(q, 10), parts.search(q, 10)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_ivf_trains_on_first_batch_then_adds_more():
    x = clustered(1200)
    idx = DenseIndex(32, "IVF16,Flat", "l2")
    idx.add(ids_for(800), x[:800])
    assert idx.index.is_trained
    idx.add(ids_for(400, 800), x[800:])
    res = idx.search(x[1000:1010], 1, nprobe=16)
    assert res.ids[:, 0].tolist() == ids_for(10, 1000)


def test_explicit_train_then_add_and_train_rules():
    x = clustered(1000)
    idx = DenseIndex(32, "IVF16,PQ8np", "ip")
    idx.train(x)
    assert idx.index.is_trained and len(idx) == 0
    with pytest.raises(InvalidInputError, match="already trained"):
        idx.train(x)
    idx.add(ids_for(1000), x)
    assert len(idx) == 1000
    flat = DenseIndex(32, "Flat")
    flat.train(x)  # nothing to train: a no-op
    assert len(flat) == 0


@pytest.mark.parametrize("factory,n,need", [("IVF256,Flat", 100, 256), ("PQ4", 100, 256), ("IVF8,PQ4x4", 10, 16),
                                            ("HNSW16,PQ4", 100, 256)])
def test_too_few_vectors_to_train(factory, n, need):
    x = rand(n)
    with pytest.raises(InvalidInputError, match=f"needs at least {need} training vectors, got {n}"):
        DenseIndex(D, factory, "l2").add(ids_for(n), x)
    with pytest.raises(InvalidInputError, match=f"at least {need}"):
        DenseIndex(D, factory, "l2").train(x)


def test_other_training_failures_are_clear_errors():
    with pytest.raises(InvalidInputError, match="training 'PCA32,Flat'") as e:
        DenseIndex(D, "PCA32,Flat").add(ids_for(100), rand(100))
    assert not isinstance(e.value, RuntimeError)


def test_duplicate_ids_are_refused_and_nothing_changes():
    idx, x = build(n=10)
    with pytest.raises(InvalidInputError, match="unique"):
        idx.add(["x", "y", "x"], rand(3, seed=1))
    with pytest.raises(InvalidInputError, match="already in the index"):
        idx.add(["new", "doc-3"], rand(2, seed=1))
    assert len(idx) == 10 and idx.index.ntotal == 10
    idx.add(["new"], rand(1, seed=1))
    assert len(idx) == 11 and idx.ids.array[-1] == "new"


@pytest.mark.parametrize("ids,message", [(["a", "b"], "2 ids for 3"), (["a", "", "c"], "non-empty"),
                                         (["a", 2, "c"], "non-empty string")])
def test_bad_ids(ids, message):
    idx = DenseIndex(D)
    with pytest.raises(InvalidInputError, match=message):
        idx.add(ids, rand(3))
    assert len(idx) == 0


# ---------------------------------------------------------------- bad input
BAD_VECTORS = [
    (np.zeros((3, D + 1), np.float32), "dimension"),
    (np.zeros((3, D, 2), np.float32), "shape"),
    (np.array([["a"] * D] * 3), "numeric"),
    (np.array([[object()] * D] * 3), "numeric"),
    (np.zeros((3, D), np.complex64), "numeric"),
    (np.zeros((0, D), np.float32), "empty"),
]


@pytest.mark.parametrize("vectors,message", BAD_VECTORS)
def test_bad_vectors_on_add(vectors, message):
    idx = DenseIndex(D)
    with pytest.raises(InvalidInputError, match=message):
        idx.add(ids_for(len(vectors)), vectors)
    assert len(idx) == 0


@pytest.mark.parametrize("queries,message", BAD_VECTORS + [(np.zeros(D + 1, np.float32), "dimension"),
                                                           (np.float32(1.0), "shape"), ("text", "numeric")])
def test_bad_queries(queries, message):
    idx, _ = build(n=20)
    with pytest.raises(InvalidInputError, match=message):
        idx.search(queries, 3)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_vectors_and_queries(value, dtype):
    bad = rand(4).astype(dtype)
    bad[2, 5] = value
    idx = DenseIndex(D)
    with pytest.raises(InvalidInputError, match="NaN or infinite.*row: 2"):
        idx.add(ids_for(4), bad)
    idx.add(ids_for(4), rand(4))
    with pytest.raises(InvalidInputError, match="NaN or infinite.*row: 2"):
        idx.search(bad, 2)
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        idx.search(bad[2], 2)
    for factory in ("HNSW32", "IVF2,Flat"):
        approx, _ = build(factory, n=50)
        with pytest.raises(InvalidInputError, match="NaN or infinite"):
            approx.search(bad, 2)


def test_cosine_refuses_zero_vectors():
    idx = DenseIndex(D, metric="cosine")
    x = rand(3)
    x[1] = 0
    with pytest.raises(InvalidInputError, match="row 1 is all zeros"):
        idx.add(ids_for(3), x)
    idx.add(ids_for(3), rand(3))
    with pytest.raises(InvalidInputError, match="all zeros"):
        idx.search(np.zeros(D, np.float32), 1)


@pytest.mark.parametrize("k", [0, -3, 1.5, 2.0, "3", None, True])
def test_bad_k(k):
    idx, _ = build(n=20)
    with pytest.raises(InvalidInputError, match="k must be a positive integer"):
        idx.search(rand(2), k)


def test_numpy_integer_k():
    idx, _ = build(n=20)
    assert idx.search(rand(2), np.int64(3)).rows.shape == (2, 3)


@pytest.mark.parametrize("args,message", [
    ((D, "Flat", "cos"), "unknown metric 'cos'"),
    ((D, "Flat", "IP"), "unknown metric"),
    ((D, "Flatt"), "could not parse index string Flatt"),
    ((D, "IVF,Flat"), "could not parse"),
    ((D, ""), "non-empty"),
    ((D, None), "non-empty"),
    ((15, "PQ4"), "multiple"),
    ((D, "IDMap,Flat"), "IDMap"),
    ((D, "HNSW0"), "HNSW M must be >= 2"),
    ((D, "HNSW1"), "HNSW M must be >= 2"),
    ((D, "IVF0,Flat"), "IVF list count must be >= 1"),
    ((D, "HNSW32_PQ4"), "does not support metric 'ip'"),
    ((D, "LSH"), "bad FAISS factory string"),
    ((0,), "dim must be a positive integer"),
    ((-4,), "dim must be a positive integer"),
    ((True,), "dim must be a positive integer"),
    ((16.0,), "dim must be a positive integer"),
])
def test_bad_construction(args, message):
    with pytest.raises(InvalidInputError, match=message) as e:
        DenseIndex(*args)
    assert not isinstance(e.value, RuntimeError)


# ---------------------------------------------------------------- persistence
ROUNDTRIP = ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ8np", "PQ8np", "HNSW16,SQ8", "OPQ8,IVF16,PQ8np"]


@pytest.mark.parametrize("factory", ROUNDTRIP)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_save_load_roundtrip(tmp_path, factory, metric):
    x, q = clustered(600, 15)
    idx, _ = build(factory, metric, data=x)
    params = {"nprobe": 4} if "IVF" in factory else {}
    before = idx.search(q, 10, **params)
    assert sorted(idx.save(tmp_path)) == sorted([INDEX_FILE, IDS_FILE, SETTINGS_FILE])
    assert sorted(os.listdir(tmp_path)) == sorted([INDEX_FILE, IDS_FILE, SETTINGS_FILE])  # no temp files
    for mmap in (True, False):
        loaded = DenseIndex.load(tmp_path, mmap=mmap)
        assert loaded.manifest_fields() == idx.manifest_fields()
        assert len(loaded) == 600 and loaded.read_only is mmap
        after = loaded.search(q, 10, **params)
        np.testing.assert_array_equal(after.rows, before.rows)
        np.testing.assert_array_equal(after.scores, before.scores)
        np.testing.assert_array_equal(after.ids, before.ids)
        assert type(after.ids) is np.ndarray


def test_manifest_fields_and_settings_file(tmp_path):
    idx, _ = build("HNSW16", "cosine", n=30)
    fields = {"kind": "dense", "metric": "cosine", "dimension": D, "count": 30, "factory": "HNSW16"}
    assert idx.manifest_fields() == fields
    idx.save(tmp_path)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert {k: settings[k] for k in fields} == fields and settings["format_version"] == 1


def test_mmap_load_really_maps_and_is_read_only(tmp_path):
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc")
    idx, x = build("Flat", n=200)
    idx.save(tmp_path)
    target = str((tmp_path / INDEX_FILE).resolve())

    def mapped():
        return target in Path("/proc/self/maps").read_text()

    plain = DenseIndex.load(tmp_path, mmap=False)
    assert not mapped()
    mm = DenseIndex.load(tmp_path, mmap=True)
    assert mapped()
    with pytest.raises(ReadOnlyIndexError, match="mmap=False"):
        mm.add(["new"], rand(1, seed=1))
    with pytest.raises(ReadOnlyIndexError):
        mm.train(rand(5))
    assert len(mm) == 200
    plain.add(["new"], rand(1, seed=1))
    assert len(plain) == 201
    del mm


def test_saving_over_a_mapped_index_keeps_it_valid(tmp_path):
    idx, x = build("HNSW16", n=200)
    idx.save(tmp_path)
    mm = DenseIndex.load(tmp_path)
    before = mm.search(x[:5], 5)
    bigger = DenseIndex.load(tmp_path, mmap=False)
    bigger.add(ids_for(300, 200), rand(300, seed=3))
    bigger.save(tmp_path)  # renames over the mapped files
    after = mm.search(x[:5], 5)
    np.testing.assert_array_equal(after.rows, before.rows)
    np.testing.assert_array_equal(after.ids, before.ids)
    assert len(DenseIndex.load(tmp_path)) == 500
    mm.save(tmp_path / "..")  # a mapped index can itself be saved
    assert len(DenseIndex.load(tmp_path / "..", mmap=False)) == 200


def test_save_needs_an_existing_directory(tmp_path):
    idx, _ = build(n=5)
    with pytest.raises(InvalidInputError, match="not an existing directory"):
        idx.save(tmp_path / "missing")


def _saved(tmp_path):
    idx, _ = build(n=20)
    idx.save(tmp_path)
    return tmp_path


def _edit_settings(path, **changes):
    s = json.loads((path / SETTINGS_FILE).read_text())
    s.update(changes)
    (path / SETTINGS_FILE).write_text(json.dumps(s))


@pytest.mark.parametrize("changes,error,message", [
    ({"format_version": 99}, FormatVersionError, "newer"),
    ({"format_version": "1"}, BundleError, "format_version"),
    ({"kind": "sparse"}, BundleError, "kind"),
    ({"metric": "hamming"}, BundleError, "unknown metric"),
    ({"count": 21}, BundleError, "holds 20 vectors"),
    ({"dimension": 8}, BundleError, "dim 16"),
    ({"metric": "l2"}, BundleError, "metric"),
    ({"factory": 3}, BundleError, "factory"),
])
def test_bad_settings_are_refused(tmp_path, changes, error, message):
    path = _saved(tmp_path)
    _edit_settings(path, **changes)
    with pytest.raises(error, match=message):
        DenseIndex.load(path)


@pytest.mark.parametrize("name", [INDEX_FILE, IDS_FILE, SETTINGS_FILE])
def test_missing_files_are_refused(tmp_path, name):
    path = _saved(tmp_path)
    (path / name).unlink()
    with pytest.raises(BundleError, match="missing"):
        DenseIndex.load(path)


def test_corrupt_files_are_refused(tmp_path):
    path = _saved(tmp_path)
    (path / SETTINGS_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        DenseIndex.load(path)
    path = _saved(tmp_path)
    (path / INDEX_FILE).write_bytes(b"garbage" * 10)
    for mmap in (True, False):
        with pytest.raises(BundleError, match="not a readable FAISS index"):
            DenseIndex.load(path, mmap=mmap)
    path = _saved(tmp_path)
    np.save(path / IDS_FILE, np.arange(20))
    with pytest.raises(BundleError, match="unicode"):
        DenseIndex.load(path)


def test_bundle_roundtrip(tmp_path):
    from indexing.bundle import load_bundle, write_bundle

    idx, x = build("HNSW16", "cosine", n=50)
    write_bundle(tmp_path / "b", idx, {"doc-3": {"title": "three"}})
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest["dimension"] == D and bundle.manifest["metric"] == "cosine"
    res = bundle.search(x[3], 1, efSearch=32)
    assert res.ids[0, 0] == "doc-3"
