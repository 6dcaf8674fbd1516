"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("EMBEDX_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    """SciFact in BEIR layout under $EMBEDX_DATA (../shared/data); tests using it skip without it."""
    path = DATA / "scifact"
    if not (path / "corpus.jsonl.gz").is_file() and not (path / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found under {DATA}")
    return path


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """The server tests' small bundles and test encoders (``test_server_kit``), built once per
    test process and shared by the server, fast-path, swap, fuzz and page tests."""
    from test_server_kit import shared_workspace

    return shared_workspace(tmp_path_factory)
