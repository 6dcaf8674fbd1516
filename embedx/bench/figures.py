"""Benchmark charts: where they go and how they are written (matplotlib is optional)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is absent
    (a benchmark then records no chart and still runs)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plot")
        return None
    return plt


def plot_path(name: str) -> Path:
    """An absolute path as is; a relative one from the checkout (the folder holding ``benchmarks/``)."""
    from embedx.paths import benchmarks_dir

    path = Path(name)
    return path if path.is_absolute() else benchmarks_dir().parent / path


def save_figure(fig, path: Path, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG at ``path`` atomically (a reader never sees half a chart), close it."""
    from indexing.fsutil import atomic_write_bytes

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
