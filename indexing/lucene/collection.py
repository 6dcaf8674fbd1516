"""Write the JSON collections that Anserini's ``IndexCollection`` reads.

* ``JsonVectorCollection`` (impact indexes): one line per document,
  ``{"id": ..., "contents": "", "vector": {term: impact, ...}}``. Anserini turns each
  entry into ``impact`` copies of ``term`` and splits them on whitespace
  (``-impact -pretokenized``), so the term frequency Lucene stores *is* the impact.
  That is why a term may not contain whitespace, must fit Lucene's whitespace tokenizer
  (255 UTF-16 units) and impacts must be (smallish) integers.
* ``JsonCollection`` (BM25): ``{"id": ..., "contents": title + " " + text}``.

Documents without content (an all-zero vector, a blank text) are left out: Anserini
would skip them anyway, and no query can match them.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)

MAX_TERM_UNITS = 255  # Lucene's WhitespaceTokenizer cuts longer tokens in pieces
MAX_IMPACT = 65535  # an impact becomes that many term copies in Anserini's input text
_ROWS_PER_CHUNK = 20_000
DOCS_PER_BLOCK = 1000  # text documents go to the shard files in blocks of this many


def check_vocab(vocab: Sequence[str], vocab_size: int) -> list[str]:
    """Terms that survive Anserini's whitespace tokenizer unchanged, or a clear error."""
    if isinstance(vocab, str):
        raise InvalidInputError("vocab must be a sequence of term strings, not one string")
    terms = list(vocab)
    if len(terms) != vocab_size:
        raise InvalidInputError(f"vocab has {len(terms)} terms, the impact matrix has {vocab_size} columns")
    for i, t in enumerate(terms):
        if not isinstance(t, str) or not t:
            raise InvalidInputError(f"vocab[{i}] must be a non-empty string, got {t!r}")
        if any(c.isspace() for c in t):
            raise InvalidInputError(f"vocab[{i}] = {t!r} contains whitespace, which Lucene would split")
        _check_utf8(t, f"vocab[{i}]")
        if len(t.encode("utf-16-le")) // 2 > MAX_TERM_UNITS:
            raise InvalidInputError(f"vocab[{i}] is longer than {MAX_TERM_UNITS} characters: {t[:40]!r}...")
    if len(set(terms)) != len(terms):
        counts: dict[str, int] = {}
        for t in terms:
            counts[t] = counts.get(t, 0) + 1
        dup = next(t for t, c in counts.items() if c > 1)
        raise InvalidInputError(f"vocab terms must be unique; {dup!r} appears more than once")
    return terms


def check_impacts(impacts, n_docs: int) -> sp.csr_matrix:
    """Validate integer impacts and return them as canonical int64 CSR without explicit zeros."""
    if not sp.issparse(impacts):
        raise InvalidInputError(f"impacts must be a scipy.sparse matrix, got {type(impacts).__name__}")
    if impacts.ndim != 2 or impacts.shape[0] != n_docs:
        raise InvalidInputError(f"impacts must have shape ({n_docs}, vocab_size) for {n_docs} ids, "
                                f"got {impacts.shape}")
    kind = impacts.dtype.kind
    if kind not in "biuf":
        raise InvalidInputError(f"impacts must be numeric, got dtype {impacts.dtype}")
    csr = sp.csr_matrix(impacts, copy=True)
    csr.sum_duplicates()
    data = csr.data
    if kind == "f":
        if not np.isfinite(data).all():
            raise InvalidInputError("impacts contain NaN or infinite values")
        if (data != np.rint(data)).any():
            bad = data[data != np.rint(data)][0]
            raise InvalidInputError(
                f"Lucene impact indexes store integer impacts, got the weight {bad!r}; quantise first "
                f"(indexing.quantize.quantize_uint8)")
    if data.size and data.min() < 0:
        raise InvalidInputError("impacts must be >= 0")
    if data.size and data.max() > MAX_IMPACT:
        raise InvalidInputError(f"impacts must be <= {MAX_IMPACT}, got {data.max()}; quantise to a smaller range "
                                f"(indexing.quantize.quantize_uint8)")
    out = sp.csr_matrix((data.astype(np.int64), csr.indices, csr.indptr), shape=csr.shape)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def write_vector_collection(folder: Path, ids: np.ndarray, impacts: sp.csr_matrix, vocab: list[str],
                            shards: int = 1) -> int:
    """Write the non-empty rows of ``impacts`` as JsonVectorCollection files; return how many.

    Each chunk of rows becomes its text in one vectorised pass (no per-document loop):
    every posting is rendered ``"term":impact``, then a leading piece (",", or the
    document's opening for its first posting) and a closing piece are added elementwise.
    """
    _check_utf8("".join(ids.tolist()), "an id")
    keys = np.array([json.dumps(t, ensure_ascii=False) + ":" for t in vocab], dtype=object)
    rows = np.flatnonzero(np.diff(impacts.indptr) > 0)
    written = 0
    for s, part in enumerate(np.array_split(rows, max(1, min(shards, len(rows))))):
        with open(folder / f"docs{s:03d}.jsonl", "w", encoding="utf-8") as f:
            for lo in range(0, len(part), _ROWS_PER_CHUNK):
                chunk = part[lo:lo + _ROWS_PER_CHUNK]
                f.write(_vector_lines(ids[chunk], impacts[chunk], keys))
                written += len(chunk)
    return written


