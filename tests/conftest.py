"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """The server tests' small bundles and test encoders (``test_server_kit``), built once per
    test process and shared by the server, fast-path, swap, fuzz and page tests."""
    from test_server_kit import shared_workspace

    return shared_workspace(tmp_path_factory)
