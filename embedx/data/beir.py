"""BEIR data sets in and out, in the layout BEIR publishes::

    <dir>/corpus.jsonl[.gz]     {"_id": ..., "title": ..., "text": ..., (other fields kept)}
    <dir>/queries.jsonl[.gz]    {"_id": ..., "text": ..., (other fields ignored)}
    <dir>/qrels/<split>.tsv     query-id <TAB> corpus-id <TAB> score   (header line optional)

Readers are strict, because a silently skipped line changes every score computed later: a
missing ``_id`` or ``text``, a duplicate id, a non-integer score or a judgement of an unknown
id is a :class:`DataFormatError` that names the file and line. Writers are atomic and
round-trip exactly (``load_x(write_x(d, x)) == x``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Mapping

from .errors import DataFormatError, integer_grade
from .jsonl import iter_jsonl, iter_lines, open_text_writer, write_jsonl

log = logging.getLogger(__name__)

QRELS_HEADER = ("query-id", "corpus-id", "score")
_HEADER_FIRST_COLUMN = frozenset({"query-id", "query_id", "queryid", "qid", "query"})
_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "number", float: "number",
              bool: "boolean", type(None): "null"}


@dataclass
class BeirDataset:
    """One split of a BEIR data set.

    ``queries`` holds every query of ``queries.jsonl`` (BEIR shares that file between splits,
    so for SciFact's test split it has all 1,109 claims); ``qrels`` holds this split's
    judgements only. Search and score :meth:`judged_queries`: the queries this split judges.
    """

    corpus: dict[str, dict]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    split: str = "test"

    def judged_queries(self) -> dict[str, str]:
        """Queries with at least one judgement (of any grade) in this split, in file order.

        These are the queries trec_eval's ``-c`` averages over: a judged query with no
        relevant document still counts (as 0).
        """
        return {q: text for q, text in self.queries.items() if q in self.qrels}

    def __repr__(self) -> str:
        return (f"BeirDataset(name={self.name!r}, split={self.split!r}, docs={len(self.corpus):,}, "
                f"queries={len(self.queries):,}, judged={len(self.qrels):,}, "
                f"judgements={sum(map(len, self.qrels.values())):,})")


# ----------------------------------------------------------------------------- locating files
def find_member(directory: str | os.PathLike, stem: str) -> Path:
    """``<dir>/<stem>.jsonl`` or ``<dir>/<stem>.jsonl.gz``; both present is refused as ambiguous."""
    d = Path(directory)
    present = [p for p in (d / f"{stem}.jsonl", d / f"{stem}.jsonl.gz") if p.is_file()]
    if len(present) == 2:
        raise DataFormatError(f"both {stem}.jsonl and {stem}.jsonl.gz exist; keep one", d)
    if not present:
        raise FileNotFoundError(f"{d}: no {stem}.jsonl or {stem}.jsonl.gz")
    return present[0]


def qrels_path(path_or_dir: str | os.PathLike, split: str = "test") -> Path:
    """The qrels file of ``split``: the path itself if it is a file, else ``qrels/<split>.tsv``
    under it (or ``<split>.tsv`` when it is the ``qrels`` folder itself)."""
    p = Path(path_or_dir)
    if not p.is_dir():
        return p
    if not split or split in (".", "..") or "/" in split or os.sep in split:
        raise ValueError(f"bad split name {split!r}")
    for candidate in (p / "qrels" / f"{split}.tsv", p / f"{split}.tsv"):
        if candidate.is_file():
            return candidate
    folder = p / "qrels" if (p / "qrels").is_dir() else p
    splits = sorted(x.stem for x in folder.glob("*.tsv"))
    hint = f" (splits present: {', '.join(splits)})" if splits else ""
    raise FileNotFoundError(f"{p}: no qrels/{split}.tsv{hint}")


def _member(path_or_dir: str | os.PathLike, stem: str) -> Path:
    p = Path(path_or_dir)
    return find_member(p, stem) if p.is_dir() else p


# ----------------------------------------------------------------------------- readers
def _json_type(value: object) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _take_id(row: dict, path: Path, lineno: int) -> str:
    value = row.pop("_id", None)
    if type(value) is str and value:
        return value
    if type(value) is int:  # some corpora write numeric ids; ids are strings everywhere else
        return str(value)
    if value is None:
        raise DataFormatError("missing '_id'", path, lineno)
    if value == "":
        raise DataFormatError("empty '_id'", path, lineno)
    raise DataFormatError(f"'_id' must be a string, got {_json_type(value)}", path, lineno)


def _take_text(row: dict, path: Path, lineno: int) -> str:
    text = row.get("text")
    if type(text) is str:
        return text
    if "text" not in row:
        raise DataFormatError("missing 'text'", path, lineno)
    raise DataFormatError(f"'text' must be a string, got {_json_type(text)}", path, lineno)


def _corpus_rows(path: Path) -> Iterator[tuple[int, str, dict]]:
    for lineno, row in iter_jsonl(path):
        doc_id = _take_id(row, path, lineno)
        _take_text(row, path, lineno)
        title = row.get("title")
        if title is None:
            row["title"] = ""
        elif type(title) is not str:
            raise DataFormatError(f"'title' must be a string, got {_json_type(title)}", path, lineno)
        yield lineno, doc_id, row


def iter_corpus(path_or_dir: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Stream ``(doc id, {"title", "text", ...})`` without holding the corpus (no duplicate check).

    A missing or null title becomes ``""``; fields other than ``_id`` (``metadata``, ...) are kept.
    """
    for _, doc_id, doc in _corpus_rows(_member(path_or_dir, "corpus")):
        yield doc_id, doc


def load_corpus(path_or_dir: str | os.PathLike) -> dict[str, dict]:
    """Document id -> ``{"title": str, "text": str, ...}`` from a corpus file or a BEIR folder."""
    path = _member(path_or_dir, "corpus")
    corpus: dict[str, dict] = {}
    for lineno, doc_id, doc in _corpus_rows(path):
        if doc_id in corpus:
            raise DataFormatError(f"duplicate _id {doc_id!r}", path, lineno)
        corpus[doc_id] = doc
    return corpus


def load_queries(path_or_dir: str | os.PathLike) -> dict[str, str]:
    """Query id -> text from a queries file or a BEIR folder (other fields are ignored)."""
    path = _member(path_or_dir, "queries")
    queries: dict[str, str] = {}
    for lineno, row in iter_jsonl(path):
        qid = _take_id(row, path, lineno)
        if qid in queries:
            raise DataFormatError(f"duplicate _id {qid!r}", path, lineno)
        queries[qid] = _take_text(row, path, lineno)
    return queries


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _column_hint(text: str, n_columns: int) -> str:
    if n_columns == 1 and len(text.split()) == 3:
        return " (columns must be separated by tabs)"
    if n_columns == 4:
        return " (4 columns look like TREC qrels: read them with embedx.data.read_qrels_trec)"
    return ""


def load_qrels(path_or_dir: str | os.PathLike, split: str = "test") -> dict[str, dict[str, int]]:
    """Query id -> {doc id: integer grade} from a BEIR qrels ``.tsv`` (or a BEIR folder and split).

    The ``query-id corpus-id score`` header is optional, blank lines are skipped, fields are
    stripped of surrounding spaces. Grades of 0 (judged non-relevant) are kept.
    """
    path = qrels_path(path_or_dir, split)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for lineno, text in iter_lines(path):
        if not text or text.isspace():
            continue
        if first:
            first = False
            words = text.split()
            if words[0].lower() in _HEADER_FIRST_COLUMN and not _is_int(words[-1]):
                continue
        cols = text.split("\t")
        if len(cols) != 3:
            raise DataFormatError(f"expected 3 columns (query-id, corpus-id, score), got {len(cols)}"
                                  f"{_column_hint(text, len(cols))}", path, lineno)
        qid, doc_id, grade = cols[0].strip(), cols[1].strip(), cols[2].strip()
        if not qid or not doc_id:
            raise DataFormatError(f"empty {'query-id' if not qid else 'corpus-id'}", path, lineno)
        add_judgement(qrels, qid, doc_id, grade, path, lineno, "score")
    return qrels


def add_judgement(qrels: dict, qid: str, doc_id: str, grade: str, path: Path, lineno: int,
                  column: str = "grade") -> None:
    """Parse one judgement's integer grade and record it, refusing a repeated (query, doc) pair;
    shared by the BEIR .tsv and TREC qrels readers."""
    try:
        value = int(grade)
    except ValueError:
        raise DataFormatError(f"{column} must be an integer, got {grade!r}", path, lineno) from None
    docs = qrels.setdefault(qid, {})
    if doc_id in docs:
        raise DataFormatError(f"duplicate judgement of query {qid!r}, document {doc_id!r}", path, lineno)
    docs[doc_id] = value


def _few(items: Iterable[str], n: int = 5) -> str:
    seen = list(dict.fromkeys(items))
    shown = ", ".join(repr(x) for x in seen[:n])
    return shown + (f", ... ({len(seen) - n} more)" if len(seen) > n else "")


def _check_ids(qrels: dict[str, dict[str, int]], queries: Mapping[str, str], corpus: Mapping[str, dict],
               path: Path, queries_name: str, corpus_name: str,
               unknown_ids: str) -> dict[str, dict[str, int]]:
    """Refuse (or drop) judgements whose query or document the data set does not have."""
    bad_queries = [q for q in qrels if q not in queries]
    bad_docs = [d for docs in qrels.values() for d in docs if d not in corpus]
    if not bad_queries and not bad_docs:
        return qrels
    parts = []
    if bad_queries:
        parts.append(f"{len(bad_queries)} query id(s) not in {queries_name}: {_few(bad_queries)}")
    if bad_docs:
        parts.append(f"{len(bad_docs)} judgement(s) of document ids not in {corpus_name}: {_few(bad_docs)}")
    summary = "; ".join(parts)
    if unknown_ids == "error":
        raise DataFormatError(f"{summary} (load with unknown_ids='drop' to drop them)", path)
    kept: dict[str, dict[str, int]] = {}
    for q, docs in qrels.items():
        if q in queries:
            judged = {d: g for d, g in docs.items() if d in corpus}
            if judged:
                kept[q] = judged
    dropped = sum(map(len, qrels.values())) - sum(map(len, kept.values()))
    log.warning("%s: dropped %d judgement(s) (%d queries left): %s", path, dropped, len(kept), summary)
    return kept


def load_beir(directory: str | os.PathLike, split: str = "test", *,
              unknown_ids: Literal["error", "drop"] = "error") -> BeirDataset:
    """Load corpus, queries and the ``split`` judgements of a BEIR folder.

    Judgements of a query or document the folder does not contain are an error by default
    (they would silently count as misses); ``unknown_ids="drop"`` drops them with a warning,
    and drops queries left with no judgement.
    """
    if unknown_ids not in ("error", "drop"):
        raise ValueError(f"unknown_ids must be 'error' or 'drop', got {unknown_ids!r}")
    d = Path(directory)
    if not d.is_dir():
        if d.exists():
            raise DataFormatError("expected a BEIR folder (corpus.jsonl[.gz], queries.jsonl[.gz], "
                                  "qrels/<split>.tsv), got a file", d)
        raise FileNotFoundError(f"{d}: no such directory")
    t0 = time.perf_counter()
    corpus_file, queries_file, qrels_file = find_member(d, "corpus"), find_member(d, "queries"), qrels_path(d, split)
    corpus = load_corpus(corpus_file)
    queries = load_queries(queries_file)
    qrels = _check_ids(load_qrels(qrels_file), queries, corpus, qrels_file,
                       queries_file.name, corpus_file.name, unknown_ids)
    ds = BeirDataset(corpus, queries, qrels, name=d.resolve().name, split=split)
    log.info("loaded %r in %.3f s", ds, time.perf_counter() - t0)
    return ds


# ----------------------------------------------------------------------------- writers
def _check_json_id(value: object, what: str, path: Path) -> str:
    if type(value) is not str or not value:
        raise DataFormatError(f"{what} {value!r} must be a non-empty string", path)
    return value


def _check_tsv_id(value: object, what: str, path: Path) -> str:
    _check_json_id(value, what, path)
    if value != value.strip() or any(c in value for c in "\t\r\n"):
        raise DataFormatError(f"{what} {value!r} has a tab, a line break or surrounding spaces, "
                              "which a qrels file cannot hold", path)
    return value


def _write_member(directory: str | os.PathLike, stem: str, rows: Iterable[dict], compress: bool) -> Path:
    """Write ``<stem>.jsonl[.gz]`` and remove the other variant, so the folder stays unambiguous."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{stem}.jsonl{'.gz' if compress else ''}"
    write_jsonl(target, rows)
    other = d / f"{stem}.jsonl{'' if compress else '.gz'}"
    if other.exists():
        other.unlink()
        log.info("removed %s, replaced by %s", other, target.name)
    return target


def write_corpus(directory: str | os.PathLike, corpus: Mapping[str, Mapping], *, compress: bool = False) -> Path:
    """Write ``corpus.jsonl`` (``.gz`` with ``compress``): ``_id``, ``title``, ``text``, then any other fields."""
    target = Path(directory) / f"corpus.jsonl{'.gz' if compress else ''}"

    def rows() -> Iterator[dict]:
        for doc_id, doc in corpus.items():
            _check_json_id(doc_id, "document id", target)
            if not isinstance(doc, Mapping) or type(doc.get("text")) is not str:
                raise DataFormatError(f"document {doc_id!r} has no string 'text'", target)
            if "_id" in doc:
                raise DataFormatError(f"document {doc_id!r} has its own '_id' field", target)
            title = doc.get("title") or ""
            if type(title) is not str:
                raise DataFormatError(f"document {doc_id!r}: 'title' must be a string", target)
            yield {"_id": doc_id, "title": title, "text": doc["text"],
                   **{k: v for k, v in doc.items() if k not in ("title", "text")}}

    return _write_member(directory, "corpus", rows(), compress)


def write_queries(directory: str | os.PathLike, queries: Mapping[str, str], *, compress: bool = False) -> Path:
    """Write ``queries.jsonl`` (``.gz`` with ``compress``) as ``{"_id", "text"}`` lines."""
    target = Path(directory) / f"queries.jsonl{'.gz' if compress else ''}"

    def rows() -> Iterator[dict]:
        for qid, text in queries.items():
            _check_json_id(qid, "query id", target)
            if type(text) is not str:
                raise DataFormatError(f"query {qid!r}: text must be a string, got {type(text).__name__}", target)
            yield {"_id": qid, "text": text}

    return _write_member(directory, "queries", rows(), compress)


def write_qrels(directory: str | os.PathLike, qrels: Mapping[str, Mapping[str, int]], split: str = "test") -> Path:
    """Write ``qrels/<split>.tsv`` with BEIR's header line; integer grades only."""
    if not split or "/" in split or os.sep in split or split in (".", ".."):
        raise ValueError(f"bad split name {split!r}")
    folder = Path(directory) / "qrels"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{split}.tsv"
    with open_text_writer(target) as f:
        f.write("\t".join(QRELS_HEADER) + "\n")
        for qid, docs in qrels.items():
            _check_tsv_id(qid, "query id", target)
            for doc_id, grade in docs.items():
                _check_tsv_id(doc_id, "document id", target)
                grade = integer_grade(qid, doc_id, grade, target)
                f.write(f"{qid}\t{doc_id}\t{grade}\n")
    return target


def write_beir(directory: str | os.PathLike, dataset: BeirDataset, *, compress: bool = False) -> Path:
    """Write a whole split as a BEIR folder (corpus, queries, ``qrels/<dataset.split>.tsv``)."""
    d = Path(directory)
    write_corpus(d, dataset.corpus, compress=compress)
    write_queries(d, dataset.queries, compress=compress)
    write_qrels(d, dataset.qrels, dataset.split)
    return d
