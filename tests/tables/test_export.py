"""The torch-free serving form: export == torch for every method, the on-disk format, and the
numpy TableStore's input checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from embedx.tables.base import Budget
from embedx.tables.export import ExportedTable
from embedx.tables.methods import METHODS
from indexing.errors import BundleError, ChecksumMismatchError, FormatVersionError, InvalidInputError
from indexing.table_store import MANIFEST, TableStore

from .test_methods import CARDS, CASES, DIM, IDS, random_ids

# methods whose serving lookup is pure gathers and elementwise ops: numpy must match exactly
EXACT = {"full", "hash", "hash_shared", "qr", "unified", "robe", "int8", "int16", "alpt"}


def trained(method, rate, hp, steps=3):
    """A table after a few optimizer steps, so BatchNorm statistics, quantisation grids and
    learned steps are no longer at their initial values."""
    table = METHODS[method](CARDS, DIM, Budget.from_rate(rate, CARDS, DIM), seed=0, **hp)
    opt = torch.optim.Adam(table.parameters(), lr=0.01)
    table.train()
    for s in range(steps):
        out = table(random_ids(CARDS, 128, seed=100 + s))
        loss = (out * torch.linspace(-1, 1, DIM)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return table.eval()


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    method, rate, hp = request.param
    table = trained(method, rate, hp)
    return method, table, table.export()


def test_export_matches_torch_for_random_ids(case):
    method, table, exported = case
    store = exported.to_store()
    ids = random_ids(CARDS, 512, seed=7)
    with torch.no_grad():
        expected = table(ids).numpy()
    got = store.lookup(ids.numpy())
    assert got.dtype == np.float32 and got.shape == expected.shape
    if method in EXACT:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_exported_bytes_are_the_memory_bytes(case):
    _, table, exported = case
    assert exported.nbytes == table.memory_bytes() == exported.to_store().nbytes
    json.dumps(exported.config)
    assert exported.config["cardinalities"] == CARDS and exported.config["dim"] == DIM


def test_multi_hot_lookup_matches_torch(case):
    method, table, exported = case
    ids = torch.stack([random_ids(CARDS, 64, seed=1), random_ids(CARDS, 64, seed=2)], dim=2)
    ids[::3, :, 1] = -1
    with torch.no_grad():
        expected = table(ids).numpy()
    got = exported.to_store().lookup(ids.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(case, tmp_path):
    method, table, exported = case
    path = exported.save(tmp_path / "table")
    back = ExportedTable.load(path)
    assert back.method == method and back.config == exported.config
    assert back.arrays.keys() == exported.arrays.keys()
    for k, v in exported.arrays.items():
        assert back.arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(back.arrays[k], v)
    ids = random_ids(CARDS, 100, seed=3).numpy()
    expected = exported.to_store().lookup(ids)
    np.testing.assert_array_equal(TableStore.load(path).lookup(ids), expected)
    np.testing.assert_array_equal(TableStore.load(path, mmap=True, threads=1).lookup(ids), expected)


def test_threaded_lookup_equals_single_thread(case):
    _, _, exported = case
    ids = random_ids(CARDS, 1200, seed=4).numpy()
    one = TableStore(exported.method, exported.config, exported.arrays, threads=1)
    many = TableStore(exported.method, exported.config, exported.arrays, threads=3)
    many.MIN_PARALLEL_IDS = 2000  # force a three-way split of this small batch
    try:
        np.testing.assert_array_equal(many.lookup(ids), one.lookup(ids))
    finally:
        many.close()


# ----------------------------------------------------------------------------- the format
@pytest.fixture()
def saved(tmp_path):
    exported = trained("hash", 0.1, {}, steps=1).export()
    return exported, exported.save(tmp_path / "t")


def test_save_is_atomic_and_replaces_an_existing_table(saved, tmp_path):
    exported, path = saved
    other = trained("unified", 0.1, {}, steps=1).export()
    other.save(path)
    assert TableStore.load(path).method == "unified"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporary siblings left
    assert {p.name for p in path.iterdir()} == {MANIFEST} | {f"{k}.npy" for k in other.arrays}


def test_save_refuses_to_overwrite_something_else(tmp_path):
    exported = trained("hash", 0.1, {}, steps=1).export()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "precious.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for target in ("dir", "file"):
        with pytest.raises(BundleError, match="refusing"):
            exported.save(tmp_path / target)
    assert (tmp_path / "dir" / "precious.txt").read_text() == "keep me"


def test_no_pickle_in_the_files(saved):
    _, path = saved
    for f in path.glob("*.npy"):
        np.load(f, allow_pickle=False)  # would raise for an object array
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["method"] == "hash" and manifest["format_version"] == 1
    assert all(len(e["sha256"]) == 64 for e in manifest["arrays"].values())


def test_loaded_arrays_start_on_a_cache_line(saved):
    exported, path = saved
    for mmap in (False, True):
        store = TableStore.load(path, mmap=mmap)
        for name, arr in store.arrays.items():
            assert arr.ctypes.data % 64 == 0, (name, mmap)
            np.testing.assert_array_equal(arr, exported.arrays[name])
    f = path / "weight.npy"
    f.write_bytes(f.read_bytes()[:-8])  # truncated after the header
    with pytest.raises(BundleError, match="shorter"):
        TableStore.load(path, verify=False)


def test_corrupted_array_fails_the_checksum(saved):
    exported, path = saved
    f = path / "weight.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        TableStore.load(path)
    TableStore.load(path, verify=False)  # explicitly unchecked loads still work
    f.write_bytes(b"not an npy file")
    with pytest.raises(BundleError, match="npy"):
        TableStore.load(path, verify=False)


@pytest.mark.parametrize("edit,error", [
    (lambda m: m.update(format_version=99), FormatVersionError),
    (lambda m: m.update(format="something.else"), BundleError),
    (lambda m: m.update(method="no_such_method"), BundleError),
    (lambda m: m["config"].pop("rows"), BundleError),
    (lambda m: m["arrays"]["weight"].update(shape=[1, 2]), BundleError),
    (lambda m: m["arrays"].pop("hash"), BundleError),
    (lambda m: m["arrays"]["weight"].update(file="../weight.npy"), BundleError),
    (lambda m: m["arrays"]["weight"].pop("sha256"), BundleError),
    (lambda m: m.pop("config"), BundleError),
    (lambda m: m.update(arrays=[1, 2]), BundleError),
])
def test_bad_manifests_are_refused(saved, edit, error):
    _, path = saved
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(error):
        TableStore.load(path)


@pytest.mark.parametrize("method,rate,hp", [c for c in CASES if c[0] != "dhe"],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] != "dhe"])
def test_arrays_inconsistent_with_the_config_are_refused(method, rate, hp):
    exported = METHODS[method](CARDS, DIM, Budget.from_rate(rate, CARDS, DIM), **hp).export()
    name = max(exported.arrays, key=lambda k: exported.arrays[k].size)
    arrays = {**exported.arrays, name: exported.arrays[name][:-1]}  # one row short: take() would clip
    with pytest.raises(BundleError):
        TableStore(exported.method, exported.config, arrays)


def test_missing_files_are_refused(saved, tmp_path):
    _, path = saved
    with pytest.raises(BundleError):
        TableStore.load(tmp_path / "nowhere")
    (path / "hash.npy").unlink()
    with pytest.raises(BundleError, match="missing"):
        TableStore.load(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError):
        TableStore.load(path)


# ----------------------------------------------------------------------------- bad ids
def test_store_rejects_bad_ids(saved):
    exported, _ = saved
    store = exported.to_store()
    ids = random_ids(CARDS, 4).numpy()
    bad_range, negative = ids.copy(), ids.copy()
    bad_range[1, 5] = CARDS[5]
    negative[0, 2] = -1
    bad_bag = np.stack([ids, ids], axis=2)
    bad_bag[0, 0, 0] = -2
    for x, msg in [(bad_range, "out of range"), (negative, "out of range"), (ids.astype(np.float64), "integer"),
                   (ids[:, :3], "must be"), (ids.tolist(), "numpy"), (ids[0], "must be"), (bad_bag, "out of range"),
                   (np.array([[2**63 + 5] * len(CARDS)], dtype=np.uint64), "int64")]:
        with pytest.raises(InvalidInputError, match=msg):
            store.lookup(x)
    np.testing.assert_array_equal(store.lookup(ids.astype(np.int32)), store.lookup(ids))
    np.testing.assert_array_equal(store.lookup(ids.astype(np.uint16)), store.lookup(ids))
    with pytest.raises(InvalidInputError):
        TableStore(exported.method, exported.config, exported.arrays, threads=0)


def test_serving_imports_no_torch():
    code = ("import sys, indexing.table_store, embedx.tables.export; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("op", ["mult", "add"])
def test_qr_blocked_combine_matches_torch(op, monkeypatch):
    """The QR kernel combines its two gathers an L2-sized block at a time: a batch spanning
    several blocks, the last one short, must still equal torch exactly."""
    from indexing import table_lookups

    table = METHODS["qr"](CARDS, DIM, Budget.from_rate(0.1, CARDS, DIM), seed=0, op=op).eval()
    row_bytes = len(CARDS) * DIM * 4
    monkeypatch.setattr(table_lookups.QR, "BLOCK_BYTES", 7 * row_bytes)  # 7 rows a block
    ids = random_ids(CARDS, 100, seed=3)  # 14 full blocks and one of 2 rows
    with torch.no_grad():
        expected = table(ids).numpy()
    np.testing.assert_array_equal(table.export().to_store().lookup(ids.numpy()), expected)
