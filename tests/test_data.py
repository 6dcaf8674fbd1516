"""Data readers and writers: every malformed input names its file and line; every writer
round-trips exactly; the real SciFact files and the bundled demo corpus load as published."""

import gzip
import json
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from embedx.data import (BeirDataset, DataFormatError, demo_corpus_path, iter_corpus, load_beir, load_corpus,
                         load_qrels, load_queries, read_jsonl, read_qrels_trec, read_run, write_beir,
                         write_corpus, write_jsonl, write_qrels, write_qrels_trec, write_queries, write_run)

DATA = Path(os.environ.get("EMBEDX_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SCIFACT = DATA / "scifact"


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def make_beir(root: Path, corpus: str, queries: str, qrels: str, gz: bool = False, split: str = "test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if gz:
        (root / "corpus.jsonl.gz").write_bytes(gzip.compress(corpus.encode()))
    else:
        (root / "corpus.jsonl").write_text(corpus, encoding="utf-8")
    (root / "queries.jsonl").write_text(queries, encoding="utf-8")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return root


CORPUS = lines({"_id": "d1", "title": "One", "text": "first doc"},
               {"_id": "d2", "title": "Two", "text": "second doc", "metadata": {"year": 2020}},
               {"_id": "d3", "text": "no title"})
QUERIES = lines({"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?", "metadata": {}},
                {"_id": "q3", "text": "unjudged"})
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td2\t2\n"


# ----------------------------------------------------------------------------- JSON lines
@pytest.mark.parametrize("gz", [False, True])
def test_malformed_json_line_reports_file_and_line(tmp_path, gz):
    text = lines({"_id": "a", "text": "x"}, "", '{"_id": "b", "text": "y"', {"_id": "c", "text": "z"})
    path = tmp_path / ("corpus.jsonl.gz" if gz else "corpus.jsonl")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    with pytest.raises(DataFormatError) as e:
        load_corpus(path)
    assert str(e.value).startswith(f"{path}:3: invalid JSON (")  # blank line 2 still counts
    assert e.value.line == 3 and e.value.path == str(path)


def test_non_object_line_and_blank_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('\n{"a": 1}\n   \n\n{"b": 2}\r\n')
    assert list(read_jsonl(p)) == [{"a": 1}, {"b": 2}]
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(p))


def test_invalid_utf8_is_reported_with_its_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": "ok"}\n{"a": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: not valid UTF-8"):
        list(read_jsonl(p))


def test_utf8_bom_is_ignored(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes('\ufeff{"a": "é"}\n'.encode())
    assert list(read_jsonl(p)) == [{"a": "é"}]


def test_truncated_gzip_is_a_clear_error(tmp_path):
    rows = [{"_id": str(i), "text": "some text " * 20} for i in range(2000)]
    full = tmp_path / "corpus.jsonl.gz"
    write_jsonl(full, rows)
    data = full.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.jsonl\.gz: truncated or corrupt gzip data after line \d+"):
        load_corpus(cut)
    notgz = tmp_path / "plain.jsonl.gz"
    notgz.write_text('{"_id": "a", "text": "b"}\n')
    with pytest.raises(DataFormatError, match="truncated or corrupt gzip data at the start"):
        load_corpus(notgz)


def test_gzip_content_under_a_plain_name_is_refused(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_bytes(gzip.compress(b'{"_id": "a", "text": "b"}\n'))
    with pytest.raises(DataFormatError, match="looks gzip-compressed"):
        load_corpus(p)


def test_write_jsonl_is_deterministic_and_refuses_nan(tmp_path):
    rows = [{"a": 1, "b": "ünï"}, {"c": [1, 2]}]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    assert write_jsonl(a, rows) == 2
    write_jsonl(b, iter(rows))
    assert a.read_bytes() == b.read_bytes()
    assert list(read_jsonl(a)) == rows
    assert "ünï" in gzip.decompress(a.read_bytes()).decode()  # UTF-8, not \\u escapes
    with pytest.raises(ValueError):
        write_jsonl(tmp_path / "nan.jsonl", [{"x": math.nan}])
    assert not (tmp_path / "nan.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- corpus / queries
@pytest.mark.parametrize("row,message", [
    ({"title": "t", "text": "x"}, "missing '_id'"),
    ({"_id": "", "text": "x"}, "empty '_id'"),
    ({"_id": ["a"], "text": "x"}, "'_id' must be a string, got array"),
    ({"_id": "a", "title": "t"}, "missing 'text'"),
    ({"_id": "a", "text": None}, "'text' must be a string, got null"),
    ({"_id": "a", "text": "x", "title": 3}, "'title' must be a string, got number"),
])
def test_corpus_field_errors_name_file_and_line(tmp_path, row, message):
    p = tmp_path / "corpus.jsonl"
    p.write_text(lines({"_id": "ok", "text": "fine"}, row))
    with pytest.raises(DataFormatError) as e:
        load_corpus(p)
    assert str(e.value) == f"{p}:2: {message}"


def test_corpus_defaults_and_extra_fields(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text(CORPUS + lines({"_id": 7, "title": None, "text": ""}))
    corpus = load_corpus(p)
    assert corpus == {"d1": {"title": "One", "text": "first doc"},
                      "d2": {"title": "Two", "text": "second doc", "metadata": {"year": 2020}},
                      "d3": {"title": "", "text": "no title"},
                      "7": {"title": "", "text": ""}}
    assert list(iter_corpus(p)) == list(corpus.items())


def test_duplicate_ids(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text(CORPUS + lines({"_id": "d2", "text": "again"}))
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:4: duplicate _id 'd2'"):
        load_corpus(p)
    q = tmp_path / "queries.jsonl"
    q.write_text(lines({"_id": "1", "text": "a"}, {"_id": 1, "text": "b"}))  # 1 and "1" are the same id
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:2: duplicate _id '1'"):
        load_queries(q)


def test_queries_keep_text_only(tmp_path):
    q = tmp_path / "queries.jsonl"
    q.write_text(QUERIES)
    assert load_queries(q) == {"q1": "first?", "q2": "second?", "q3": "unjudged"}
    q.write_text(lines({"_id": "q1"}))
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:1: missing 'text'"):
        load_queries(q)


def test_error_pickles_with_location():
    e = pickle.loads(pickle.dumps(DataFormatError("bad", "f.tsv", 3)))
    assert str(e) == "f.tsv:3: bad" and e.line == 3 and isinstance(e, ValueError)


# ----------------------------------------------------------------------------- qrels
def write_tsv(tmp_path, text, name="test.tsv") -> Path:
    p = tmp_path / "qrels" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(text)
    return p


def test_qrels_header_optional_blank_lines_and_crlf(tmp_path):
    with_header = write_tsv(tmp_path, "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n\r\nq1\td2\t0\r\nq2\td3\t2\r\n")
    expected = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    assert load_qrels(with_header) == expected
    assert load_qrels(tmp_path, "test") == expected  # BEIR folder + split
    assert load_qrels(tmp_path / "qrels", "test") == expected  # the qrels folder itself
    without = write_tsv(tmp_path, "q1\td1\t1\nq1\td2\t0\nq2\td3\t2\n", "other.tsv")
    assert load_qrels(without) == expected
    assert load_qrels(write_tsv(tmp_path, "q\td\t-1\n", "neg.tsv")) == {"q": {"d": -1}}


@pytest.mark.parametrize("line,message", [
    ("q2\td2", "expected 3 columns (query-id, corpus-id, score), got 2"),
    ("q2 d2 1", "expected 3 columns (query-id, corpus-id, score), got 1 (columns must be separated by tabs)"),
    ("q2\t0\td2\t1", "expected 3 columns (query-id, corpus-id, score), got 4 (4 columns look like TREC qrels"),
    ("q2\td2\t1.5", "score must be an integer, got '1.5'"),
    ("q2\td2\trelevant", "score must be an integer, got 'relevant'"),
    ("\td2\t1", "empty query-id"),
    ("q1\td1\t2", "duplicate judgement of query 'q1', document 'd1'"),
])
def test_qrels_errors_name_file_and_line(tmp_path, line, message):
    p = write_tsv(tmp_path, f"query-id\tcorpus-id\tscore\nq1\td1\t1\n\nq1\td3\t1\n{line}\n")
    with pytest.raises(DataFormatError) as e:
        load_qrels(p)
    assert str(e.value).startswith(f"{p}:5: {message}")


def test_missing_split_lists_the_splits_present(tmp_path):
    write_tsv(tmp_path, QRELS, "train.tsv")
    write_tsv(tmp_path, QRELS, "dev.tsv")
    with pytest.raises(FileNotFoundError, match=r"no qrels/test\.tsv \(splits present: dev, train\)"):
        load_qrels(tmp_path, "test")
    with pytest.raises(ValueError, match="bad split"):
        load_qrels(tmp_path, "../x")


# ----------------------------------------------------------------------------- load_beir
@pytest.mark.parametrize("gz", [False, True])
def test_load_beir_plain_and_gzip_corpus(tmp_path, gz):
    root = make_beir(tmp_path / "mini", CORPUS, QUERIES, QRELS, gz=gz)
    ds = load_beir(root)
    assert isinstance(ds, BeirDataset) and ds.name == "mini" and ds.split == "test"
    assert set(ds.corpus) == {"d1", "d2", "d3"} and ds.corpus["d3"]["title"] == ""
    assert ds.queries == {"q1": "first?", "q2": "second?", "q3": "unjudged"}  # all queries of the file
    assert ds.qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    assert ds.judged_queries() == {"q1": "first?", "q2": "second?"}  # only this split's


def test_load_beir_refuses_ambiguous_or_missing_files(tmp_path):
    root = make_beir(tmp_path / "b", CORPUS, QUERIES, QRELS)
    (root / "corpus.jsonl.gz").write_bytes(gzip.compress(CORPUS.encode()))
    with pytest.raises(DataFormatError, match="both corpus.jsonl and corpus.jsonl.gz exist"):
        load_beir(root)
    (root / "corpus.jsonl").unlink()
    (root / "queries.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no queries.jsonl or queries.jsonl.gz"):
        load_beir(root)
    with pytest.raises(FileNotFoundError):
        load_beir(tmp_path / "nowhere")
    with pytest.raises(DataFormatError, match="expected a BEIR folder"):
        load_beir(root / "corpus.jsonl.gz")
    with pytest.raises(ValueError, match="unknown_ids"):
        load_beir(root, unknown_ids="ignore")


def test_unknown_ids_error_by_default(tmp_path):
    qrels = QRELS + "q9\td1\t1\nq1\tdX\t1\nq2\tdY\t0\n"
    root = make_beir(tmp_path / "u", CORPUS, QUERIES, qrels)
    with pytest.raises(DataFormatError) as e:
        load_beir(root)
    msg = str(e.value)
    assert msg.startswith(str(root / "qrels" / "test.tsv") + ": ")
    assert "1 query id(s) not in queries.jsonl: 'q9'" in msg
    assert "2 judgement(s) of document ids not in corpus.jsonl: 'dX', 'dY'" in msg
    assert "unknown_ids='drop'" in msg


def test_unknown_ids_drop_mode_warns_and_drops(tmp_path, caplog):
    qrels = QRELS + "q9\td1\t1\nq1\tdX\t1\nq3\tdY\t1\n"
    root = make_beir(tmp_path / "u", CORPUS, QUERIES, qrels)
    with caplog.at_level("WARNING", logger="embedx.data.beir"):
        ds = load_beir(root, unknown_ids="drop")
    # q9 unknown query; q1's dX unknown doc; q3 only judged an unknown doc, so it goes too
    assert ds.qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    assert ds.queries["q3"] == "unjudged" and "q3" not in ds.judged_queries()
    assert any("dropped 3 judgement(s)" in r.getMessage() for r in caplog.records)


def test_many_unknown_ids_are_abbreviated(tmp_path):
    qrels = QRELS + "".join(f"q1\tmissing{i}\t1\n" for i in range(40))
    root = make_beir(tmp_path / "u", CORPUS, QUERIES, qrels)
    with pytest.raises(DataFormatError, match=r"40 judgement\(s\) .*'missing4', \.\.\. \(35 more\)"):
        load_beir(root)


# ----------------------------------------------------------------------------- BEIR writers
def sample_dataset() -> BeirDataset:
    corpus = {"d1": {"title": "Ünïcode", "text": "tab\tand \"quotes\" and\nnewline"},
              "d 2": {"title": "", "text": ""},
              "d3": {"title": "T", "text": "x", "metadata": {"url": "http://e", "n": [1, 2.5, None]}}}
    queries = {"q1": "what is ü?", "q2": "two", "10": "numeric-looking id"}
    qrels = {"q1": {"d1": 2, "d3": 0}, "10": {"d 2": 1}, "q2": {"d1": -1}}
    return BeirDataset(corpus, queries, qrels, name="sample", split="dev")


@pytest.mark.parametrize("compress", [False, True])
def test_beir_roundtrip_is_exact(tmp_path, compress):
    ds = sample_dataset()
    root = write_beir(tmp_path / "sample", ds, compress=compress)
    assert (root / ("corpus.jsonl.gz" if compress else "corpus.jsonl")).is_file()
    back = load_beir(root, split="dev")
    assert back == ds
    assert list(back.corpus) == list(ds.corpus) and list(back.qrels) == list(ds.qrels)  # order kept
    assert load_corpus(root) == ds.corpus and load_queries(root) == ds.queries
    assert load_qrels(root, "dev") == ds.qrels


def test_writing_the_other_compression_replaces_the_file(tmp_path):
    ds = sample_dataset()
    write_corpus(tmp_path, ds.corpus)
    write_corpus(tmp_path, ds.corpus, compress=True)
    assert not (tmp_path / "corpus.jsonl").exists()
    assert load_corpus(tmp_path) == ds.corpus
    write_queries(tmp_path, ds.queries, compress=True)
    write_queries(tmp_path, ds.queries)
    assert not (tmp_path / "queries.jsonl.gz").exists()


def test_qrels_file_layout(tmp_path):
    path = write_qrels(tmp_path, {"q1": {"d1": 1, "d2": np.int64(0)}}, "test")
    assert path == tmp_path / "qrels" / "test.tsv"
    assert path.read_text() == "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n"


@pytest.mark.parametrize("qrels,message", [
    ({"q\t1": {"d": 1}}, "has a tab"),
    ({"q": {" d": 1}}, "surrounding spaces"),
    ({"q": {"d": 1.5}}, "must be an integer"),
    ({"q": {"d": True}}, "must be an integer"),
    ({"": {"d": 1}}, "non-empty string"),
])
def test_qrels_writer_refuses_what_it_cannot_read_back(tmp_path, qrels, message):
    good = write_qrels(tmp_path, {"q": {"d": 1}}, "test").read_bytes()
    with pytest.raises(DataFormatError, match=message):
        write_qrels(tmp_path, qrels, "test")
    assert (tmp_path / "qrels" / "test.tsv").read_bytes() == good  # atomic: old file untouched
    assert not [p for p in (tmp_path / "qrels").iterdir() if ".tmp-" in p.name]


def test_corpus_writer_refuses_bad_documents(tmp_path):
    with pytest.raises(DataFormatError, match="has no string 'text'"):
        write_corpus(tmp_path, {"a": {"title": "t"}})
    with pytest.raises(DataFormatError, match="non-empty string"):
        write_corpus(tmp_path, {1: {"text": "t"}})
    with pytest.raises(DataFormatError, match="own '_id'"):
        write_corpus(tmp_path, {"a": {"_id": "b", "text": "t"}})
    assert not (tmp_path / "corpus.jsonl").exists()


# ----------------------------------------------------------------------------- TREC files
def test_trec_run_roundtrip_order_and_depth(tmp_path):
    run = {"q2": {"b": 1.5, "a": 1.5, "c": 3.0, "z": -0.25},  # a/b tie: trec_eval ranks b first
           "q1": {"d": float(np.float32(0.1)), "e": 1e-12, "f": 123456789.123}}
    path = tmp_path / "run.txt"
    assert write_run(path, run, tag="bm25") == 7
    assert path.read_text().splitlines()[:4] == [
        "q2 Q0 c 1 3.0 bm25", "q2 Q0 b 2 1.5 bm25", "q2 Q0 a 3 1.5 bm25", "q2 Q0 z 4 -0.25 bm25"]
    assert read_run(path) == run  # bit-exact floats
    assert write_run(tmp_path / "top2.txt", run, depth=2) == 4
    assert read_run(tmp_path / "top2.txt") == {"q2": {"c": 3.0, "b": 1.5},
                                               "q1": {"f": 123456789.123, "d": run["q1"]["d"]}}
    gz = tmp_path / "run.txt.gz"
    write_run(gz, run)
    assert read_run(gz) == run


@pytest.mark.parametrize("line,message", [
    ("q1 Q0 d2 2 0.5", "expected 6 columns (qid Q0 docid rank score tag), got 5"),
    ("q1 Q0 d2 x 0.5 t", "rank must be an integer, got 'x'"),
    ("q1 Q0 d2 2 high t", "score must be a number, got 'high'"),
    ("q1 Q0 d2 2 nan t", "score is NaN"),
    ("q1 Q0 d1 2 0.5 t", "document 'd1' listed twice for query 'q1'"),
])
def test_malformed_run_lines(tmp_path, line, message):
    p = tmp_path / "run.txt"
    p.write_text(f"q1 Q0 d1 1 1.0 t\n\n{line}\n")
    with pytest.raises(DataFormatError) as e:
        read_run(p)
    assert str(e.value) == f"{p}:3: {message}"


@pytest.mark.parametrize("run,message", [
    ({"q 1": {"d": 1.0}}, "without whitespace"),
    ({"q": {"d\t1": 1.0}}, "without whitespace"),
    ({"q": {"d": math.inf}}, "not finite"),
])
def test_run_writer_refuses_unreadable_output(tmp_path, run, message):
    with pytest.raises(DataFormatError, match=message):
        write_run(tmp_path / "r.txt", run)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="depth"):
        write_run(tmp_path / "r.txt", {"q": {"d": 1.0}}, depth=0)
    with pytest.raises(DataFormatError, match="run tag"):
        write_run(tmp_path / "r.txt", {"q": {"d": 1.0}}, tag="two words")


def test_trec_qrels_roundtrip_and_errors(tmp_path):
    qrels = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": -1}}
    p = tmp_path / "qrels.txt"
    assert write_qrels_trec(p, qrels) == 3
    assert p.read_text() == "q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 -1\n"
    assert read_qrels_trec(p) == qrels
    p.write_text("q1 0 d1 1\nq1 d1 1\n")
    with pytest.raises(DataFormatError, match=r"qrels\.txt:2: expected 4 columns \(qid iter docid grade\), got 3"):
        read_qrels_trec(p)
    p.write_text("q1 0 d1 yes\n")
    with pytest.raises(DataFormatError, match=r"qrels\.txt:1: grade must be an integer, got 'yes'"):
        read_qrels_trec(p)


# ----------------------------------------------------------------------------- real data
@pytest.mark.data
@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl.gz").is_file(), reason=f"SciFact not found under {DATA}")
def test_scifact_loads_as_published():
    t0 = time.perf_counter()
    test = load_beir(SCIFACT, split="test")
    elapsed = time.perf_counter() - t0
    assert len(test.corpus) == 5183
    assert len(test.qrels) == 300 and len(test.judged_queries()) == 300
    assert sum(map(len, test.qrels.values())) == 339
    assert len(test.queries) == 1109
    train = load_beir(SCIFACT, split="train")
    assert len(train.qrels) == 809
    assert not set(train.qrels) & set(test.qrels)
    doc = test.corpus["4983"]
    assert doc["title"].startswith("Microstructural development of human newborn cerebral white matter")
    assert elapsed < 1.0, f"loading SciFact took {elapsed:.2f} s"


# ----------------------------------------------------------------------------- demo corpus
def test_demo_corpus_is_a_consistent_beir_folder():
    path = demo_corpus_path()
    assert (path / "README.md").is_file()
    ds = load_beir(path)  # unknown ids would raise
    assert 60 <= len(ds.corpus) <= 80
    assert 10 <= len(ds.queries) <= 15 and ds.judged_queries() == ds.queries
    for qid, docs in ds.qrels.items():
        assert 1 <= len(docs) <= 3 and max(docs.values()) >= 1, qid
        assert set(docs) <= set(ds.corpus)
    for doc_id, doc in ds.corpus.items():
        assert doc["title"] and 2 <= doc["text"].count(". ") + 1 <= 5, doc_id
    assert len({d["text"] for d in ds.corpus.values()}) == len(ds.corpus)