def _vector_lines(ids: np.ndarray, sub: sp.csr_matrix, keys: np.ndarray) -> str:
    starts, ends = sub.indptr[:-1], sub.indptr[1:]
    opening = np.array([f'{{"id": {json.dumps(str(i), ensure_ascii=False)}, "contents": "", "vector": {{'
                        for i in ids.tolist()], dtype=object)
    lead = np.full(sub.nnz, ",", dtype=object)
    lead[starts] = opening
    tail = np.full(sub.nnz, "", dtype=object)
    tail[ends - 1] = "}}\n"
    postings = keys[sub.indices] + sub.data.astype(str).astype(object)
    return "".join((lead + postings + tail).tolist())


def write_text_collection(folder: Path, docs: Iterable[tuple[str, str, str]],
                          shards: int = 1) -> tuple[list[str], int]:
    """Write ``(id, title, text)`` documents as a JsonCollection; return (all ids, number written).

    Blocks of documents go round-robin to ``shards`` files so Anserini can index them in
    parallel; documents whose title and text are both blank are counted but not written.
    """
    if isinstance(docs, (str, bytes)):
        raise InvalidInputError("docs must be an iterable of (id, title, text) tuples")
    files = [open(folder / f"docs{s:03d}.jsonl", "w", encoding="utf-8") for s in range(max(1, shards))]
    ids: list[str] = []
    written = 0
    try:
        it = iter(docs)
        for b in itertools.count():
            batch = list(itertools.islice(it, DOCS_PER_BLOCK))
            if not batch:
                break
            lines = []
            for doc in batch:
                doc_id, contents = _text_doc(doc, len(ids))
                ids.append(doc_id)
                if contents.strip():
                    lines.append(json.dumps({"id": doc_id, "contents": contents}, ensure_ascii=False))
            if lines:
                files[b % len(files)].write("\n".join(lines) + "\n")
                written += len(lines)
    finally:
        for f in files:
            f.close()
    if written < len(ids):
        logger.info("%d of %d documents have no text; they are kept as ids but not indexed",
                    len(ids) - written, len(ids))
    return ids, written


def _text_doc(doc, i: int) -> tuple[str, str]:
    try:
        doc_id, title, text = doc
    except (TypeError, ValueError):
        raise InvalidInputError(f"document {i} must be an (id, title, text) tuple, got {doc!r:.80}") from None
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidInputError(f"document {i}: the id must be a non-empty string, got {doc_id!r}")
    title = "" if title is None else title
    text = "" if text is None else text
    if not isinstance(title, str) or not isinstance(text, str):
        raise InvalidInputError(f"document {doc_id!r}: title and text must be strings")
    contents = f"{title} {text}"
    _check_utf8(doc_id, f"document id {i}")
    _check_utf8(contents, f"document {doc_id!r}")
    return doc_id, contents


def _check_utf8(s: str, what: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(f"{what} is not valid unicode (it has a lone surrogate): {e}") from None
