"""Index bundles: manifest, checksums, kind dispatch and atomic replacement."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from indexing import bundle as bundle_mod
from indexing.bundle import FORMAT_VERSION, INDEX_KINDS, Bundle, file_sha256, load_bundle, read_manifest, \
    register_index_kind, write_bundle
from indexing.errors import BackendUnavailableError, BundleError, ChecksumMismatchError, FormatVersionError, \
    InvalidInputError
from indexing.ids import IdTable
from indexing.results import SearchResults
from indexing.validation import check_dense, check_k

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


# ---------------------------------------------------------------------------- test doubles
class BruteIndex:
    """A brute-force inner-product index following the bundle protocol (files in a subfolder too)."""

    kind = "test-brute"

    def __init__(self, ids, vectors):
        self.vectors = check_dense(vectors)
        self.ids = IdTable.from_ids(ids, len(self.vectors))

    def save(self, directory: Path) -> list[str]:
        np.save(directory / "vectors.npy", self.vectors, allow_pickle=False)
        (directory / "meta").mkdir()
        (directory / "meta" / "info.json").write_text(json.dumps({"rows": len(self)}))
        return ["vectors.npy", self.ids.save(directory), "meta/info.json"]

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> "BruteIndex":
        obj = cls.__new__(cls)
        obj.vectors = np.load(directory / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        obj.ids = IdTable.load(directory, mmap=mmap)
        return obj

    def manifest_fields(self) -> dict:
        return {"kind": self.kind, "metric": "ip", "dimension": np.int64(self.vectors.shape[1]),
                "count": len(self)}

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries, k) -> SearchResults:
        q = check_dense(queries, self.vectors.shape[1], "queries")
        k = check_k(k)
        scores = q @ np.asarray(self.vectors).T
        kk = min(k, scores.shape[1])
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        top = np.take_along_axis(scores, rows, axis=1)
        pad = k - kk
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
        return SearchResults.from_rows(rows, top, self.ids.array)


class FailingIndex(BruteIndex):
    """Writes part of its files, then fails."""

    def save(self, directory: Path) -> list[str]:
        np.save(directory / "vectors.npy", self.vectors)
        raise RuntimeError("disk on fire")


class SlowIndex(BruteIndex):
    """Writes a file, announces it through ``marker``, then hangs (to be SIGKILLed)."""

    marker: str = ""

    def save(self, directory: Path) -> list[str]:
        np.save(directory / "vectors.npy", self.vectors)
        Path(self.marker + ".tmp").write_text(str(directory))
        os.replace(self.marker + ".tmp", self.marker)      # the test must never see it half-written
        time.sleep(60)
        return super().save(directory)


@pytest.fixture(autouse=True)
def _register_test_kind():
    register_index_kind("test-brute", BruteIndex)
    yield
    INDEX_KINDS.pop("test-brute", None)


def _make(n=20, d=8, seed=0, prefix="doc"):
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i}" for i in range(n)]
    return BruteIndex(ids, rng.standard_normal((n, d)).astype(np.float32))


def _docs(index, every=1):
    ids = index.ids.array.tolist()[::every]
    return [(i, {"title": f"Title of {i}", "text": f"text {i} — ünïcode"}) for i in ids]


def _queries(d=8, nq=5, seed=99):
    return np.random.default_rng(seed).standard_normal((nq, d)).astype(np.float32)


def _brute_top(index, queries, k):
    """Independent reference: ids of the k best rows per query."""
    s = queries.astype(np.float64) @ np.asarray(index.vectors, dtype=np.float64).T
    ids = index.ids.array
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in s]


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") and p.name != f".{name}.lock")


# ---------------------------------------------------------------------------- round trip
def test_roundtrip_with_docs(tmp_path):
    idx = _make()
    path = tmp_path / "b"
    assert write_bundle(path, idx, _docs(idx), encoder={"name": "enc", "hash": "abc123"}) == path
    q = _queries()
    with load_bundle(path) as b:
        assert isinstance(b, Bundle) and len(b) == 20 and b.kind == "test-brute"
        res = b.search(q, 4)
        assert [[x for x, _ in res.hits(i)] for i in range(len(q))] == _brute_top(idx, q, 4)
        np.testing.assert_allclose(res.scores, idx.search(q, 4).scores, rtol=1e-6)
        assert b.fields(["doc3", "nope", "doc0"]) == [
            {"title": "Title of doc3", "text": "text doc3 — ünïcode"}, None,
            {"title": "Title of doc0", "text": "text doc0 — ünïcode"}]
        assert b.fields(["doc3"], names=["title", "absent"]) == [{"title": "Title of doc3"}]
        assert b.fields(["doc3"], names="text") == [{"text": "text doc3 — ünïcode"}]
        assert b.path == path and b.root.name.startswith(".b.v-")
    assert path.is_symlink() and not os.path.isabs(os.readlink(path))
    assert _leftovers(tmp_path, "b") == [os.readlink(path)]


def test_search_passes_padding_through(tmp_path):
    idx = _make(n=3)
    write_bundle(tmp_path / "b", idx)
    with load_bundle(tmp_path / "b") as b:
        res = b.search(_queries(nq=2), 5)
        assert res.rows.shape == (2, 5) and (res.rows[:, 3:] == -1).all() and len(res.hits(0)) == 3


def test_manifest_contents(tmp_path):
    idx = _make(n=30, d=6)
    path = write_bundle(tmp_path / "m", idx, _docs(idx, every=3), encoder={"name": "enc-v1", "hash": "deadbeef"},
                        extra={"note": "hi", "arr": np.arange(3)})
    m = read_manifest(path)
    assert m["format_version"] == FORMAT_VERSION == 1
    assert (m["kind"], m["metric"], m["dimension"], m["count"], m["docs"]) == ("test-brute", "ip", 6, 30, 10)
    assert "vocab_size" not in m
    assert m["encoder"] == {"name": "enc-v1", "hash": "deadbeef"}
    assert m["space_id"] == "encoder:deadbeef"
    assert m["index"] == {"kind": "test-brute", "metric": "ip", "dimension": 6, "count": 30}
    assert m["extra"] == {"note": "hi", "arr": [0, 1, 2]}
    created = datetime.fromisoformat(m["created"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)
    root = Path(os.path.realpath(path))
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert sorted(m["files"]) == [f for f in on_disk if f != "manifest.json"]
    assert sorted(m["files"]) == ["docs.lmdb", "ids.npy", "meta/info.json", "vectors.npy"]
    for rel, entry in m["files"].items():
        data = (root / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert read_manifest(root / "manifest.json") == m   # the manifest file itself works too


def test_space_id_rules(tmp_path):
    idx = _make(n=4)
    assert read_manifest(write_bundle(tmp_path / "a", idx, encoder={"name": "e", "hash": "h1"},
                                      space_id="shared-space"))["space_id"] == "shared-space"
    m = read_manifest(write_bundle(tmp_path / "b", idx, encoder={"name": "bm25", "hash": None}))
    assert m["space_id"] is None and m["encoder"] == {"name": "bm25", "hash": None}
    m = read_manifest(write_bundle(tmp_path / "c", idx))
    assert m["encoder"] is None and m["space_id"] is None and m["docs"] is None and m["extra"] == {}


def test_bundle_without_docs(tmp_path):
    idx = _make(n=5)
    write_bundle(tmp_path / "b", idx)
    with load_bundle(tmp_path / "b") as b:
        assert b.store is None and b.fields(["doc1", "x"]) == [None, None]
        assert "docs.lmdb" not in b.manifest["files"]
        assert not (b.root / "docs.lmdb").exists()


def test_loading_twice_and_mmap_off(tmp_path):
    idx = _make()
    write_bundle(tmp_path / "b", idx, _docs(idx))
    a, b = load_bundle(tmp_path / "b"), load_bundle(tmp_path / "b", mmap=False, verify="size")
    assert not isinstance(b.index.vectors, np.memmap) and isinstance(a.index.vectors, np.memmap)
    assert a.fields(["doc1"]) == b.fields(["doc1"])
    a.close()
    assert b.fields(["doc2"])[0]["title"] == "Title of doc2"
    b.close()


# ---------------------------------------------------------------------------- verification
def test_checksum_tamper_is_caught(tmp_path):
    idx = _make()
    path = write_bundle(tmp_path / "b", idx)
    target = path / "vectors.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01                              # same size, one bit different
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="vectors.npy"):
        load_bundle(path)
    load_bundle(path, verify="size").close()       # sizes alone cannot see it
    load_bundle(path, verify=False).close()


def test_truncated_file_is_caught_even_by_size_check(tmp_path):
    path = write_bundle(tmp_path / "b", _make())
    with open(path / "ids.npy", "r+b") as f:
        f.truncate(10)
    for verify in (True, "size"):
        with pytest.raises(ChecksumMismatchError, match=r"ids\.npy has 10 bytes.*truncated"):
            load_bundle(path, verify=verify)


def test_missing_file(tmp_path):
    path = write_bundle(tmp_path / "b", _make())
    (path / "meta" / "info.json").unlink()
    with pytest.raises(BundleError, match=r"meta/info\.json is missing"):
        load_bundle(path)


def _edit_manifest(path: Path, **changes) -> None:
    file = Path(os.path.realpath(path)) / "manifest.json"
    m = json.loads(file.read_text())
    m.update(changes)
    file.write_text(json.dumps(m))


def test_newer_format_version_is_refused(tmp_path):
    path = write_bundle(tmp_path / "b", _make())
    _edit_manifest(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(FormatVersionError, match="newer embedx.*upgrade"):
        load_bundle(path)
    for bad in ("1", None, 0, True):
        _edit_manifest(path, format_version=bad)
        with pytest.raises(FormatVersionError, match="unknown format_version"):
            load_bundle(path)


def test_malformed_or_missing_manifest(tmp_path):
    path = write_bundle(tmp_path / "b", _make())
    manifest = Path(os.path.realpath(path)) / "manifest.json"
    manifest.write_text('{"format_version": 1, "kind": ')
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON"):
        load_bundle(path)
    manifest.write_text("[1, 2]")
    with pytest.raises(BundleError, match="JSON object"):
        load_bundle(path)
    manifest.write_bytes(b"\xff\xfe")
    with pytest.raises(BundleError, match=r"manifest\.json cannot be read"):
        load_bundle(path)
    manifest.unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nothing-here")


@pytest.mark.parametrize("changes, message", [
    ({"kind": "quantum"}, "unknown index kind 'quantum'"),
    ({"count": 21}, "records 21 items, the index holds 20"),
    ({"count": -1}, "count must be"),
    ({"files": {"../escape": {"sha256": "0" * 64, "bytes": 1}}}, "not a plain relative path"),
    ({"files": {"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}}}, "not a plain relative path"),
    ({"files": {"ids.npy": {"sha256": "xyz", "bytes": 1}}}, "64 hex digits"),
    ({"files": []}, "'files' must be an object"),
])
def test_bad_manifest_fields(tmp_path, changes, message):
    path = write_bundle(tmp_path / "b", _make())
    _edit_manifest(path, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_missing_required_field(tmp_path):
    path = write_bundle(tmp_path / "b", _make())
    file = Path(os.path.realpath(path)) / "manifest.json"
    m = json.loads(file.read_text())
    del m["metric"]
    file.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"lacks required field\(s\) \['metric'\]"):
        load_bundle(path)


def test_unimportable_backend(tmp_path):
    path = write_bundle(tmp_path / "b", _make())
    register_index_kind("test-missing", "indexing.no_such_module:Nope")
    try:
        _edit_manifest(path, kind="test-missing")
        with pytest.raises(BackendUnavailableError, match="indexing.no_such_module"):
            load_bundle(path)
    finally:
        INDEX_KINDS.pop("test-missing")
    with pytest.raises(InvalidInputError):
        register_index_kind("", BruteIndex)
    with pytest.raises(InvalidInputError):
        register_index_kind("x", "no-colon")


def test_kind_table_points_inside_the_package_and_imports_lazily():
    for kind in ("dense", "sparse", "lucene-impact", "lucene-bm25"):
        module, _, cls = INDEX_KINDS[kind].partition(":")
        assert module.startswith("indexing.") and cls
    code = ("import sys, indexing.bundle, indexing.fusion, indexing.store; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'jnius', 'pyserini') "
            "or m in ('indexing.lucene', 'indexing.dense', 'indexing.sparse')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_verify_argument_and_file_sha256(tmp_path):
    path = write_bundle(tmp_path / "b", _make())
    with pytest.raises(InvalidInputError, match="verify"):
        load_bundle(path, verify="sometimes")
    big = tmp_path / "big.bin"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 12345)   # several 1 MiB chunks and a tail
    big.write_bytes(data)
    assert file_sha256(big) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------------------- write-side checks
def test_docs_must_be_in_the_index(tmp_path):
    idx = _make()
    write_bundle(tmp_path / "b", idx, _docs(idx))
    with pytest.raises(InvalidInputError, match="1 stored document id.*'stranger'"):
        write_bundle(tmp_path / "b", _make(seed=1), [("doc1", {}), ("stranger", {})])
    with pytest.raises(InvalidInputError, match="duplicate document id 'doc1'"):
        write_bundle(tmp_path / "b", _make(seed=1), [("doc1", {}), ("doc1", {})])
    with load_bundle(tmp_path / "b") as b:        # the previous bundle is untouched
        assert b.manifest["docs"] == 20
        np.testing.assert_array_equal(b.index.vectors, idx.vectors)
    assert _leftovers(tmp_path, "b") == [os.readlink(tmp_path / "b")]


@pytest.mark.parametrize("kwargs, message", [
    ({"encoder": {"hash": "x"}}, "encoder must be"),
    ({"encoder": {"name": "e", "hash": 5}}, "encoder hash"),
    ({"encoder": "e"}, "encoder must be"),
    ({"space_id": ""}, "space_id"),
    ({"extra": {"f": object()}}, "extra must be JSON-serialisable"),
    ({"extra": {"f": float("nan")}}, "extra must be JSON-serialisable"),
])
def test_bad_write_arguments(tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        write_bundle(tmp_path / "b", _make(), **kwargs)
    assert not os.path.lexists(tmp_path / "b")


class _LyingIndex(BruteIndex):
    def __init__(self, *a, fields=None, listed=None, **kw):
        super().__init__(*a, **kw)
        self._fields, self._listed = fields, listed

    def manifest_fields(self):
        return {**super().manifest_fields(), **(self._fields or {})}

    def save(self, directory):
        listed = super().save(directory)
        return listed + self._listed if self._listed else listed


@pytest.mark.parametrize("fields, listed, message", [
    ({"kind": "other"}, None, "says kind 'other'"),
    ({"count": 99}, None, "says count 99"),
    (None, ["ghost.bin"], "listed 'ghost.bin' but did not write it"),
    (None, ["../outside"], "not a plain relative path"),
    (None, ["manifest.json"], "may not write its own manifest.json"),
])
def test_index_protocol_violations(tmp_path, fields, listed, message):
    idx = _LyingIndex(["a", "b"], np.eye(2, dtype=np.float32), fields=fields, listed=listed)
    with pytest.raises(BundleError, match=message):
        write_bundle(tmp_path / "b", idx)
    assert not os.path.lexists(tmp_path / "b") and _leftovers(tmp_path, "b") == []


# ---------------------------------------------------------------------------- atomic replacement
def test_overwrite_replaces_atomically_and_old_readers_keep_working(tmp_path):
    old_idx, new_idx = _make(seed=1), _make(n=12, seed=2, prefix="new")
    path = tmp_path / "b"
    write_bundle(path, old_idx, _docs(old_idx))
    old_version = os.readlink(path)
    reader = load_bundle(path)
    write_bundle(path, new_idx, _docs(new_idx))
    assert os.readlink(path) != old_version and not (tmp_path / old_version).exists()
    assert _leftovers(tmp_path, "b") == [os.readlink(path)]
    q = _queries()
    with load_bundle(path) as b:
        assert b.manifest["count"] == 12
        assert [[x for x, _ in b.search(q, 3).hits(i)] for i in range(5)] == _brute_top(new_idx, q, 3)
    # The reader that mapped the old version still answers from it.
    assert [[x for x, _ in reader.search(q, 3).hits(i)] for i in range(5)] == _brute_top(old_idx, q, 3)
    assert reader.fields(["doc4"])[0]["title"] == "Title of doc4"
    reader.close()


def test_failed_build_keeps_previous_bundle(tmp_path):
    idx = _make()
    path = tmp_path / "b"
    write_bundle(path, idx, _docs(idx))
    q = _queries()
    expected = load_bundle(path).search(q, 5)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_bundle(path, FailingIndex(["x", "y"], np.eye(2, 8, dtype=np.float32)), [("x", {})])
    with load_bundle(path) as b:
        got = b.search(q, 5)
        np.testing.assert_array_equal(got.ids, expected.ids)
        np.testing.assert_array_equal(got.scores, expected.scores)
        assert b.fields(["doc0"])[0]["title"] == "Title of doc0"
    assert _leftovers(tmp_path, "b") == [os.readlink(path)]
    # Leftovers of crashed writes (which never got to clean up) go with the next successful write.
    (tmp_path / f".b.tmp-{'a' * 32}").mkdir()
    (tmp_path / f".b.tmp-{'a' * 32}" / "junk.npy").write_bytes(b"junk")
    (tmp_path / f".b.v-{'b' * 32}").mkdir()
    os.symlink(".b.v-" + "b" * 32, tmp_path / f".b.link-{'c' * 32}")
    (tmp_path / ".bb.tmp-x").mkdir()                                # someone else's: not ours to delete
    write_bundle(path, idx)
    assert _leftovers(tmp_path, "b") == [os.readlink(path)]
    assert (tmp_path / ".bb.tmp-x").exists()


_KILL_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_bundle import SlowIndex
from indexing.bundle import write_bundle
idx = SlowIndex(["k1", "k2", "k3"], np.ones((3, 8), dtype=np.float32))
idx.marker = {marker!r}
write_bundle({path!r}, idx, [("k1", {{"title": "killed"}})])
"""


