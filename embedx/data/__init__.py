"""Data in and out: BEIR folders, JSON lines, TREC runs and qrels, and the bundled demo corpus.

Every reader refuses malformed input with :class:`DataFormatError` (a ``ValueError``) naming
the file and line; every writer is atomic.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .beir import (BeirDataset, find_member, iter_corpus, load_beir, load_corpus, load_qrels, load_queries,
                   qrels_path, write_beir, write_corpus, write_qrels, write_queries)
from .errors import DataFormatError
from .jsonl import iter_jsonl, iter_lines, open_text_writer, read_jsonl, write_jsonl
from .trec import read_qrels_trec, read_run, trec_order, write_qrels_trec, write_run


def demo_corpus_path() -> Path:
    """The small BEIR-layout corpus shipped inside the package (used by ``embedx demo``).

    It is a real folder on disk for a normal or editable install; zipped installs are not supported.
    """
    path = Path(str(resources.files("embedx") / "resources" / "demo"))
    if not (path / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"{path}: the demo corpus is missing from this installation")
    return path


__all__ = [
    "BeirDataset", "DataFormatError", "demo_corpus_path", "find_member", "iter_corpus", "iter_jsonl",
    "iter_lines", "load_beir", "load_corpus", "load_qrels", "load_queries", "open_text_writer", "qrels_path",
    "read_jsonl", "read_qrels_trec", "read_run", "trec_order", "write_beir", "write_corpus", "write_jsonl",
    "write_qrels", "write_qrels_trec", "write_queries", "write_run",
]
