"""Data for the CTR models: atomic/parquet readers, label rule, negatives, splits, cache,
batch layout, and the Criteo-shaped generator."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from embedx.tables.data import ArrayDataset, FieldSpec, TableDataError, load_dataset, split_rows
from embedx.tables.data.atomic import read_atomic
from embedx.tables.data.criteo_synth import (CRITEO_KAGGLE_CARDINALITIES, CriteoSynthetic, CriteoSynthOptions,
                                             splitmix64, zipf_top_share)
from embedx.tables.data.movielens import FIELDS
from embedx.tables.data.negatives import sample_negatives
from embedx.tables.trainer import roc_auc

DATA = Path(os.environ.get("EMBEDX_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


# ---------------------------------------------------------------- small generated files
def write_ml100k(root: Path, ratings: list[tuple[str, str, float]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r}\t{880000000 + n}" for n, (u, i, r) in enumerate(ratings)]
    with gzip.open(root / "ml-100k.inter.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    (root / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n10\t24\tF\twriter\t85702\n")
    (root / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction Thriller\n"
        "3\tFour Rooms\t\tThriller\n")
    return root


ML100K_RATINGS = [("1", "1", 5), ("1", "2", 3), ("1", "3", 1), ("2", "1", 4), ("2", "2", 2),
                  ("2", "3", 3), ("10", "1", 1), ("10", "2", 4.0), ("10", "3", 5), ("1", "1", 2)]


def write_ml1m(root: Path, n_users: int = 30, n_items: int = 40, seed: int = 0) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for u in range(1, n_users + 1):
        k = int(rng.integers(3, 15))
        for i in rng.choice(np.arange(1, n_items + 1), size=k, replace=False):
            rows.append((str(u), str(i)))
    ratings = pd.DataFrame(rows, columns=["userID", "movieID"])
    ratings.to_parquet(root / "ratings.parquet")
    pd.DataFrame({"userID": np.arange(1, n_users + 1, dtype=np.int64),
                  "gender": rng.choice(["F", "M"], n_users), "age": rng.choice([1, 18, 25, 35], n_users).astype(np.int32),
                  "occupation": rng.integers(0, 21, n_users).astype(str),
                  "zipcode": [f"{z:05d}-1234" if z % 3 == 0 else f"{z:05d}" for z in rng.integers(0, 99999, n_users)]}
                 ).to_parquet(root / "users.parquet")
    genres = ["Action", "Comedy", "Drama", "Horror"]
    pd.DataFrame({"movieID": [str(i) for i in range(1, n_items + 1)],
                  "title": [f"Movie {i} ({1950 + i})" if i % 7 else f"Movie {i}" for i in range(1, n_items + 1)],
                  "genres": ["|".join(genres[: 1 + i % 4]) for i in range(1, n_items + 1)]}).to_parquet(root / "movies.parquet")
    return root, ratings


# ---------------------------------------------------------------- atomic files
def test_read_atomic_types_and_errors(tmp_path):
    p = tmp_path / "x.inter"
    p.write_text("user_id:token\trating:float\ttags:token_seq\n7\t4.5\ta b\n8\t\t\n")
    df = read_atomic(p)
    assert list(df.columns) == ["user_id", "rating", "tags"]
    assert df["user_id"].tolist() == ["7", "8"] and df["tags"].tolist() == ["a b", ""]
    assert df["rating"].iloc[0] == 4.5 and np.isnan(df["rating"].iloc[1])
    (tmp_path / "bad.inter").write_text("user_id\trating:float\n1\t2\n")
    with pytest.raises(TableDataError, match="name:type"):
        read_atomic(tmp_path / "bad.inter")
    (tmp_path / "bad2.inter").write_text("user_id:token\trating:float\n1\tfive\n")
    with pytest.raises(TableDataError, match="non-numeric"):
        read_atomic(tmp_path / "bad2.inter")
    with pytest.raises(TableDataError, match="no such file"):
        read_atomic(tmp_path / "missing.inter")


# ---------------------------------------------------------------- MovieLens 100K
def test_ml100k_label_rule_and_fields(tmp_path):
    root = write_ml100k(tmp_path / "ml", ML100K_RATINGS)
    s = load_dataset("ml100k", root=str(root), cache=False, split=[1.0, 0.0, 0.0])
    assert s.field_names == list(FIELDS)
    data = s.train.data
    # hand-applied rule: >= 4 -> 1, <= 2 -> 0, 3 dropped
    kept = [(u, i, int(r >= 4)) for u, i, r in ML100K_RATINGS if r != 3]
    assert len(data) == len(kept) == 8
    users = np.array(["1", "2", "10"])  # numeric order: 1, 2, 10
    items = np.array(["1", "2", "3"])
    got = {(users[row[0]], items[row[1]], int(lab)) for row, lab in zip(data.single, data.labels)}
    assert got == set(kept)
    cards = dict(zip(s.field_names, s.cardinalities))
    assert cards == {"user_id": 3, "item_id": 3, "age": 2, "gender": 2, "occupation": 3, "zip": 3,
                     "release_year": 2, "genres": 5}
    # genres multi-hot: item "1" has 3 genres, item "3" one; the item with missing year has its own id
    g = data.fields[-1]
    assert g.bag == 3
    by_item = {items[r[1]]: tuple(m[0]) for r, m in zip(data.single, data.multi)}
    assert sum(x >= 0 for x in by_item["1"]) == 3 and sum(x >= 0 for x in by_item["3"]) == 1
    year = {items[r[1]]: r[6] for r in data.single}
    assert year["1"] == year["2"] != year["3"]


def test_ml100k_zip_prefix(tmp_path):
    root = write_ml100k(tmp_path / "ml", ML100K_RATINGS)
    s = load_dataset("ml100k", root=str(root), cache=False, zip_prefix=3)
    assert dict(zip(s.field_names, s.cardinalities))["zip"] == 2  # 857.. and 940..


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(TableDataError, match="not found"):
        load_dataset("ml100k", root=str(tmp_path), cache=False)
    with pytest.raises(TableDataError, match="missing ratings.parquet"):
        load_dataset("ml1m", root=str(tmp_path), cache=False)
    with pytest.raises(TableDataError, match="unknown data set"):
        load_dataset("ml20m")
    with pytest.raises(TableDataError, match="no option"):
        load_dataset("ml100k", root=str(tmp_path), negatives=3)


# ---------------------------------------------------------------- MovieLens 1M and negatives
def test_ml1m_positives_negatives_and_fields(tmp_path):
    root, ratings = write_ml1m(tmp_path / "ml1m")
    s = load_dataset("ml1m", root=str(root), cache=False, neg_ratio=2.0, split=[1.0, 0.0, 0.0])
    data = s.train.data
    pos = data.labels == 1
    assert pos.sum() == len(ratings)
    u, i = data.single[:, 0].astype(np.int64), data.single[:, 1].astype(np.int64)
    n_items = dict(zip(s.field_names, s.cardinalities))["item_id"]
    assert n_items == ratings["movieID"].nunique()
    pos_pairs = set(zip(u[pos], i[pos]))
    neg_pairs = list(zip(u[~pos], i[~pos]))
    assert not pos_pairs & set(neg_pairs) and len(set(neg_pairs)) == len(neg_pairs)
    # 2 negatives per positive, per user, unless the user's complement is smaller
    for user in np.unique(u):
        n_pos = int((pos & (u == user)).sum())
        assert int((~pos & (u == user)).sum()) == min(2 * n_pos, n_items - n_pos)
    cards = dict(zip(s.field_names, s.cardinalities))
    watched = {int(m) for m in ratings["movieID"]}
    assert cards["genres"] == len({g for m in watched for g in ["Action", "Comedy", "Drama", "Horror"][: 1 + m % 4]})
    assert cards["age"] == pd.read_parquet(root / "users.parquet")["age"].nunique()
    # years parsed from titles; titles without a year share one "missing" id
    assert cards["release_year"] == len({1950 + m for m in watched if m % 7}) + any(m % 7 == 0 for m in watched)


def test_ml1m_negatives_are_deterministic(tmp_path):
    root, _ = write_ml1m(tmp_path / "ml1m")
    a = load_dataset("ml1m", root=str(root), cache=False).train
    b = load_dataset("ml1m", root=str(root), cache=False).train
    c = load_dataset("ml1m", root=str(root), cache=False, seed=1).train
    assert np.array_equal(a.data.single, b.data.single) and np.array_equal(a.rows, b.rows)
    assert not np.array_equal(a.data.single, c.data.single)


def test_sample_negatives_against_brute_force():
    rng = np.random.default_rng(3)
    n_users, n_items = 600, 50
    users = np.repeat(np.arange(n_users), rng.integers(0, 40, n_users))
    items = np.concatenate([rng.choice(n_items, size=(users == u).sum(), replace=False) for u in range(n_users)])
    nu, ni = sample_negatives(users, items, n_users, n_items, ratio=1.0, seed=5)
    positives = set(zip(users.tolist(), items.tolist()))
    neg = list(zip(nu.tolist(), ni.tolist()))
    assert not positives & set(neg)
    assert len(set(neg)) == len(neg)
    n_pos = np.bincount(users, minlength=n_users)
    assert np.array_equal(np.bincount(nu, minlength=n_users), np.minimum(n_pos, n_items - n_pos))
    nu2, ni2 = sample_negatives(users, items, n_users, n_items, ratio=1.0, seed=5)
    assert np.array_equal(nu, nu2) and np.array_equal(ni, ni2)
    assert not np.array_equal(ni, sample_negatives(users, items, n_users, n_items, 1.0, seed=6)[1])


def test_sample_negatives_is_uniform_over_the_complement():
    users = np.zeros(5, np.int64)
    items = np.array([0, 3, 6, 9, 12])
    counts = np.zeros(20)
    for seed in range(1500):
        _, ni = sample_negatives(users, items, 1, 20, ratio=1.0, seed=seed)
        counts[ni] += 1
    assert counts[items].sum() == 0
    free = np.delete(counts, items)
    # each of the 15 free items is drawn with probability 5/15: mean 500, sd ~18
    assert np.all(np.abs(free - 500) < 90), free


def test_sample_negatives_bad_input():
    with pytest.raises(TableDataError):
        sample_negatives(np.array([0]), np.array([5]), 1, 3, 1.0, 0)
    with pytest.raises(TableDataError):
        sample_negatives(np.array([0]), np.array([1]), 1, 3, -1.0, 0)


# ---------------------------------------------------------------- splits, cache, batches
def test_split_rows_disjoint_fixed_and_sized():
    tr, va, te = split_rows(1000, [0.8, 0.1, 0.1], seed=4)
    assert (len(tr), len(va), len(te)) == (800, 100, 100)
    allr = np.concatenate([tr, va, te])
    assert len(np.unique(allr)) == 1000 and allr.min() == 0 and allr.max() == 999
    again = split_rows(1000, [0.8, 0.1, 0.1], seed=4)
    assert all(np.array_equal(x, y) for x, y in zip((tr, va, te), again))
    assert not np.array_equal(tr, split_rows(1000, [0.8, 0.1, 0.1], seed=5)[0])
    for bad in ([0.5, 0.5], [0.8, 0.3, -0.1], [0.5, 0.2, 0.2]):
        with pytest.raises(TableDataError):
            split_rows(10, bad, 0)


def test_cache_roundtrip_and_keying(tmp_path):
    root, _ = write_ml1m(tmp_path / "ml1m")
    cache = tmp_path / "cache"
    a = load_dataset("ml1m", root=str(root), cache_dir=str(cache))
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 1 and not any(p.startswith(".") for p in folders)
    b = load_dataset("ml1m", root=str(root), cache_dir=str(cache))
    assert np.array_equal(a.train.data.single, b.train.data.single)
    assert np.array_equal(a.val.rows, b.val.rows) and a.info == b.info
    load_dataset("ml1m", root=str(root), cache_dir=str(cache), neg_ratio=2.0)
    assert len(list(cache.iterdir())) == 2


def test_batch_layout_and_field_selection():
    fields = [FieldSpec("a", 5), FieldSpec("g", 4, bag=3), FieldSpec("b", 7)]
    single = np.array([[1, 6], [4, 0]], np.int32)
    multi = np.array([[[0, 2, -1]], [[3, -1, -1]]], np.int32)
    data = ArrayDataset(fields, single, multi, np.array([1, 0], np.uint8))
    batch = data.batch(np.array([1, 0]))
    assert batch.ids.dtype == torch.int64 and batch.ids.shape == (2, 3, 3)
    assert batch.ids[0].tolist() == [[4, -1, -1], [3, -1, -1], [0, -1, -1]]
    assert batch.ids[1].tolist() == [[1, -1, -1], [0, 2, -1], [6, -1, -1]]
    assert batch.labels.tolist() == [0.0, 1.0] and batch.dense is None
    flat = data.select(["b", "a"]).batch(np.array([0, 1]))
    assert flat.ids.shape == (2, 2) and flat.ids.tolist() == [[6, 1], [0, 4]]
    with pytest.raises(TableDataError, match="unknown field"):
        data.select(["a", "zzz"])
    with pytest.raises(TableDataError):
        ArrayDataset(fields, single.astype(np.int64), multi, np.array([1, 0], np.uint8))
    bad = ArrayDataset(fields, np.array([[5, 0], [0, 0]], np.int32), multi, np.array([1, 0], np.uint8))
    with pytest.raises(TableDataError, match="outside"):
        bad.validate()


def test_shuffled_batches_depend_only_on_seed_and_epoch(tmp_path):
    root = write_ml100k(tmp_path / "ml", ML100K_RATINGS)
    s = load_dataset("ml100k", root=str(root), cache=False, split=[1.0, 0.0, 0.0])
    order = lambda **kw: torch.cat([b.ids[:, 0, 0] * 10 + b.ids[:, 1, 0] for b in s.train.batches(3, **kw)]).tolist()
    assert order(shuffle=True, seed=1, epoch=2) == order(shuffle=True, seed=1, epoch=2)
    assert sorted(order(shuffle=True, seed=1, epoch=2)) == sorted(order())
    assert len(order()) == 8


# ---------------------------------------------------------------- real files (skip when absent)
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "movielens" / "ml-100k" / "ml-100k.inter.gz").exists(), reason="ML-100K not present")
def test_real_ml100k_counts(real_cache):
    s = load_dataset("ml100k", root=str(DATA / "movielens" / "ml-100k"), cache_dir=real_cache)
    assert s.info["ratings"] == 100_000
    assert s.info["dropped_neutral"] == 27_145 and sum(s.info["rows"].values()) == 72_855
    cards = dict(zip(s.field_names, s.cardinalities))
    assert cards["user_id"] == 943 and cards["item_id"] == 1682 and cards["genres"] == 19


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "movielens" / "ml-1m" / "ratings.parquet").exists(), reason="ML-1M not present")
def test_real_ml1m_counts(real_cache):
    s = load_dataset("ml1m", root=str(DATA / "movielens" / "ml-1m"), cache_dir=real_cache)
    assert s.info["interactions"] == 1_000_209
    cards = dict(zip(s.field_names, s.cardinalities))
    assert cards["user_id"] == 6_040 and cards["item_id"] == 3_706
    assert sum(s.info["rows"].values()) == 1_000_209 + s.info["negatives"]
    assert 0.99 * 1_000_209 < s.info["negatives"] <= 1_000_209  # capped only for heavy users
    assert abs(s.info["positive_rate"]["test"] - 0.5) < 0.01


# ---------------------------------------------------------------- Criteo-shaped generator
def small_gen(**kw) -> CriteoSynthetic:
    opts = dict(cardinalities=[1000, 50, 7, 100_000], chunk_rows=4096, calibration_rows=8192)
    opts.update(kw)
    return CriteoSynthetic(CriteoSynthOptions(**opts))


def test_splitmix64_known_values():
    # splitmix64 state 0 -> first output of the reference generator (Vigna), state 1 -> second
    assert int(splitmix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF
    assert int(splitmix64(np.array([0x9E3779B97F4A7C15], np.uint64))[0]) == 0x6E789E6AA1B965F4


def test_criteo_defaults_and_cardinalities():
    gen = CriteoSynthetic(CriteoSynthOptions(chunk_rows=2048, calibration_rows=2048, num_dense=13))
    assert len(gen.fields) == 26 and [f.cardinality for f in gen.fields] == list(CRITEO_KAGGLE_CARDINALITIES)
    assert max(CRITEO_KAGGLE_CARDINALITIES) == 10_131_227 and sum(CRITEO_KAGGLE_CARDINALITIES) == 33_762_577
    ids, dense, labels, _ = gen.chunk(0, 0)
    assert ids.dtype == np.int32 and ids.shape == (2048, 26)
    assert (ids >= 0).all() and (ids < np.array(CRITEO_KAGGLE_CARDINALITIES)).all()
    assert dense.shape == (2048, 13) and dense.dtype == np.float32 and (dense >= 0).all()
    capped = CriteoSynthetic(CriteoSynthOptions(max_cardinality=1000, chunk_rows=512, calibration_rows=512))
    assert max(f.cardinality for f in capped.fields) == 1000


def test_criteo_deterministic_and_batch_size_independent():
    a, b = small_gen(seed=3), small_gen(seed=3)
    rows = 10_000
    x = torch.cat([bt.ids for bt in a.stream("train", rows).batches(777)])
    y = torch.cat([bt.ids for bt in b.stream("train", rows).batches(4096)])
    assert x.shape == (rows, 4) and torch.equal(x, y)
    labels = torch.cat([bt.labels for bt in a.stream("train", rows).batches(1000)])
    assert torch.equal(labels, torch.cat([bt.labels for bt in b.stream("train", rows).batches(333)]))
    # a prefix is the same whatever the length; streams and seeds differ
    assert torch.equal(next(a.stream("train", 50).batches(50)).ids, x[:50])
    assert not torch.equal(next(a.stream("val", 50).batches(50)).ids, x[:50])
    assert not torch.equal(next(small_gen(seed=4).stream("train", 50).batches(50)).ids, x[:50])


def test_criteo_zipf_skew_matches_the_power_law():
    gen = small_gen(zipf=1.1)
    ids = np.concatenate([c[0] for c in gen.stream("train", 40_000).arrays()])
    col = ids[:, 3]  # cardinality 100,000
    counts = np.sort(np.bincount(col, minlength=100_000))[::-1]
    share = counts[:100].sum() / len(col)
    expected = zipf_top_share(100_000, 1.1, 100)
    assert abs(share - expected) < 0.02, (share, expected)
    assert share > 0.4  # heavily skewed: 0.1% of the ids get > 40% of the draws
    uniform = small_gen(zipf=0.0)
    ids_u = np.concatenate([c[0] for c in uniform.stream("train", 40_000).arrays()])[:, 1]
    assert np.bincount(ids_u, minlength=50).min() > 600  # flat: 800 expected per id
    # the most popular id is not simply id 0 (ranks are permuted)
    assert int(np.argmax(np.bincount(col))) != 0


def test_criteo_label_rate_and_signal():
    gen = small_gen(target_ctr=0.25, num_dense=3)
    parts = list(gen.stream("test", 30_000).arrays(with_probabilities=True))
    labels = np.concatenate([p[2] for p in parts])
    p = np.concatenate([p[3] for p in parts])
    assert abs(labels.mean() - 0.25) < 0.015
    assert 0.68 < roc_auc(labels, p) < 0.95  # the hidden model is informative, not trivial
    assert abs(small_gen(target_ctr=0.05).bias - gen.bias) > 0.5


def test_criteo_is_memory_light():
    import tracemalloc

    tracemalloc.start()
    gen = CriteoSynthetic(CriteoSynthOptions(chunk_rows=1024, calibration_rows=1024))
    next(gen.stream("train", 1024).batches(1024))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing sized by the 33.8M ids


def test_criteo_bad_options():
    for kw in (dict(cardinalities=[0, 3]), dict(zipf=-1.0), dict(target_ctr=1.0), dict(max_cardinality=0)):
        with pytest.raises(TableDataError):
            small_gen(**kw)
