"""Where things live: the real-data root, the project's benchmark folder and the caches."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The folder of real data sets: ``$EMBEDX_DATA``, else ``../shared/data`` from the working
    directory or from the source checkout."""
    env = os.environ.get("EMBEDX_DATA")
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def benchmarks_dir() -> Path:
    """The ``benchmarks/`` folder of the checkout (specs and results): ``$EMBEDX_BENCHMARKS`` or
    the one beside the working directory or the source tree."""
    env = os.environ.get("EMBEDX_BENCHMARKS")
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "benchmarks" / "specs").is_dir():
            return base / "benchmarks"
    return Path.cwd() / "benchmarks"


def cache_dir(capability: str) -> Path:
    """A capability's cache: ``$EMBEDX_CACHE/<capability>``, else
    ``$XDG_CACHE_HOME/embedx/<capability>``, else ``~/.cache/embedx/<capability>``."""
    env = os.environ.get("EMBEDX_CACHE")
    if env:
        return Path(env).expanduser() / capability
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "embedx" / capability
