"""indexing.fsutil.atomic_directory: a folder appears whole or not at all."""

import pytest

from indexing.fsutil import atomic_directory


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_directory_publishes_on_success(tmp_path):
    target = tmp_path / "sub" / "out"
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        (tmp / "a.txt").write_text("a")
        (tmp / "b.bin").write_bytes(b"b")
        assert not target.exists()          # nothing half-written is visible
    assert _entries(target) == ["a.txt", "b.bin"] and (target / "a.txt").read_text() == "a"
    assert _entries(target.parent) == ["out"]  # no temporary sibling left


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise RuntimeError("boom")
    assert _entries(tmp_path) == []


def test_atomic_directory_keeps_a_copy_written_meanwhile(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "mine.txt").write_text("mine")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
    assert _entries(target) == ["theirs.txt"] and _entries(tmp_path) == ["out"]


def test_old_import_path_still_works():
    pytest.importorskip("torch")
    from embedx.tables.data.cache import atomic_directory as old

    assert old is atomic_directory