def test_sigkill_mid_write_keeps_previous_bundle(tmp_path):
    idx = _make()
    path = tmp_path / "b"
    write_bundle(path, idx, _docs(idx))
    q = _queries()
    expected = load_bundle(path).search(q, 5).ids
    marker = tmp_path / "marker"
    script = _KILL_SCRIPT.format(tests=str(TESTS), marker=str(marker), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, "writer exited before reaching the slow save"
            assert time.monotonic() < deadline, "writer never reached the slow save"
            time.sleep(0.02)
        building = Path(marker.read_text())
        assert building.name.startswith(".b.tmp-") and (building / "vectors.npy").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with load_bundle(path) as b:
        np.testing.assert_array_equal(b.search(q, 5).ids, expected)
        assert b.fields(["doc1"])[0]["title"] == "Title of doc1"
    assert building.exists()                  # the dead writer's temp dir is still there...
    write_bundle(path, idx)                   # ...the lock died with it, so this does not block...
    assert not building.exists()              # ...and cleans it up
    assert _leftovers(tmp_path, "b") == [os.readlink(path)]


def test_readers_never_see_a_mix_during_rewrites(tmp_path):
    """Loaders racing a writer always get one complete, verified version."""
    path = tmp_path / "b"
    ids = [f"d{i}" for i in range(50)]

    def version(v):
        return BruteIndex(ids, np.full((50, 8), float(v), dtype=np.float32))

    write_bundle(path, version(0), extra={"v": 0})
    stop, errors, seen, loads = threading.Event(), [], set(), []

    def reader():
        while not stop.is_set():
            try:
                with load_bundle(path, verify=True) as b:
                    v = b.manifest["extra"]["v"]
                    if not (np.asarray(b.index.vectors) == v).all():
                        errors.append(f"manifest says {v}, data says otherwise")
                    seen.add(v)
                    loads.append(v)
            except Exception as e:     # noqa: BLE001 - any failure is the bug we look for
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 20
        while not loads and time.monotonic() < deadline:    # readers are running before writes start
            time.sleep(0.005)
        for v in range(1, 61):
            write_bundle(path, version(v), extra={"v": v})
            time.sleep(0.01)          # writes are rarer than loads; a load restarts if one lands mid-way
            if v >= 10 and len(seen) > 2:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert len(seen) > 2, f"readers saw only versions {sorted(seen)}: no race was exercised"
    assert _leftovers(tmp_path, "b") == [os.readlink(path)]


def test_refuses_foreign_paths(tmp_path):
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "thesis.tex").write_text("precious")
    with pytest.raises(BundleError, match="not an embedx bundle"):
        write_bundle(user_dir, _make())
    (user_dir / "manifest.json").write_text('{"name": "some web app"}')
    with pytest.raises(BundleError, match="not an embedx bundle"):
        write_bundle(user_dir, _make())
    assert (user_dir / "thesis.tex").read_text() == "precious"

    a_file = tmp_path / "file"
    a_file.write_text("data")
    with pytest.raises(BundleError, match="not a directory"):
        write_bundle(a_file, _make())
    assert a_file.read_text() == "data"

    link = tmp_path / "link"
    os.symlink(user_dir, link)
    with pytest.raises(BundleError, match="symbolic link"):
        write_bundle(link, _make())
    assert os.readlink(link) == str(user_dir)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "lock" not in p.name) == []


