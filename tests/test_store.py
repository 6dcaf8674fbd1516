"""DocStore: LMDB id -> stored fields."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle

import lmdb
import pytest

from indexing.bundle import file_sha256
from indexing.errors import EmbedxIndexError, InvalidInputError
from indexing.store import DocStore, ReadOnlyStoreError, StoreError


def _docs(n: int) -> list[tuple[str, dict]]:
    return [(f"d{i}", {"title": f"title {i}", "text": "x" * (i % 50), "n": i}) for i in range(n)]


def test_roundtrip_and_lookups(tmp_path):
    docs = _docs(100)
    path = tmp_path / "docs.lmdb"
    with DocStore.build(path, docs) as store:
        assert len(store) == 100
        for doc_id, fields in docs:
            assert store.get(doc_id) == fields
        assert "d5" in store and "nope" not in store and 5 not in store
        assert store.get("missing") is None
        assert store.get_many(["d3", "missing", "d99", "d3"]) == [docs[3][1], None, docs[99][1], docs[3][1]]
        assert store.get_many([]) == []
        assert sorted(store.ids()) == sorted(d for d, _ in docs)
    # One file, no lock file, nothing left behind by the build.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.lmdb"]


def test_accepts_a_mapping_and_empty_input(tmp_path):
    with DocStore.build(tmp_path / "a", {"x": {"v": 1}, "y": {}}) as s:
        assert s.get("x") == {"v": 1} and s.get("y") == {} and len(s) == 2
    with DocStore.build(tmp_path / "b", []) as s:
        assert len(s) == 0 and s.get("x") is None


def test_unicode_ids_and_values_are_utf8_json(tmp_path):
    fields = {"title": "Über naïve café — 東京 🚀", "tags": ["α", "β"], "nested": {"k": None, "f": 1.5}}
    path = tmp_path / "u.lmdb"
    DocStore.build(path, [("東京-1", fields), ("ß", {"t": "e\u0301"})]).close()
    with DocStore.open(path) as s:
        assert s.get("東京-1") == fields
        assert s.get("ß") == {"t": "e\u0301"}
        assert "東京-1" in s
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        raw = txn.get("東京-1".encode("utf-8"))
    env.close()
    assert json.loads(raw.decode("utf-8")) == fields
    assert "Über".encode("utf-8") in raw       # stored as UTF-8, not \u escapes


def test_map_grows_from_tiny_initial_size(tmp_path):
    docs = [(f"doc-{i:05d}", {"text": "lorem ipsum " * 40, "i": i}) for i in range(3000)]
    path = tmp_path / "grow.lmdb"
    with DocStore.build(path, docs, map_size=64 * 1024, batch_size=500) as s:
        assert len(s) == 3000
        assert s.get("doc-02999") == docs[2999][1]
        assert s.get("doc-00000") == docs[0][1]
    assert path.stat().st_size > 64 * 1024 * 8      # it really outgrew the initial map several times


def test_duplicate_ids_fail_and_leave_nothing(tmp_path):
    path = tmp_path / "dup.lmdb"
    with pytest.raises(InvalidInputError, match="duplicate document id 'd1'"):
        DocStore.build(path, [("d1", {}), ("d2", {}), ("d1", {"again": 1})])
    # duplicate across batches too
    with pytest.raises(InvalidInputError, match="'d0'"):
        DocStore.build(path, [(f"d{i}", {}) for i in range(10)] + [("d0", {})], batch_size=3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("items, message", [
    ([("", {})], "non-empty string"),
    ([(3, {})], "non-empty string"),
    ([("a", ["not", "a", "dict"])], "must be a dict"),
    ([("a", {"x": object()})], "JSON-serialisable"),
    ([("a", {"x": float("nan")})], "JSON-serialisable"),
    ([("a", {}, "extra")], r"\(id, fields\) pair"),
    ([("x" * 600, {})], "bytes; the limit is"),
])
def test_bad_items_are_refused(tmp_path, items, message):
    with pytest.raises(InvalidInputError, match=message):
        DocStore.build(tmp_path / "bad.lmdb", items)
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_existing_path_and_open_refuses_missing(tmp_path):
    path = tmp_path / "s.lmdb"
    DocStore.build(path, _docs(3)).close()
    with pytest.raises(StoreError, match="already exists"):
        DocStore.build(path, _docs(3))
    with pytest.raises(StoreError, match="no document store"):
        DocStore.open(tmp_path / "missing.lmdb")
    with pytest.raises(InvalidInputError):
        DocStore.build(tmp_path / "t.lmdb", _docs(3), map_size=0)
    with pytest.raises(InvalidInputError):
        DocStore.build(tmp_path / "t.lmdb", _docs(3), batch_size=0)


def test_read_only_store_cannot_write_and_file_stays_identical(tmp_path):
    path = tmp_path / "ro.lmdb"
    DocStore.build(path, _docs(20)).close()
    before = file_sha256(path)
    with DocStore.open(path) as s:
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            s.add([("new", {})])
        with pytest.raises(lmdb.ReadonlyError):       # the environment itself is read-only too
            s._environment().begin(write=True)
        s.get_many([f"d{i}" for i in range(20)])
    assert file_sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.lmdb"]     # no lock file created
    assert issubclass(ReadOnlyStoreError, EmbedxIndexError)


def test_writable_open_can_add(tmp_path):
    path = tmp_path / "w.lmdb"
    DocStore.build(path, _docs(2)).close()
    with DocStore.open(path, readonly=False) as s:
        assert s.add([("d9", {"a": 1})]) == 1
        with pytest.raises(InvalidInputError, match="duplicate"):
            s.add([("d0", {})])
    with DocStore.open(path) as s:
        assert len(s) == 3 and s.get("d9") == {"a": 1} and s.get("d0") == _docs(2)[0][1]


def test_closed_store_errors(tmp_path):
    s = DocStore.build(tmp_path / "c.lmdb", _docs(2))
    s.close()
    s.close()                    # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.get("d0")
    with DocStore.build(tmp_path / "d.lmdb", _docs(2)) as s2, pytest.raises(InvalidInputError):
        s2.get(42)


def test_pickles_by_path(tmp_path):
    with DocStore.build(tmp_path / "p.lmdb", _docs(5)) as s:
        clone = pickle.loads(pickle.dumps(s))
        assert clone.get("d4") == s.get("d4") and clone.readonly
        clone.close()


def test_fork_child_reopens_and_reads(tmp_path):
    docs = _docs(200)
    store = DocStore.build(tmp_path / "f.lmdb", docs)
    assert store.get("d7") == docs[7][1]           # parent's environment is in use
    parent_env = store._env
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # child
        try:
            got = store.get_many([f"d{i}" for i in range(200)])
            ok = (got == [f for _, f in docs] and store._env is not parent_env
                  and store._pid == os.getpid() and len(store) == 200)
            os.write(w, b"ok" if ok else b"bad")
        except BaseException as e:                 # pragma: no cover - reported to the parent
            os.write(w, repr(e).encode()[:200])
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert store._env is parent_env and store.get("d199") == docs[199][1]   # parent unaffected
    store.close()


def _child_reads(store, ids, queue):
    queue.put(store.get_many(ids))


def test_multiprocessing_fork_context(tmp_path):
    docs = _docs(50)
    with DocStore.build(tmp_path / "mp.lmdb", docs) as store:
        store.get("d1")
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_reads, args=(store, ["d1", "d49", "zz"], q))
        p.start()
        got = q.get(timeout=20)
        p.join(20)
        assert p.exitcode == 0
        assert got == [docs[1][1], docs[49][1], None]


def test_two_handles_on_one_file_share_an_environment(tmp_path):
    path = tmp_path / "two.lmdb"
    DocStore.build(path, _docs(10)).close()
    a, b = DocStore.open(path), DocStore.open(path)
    assert a._env is b._env
    a.close()
    assert b.get("d3") == _docs(10)[3][1]         # b still works after a closed
    with pytest.raises(StoreError, match="already open read-only"):
        DocStore.open(path, readonly=False)
    b.close()
    with DocStore.open(path, readonly=False) as w:  # the last handle closed: free to reopen
        w.add([("d10", {})])


def test_writable_store_refuses_use_in_forked_child(tmp_path):
    path = tmp_path / "wf.lmdb"
    DocStore.build(path, _docs(3)).close()
    store = DocStore.open(path, readonly=False)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            store.get("d0")
            os.write(w, b"no error")
        except StoreError as e:
            os.write(w, b"refused" if "open it again" in str(e) else b"wrong message")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    assert answer == b"refused"
    assert store.get("d0") == _docs(3)[0][1]
    store.close()


def test_atomic_open_gives_files_the_normal_mode(tmp_path):
    import os
    import stat

    from indexing.fsutil import atomic_write_text
    atomic_write_text(tmp_path / "f.txt", "x")
    (tmp_path / "plain.txt").write_text("x")  # what open() gives under this process's umask
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