def test_replaces_a_plain_directory_bundle_and_an_empty_directory(tmp_path):
    idx = _make()
    write_bundle(tmp_path / "src", idx, _docs(idx))
    legacy = tmp_path / "copy"
    shutil.copytree(os.path.realpath(tmp_path / "src"), legacy)        # a real directory, as cp -rL makes
    with load_bundle(legacy) as b:
        assert b.root == legacy.resolve() and b.manifest["docs"] == 20
    new_idx = _make(n=7, seed=3)
    write_bundle(legacy, new_idx)
    assert legacy.is_symlink()
    with load_bundle(legacy) as b:
        assert b.manifest["count"] == 7 and b.store is None
    assert _leftovers(tmp_path, "copy") == [os.readlink(legacy)]

    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty, new_idx)
    assert empty.is_symlink() and load_bundle(empty).manifest["count"] == 7


def test_replaces_a_plain_directory_without_rename_exchange(tmp_path, monkeypatch):
    """Where renameat2 is unavailable the old directory is moved aside, then removed."""
    idx = _make()
    write_bundle(tmp_path / "src", idx)
    legacy = tmp_path / "copy"
    shutil.copytree(os.path.realpath(tmp_path / "src"), legacy)
    monkeypatch.setattr(bundle_mod, "_exchange", lambda a, b: False)
    write_bundle(legacy, _make(n=3))
    assert legacy.is_symlink() and load_bundle(legacy).manifest["count"] == 3
    assert _leftovers(tmp_path, "copy") == [os.readlink(legacy)]


def test_relative_path_and_nested_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = write_bundle(Path("deep/er/b"), _make(n=4))
    assert out == Path("deep/er/b")
    assert load_bundle("deep/er/b").manifest["count"] == 4


def test_bundle_files_are_readable_by_others(tmp_path):
    """Files written through private temp files (0600) get a normal mode before publishing."""
    old = os.umask(0o022)
    try:
        path = write_bundle(tmp_path / "b", _make(), _docs(_make()))
    finally:
        os.umask(old)
    root = Path(os.path.realpath(path))
    for f in [*read_manifest(path)["files"], "manifest.json"]:
        assert (root / f).stat().st_mode & 0o777 == 0o644, f
    assert root.stat().st_mode & 0o777 == 0o755
