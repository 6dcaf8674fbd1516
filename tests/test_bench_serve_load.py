"""The serve-load benchmark's pieces: the load generator against a small local HTTP server
(counts, errors, the request and duration bounds, keep-alive, percentiles), the pipeline's
caching and timing helpers, and tiny runs of the whole pipeline on the demo corpus."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from embedx.bench.loadgen import LoadError, LoadResult, main as loadgen_main, run_load, summarize
from embedx.bench.pipelines import serve_load


class _Handler(BaseHTTPRequestHandler):
    """POST a JSON body: {"status": 503} answers that status, {"sleep": s} waits first,
    {"chunked": true} answers with chunked transfer encoding, {"close": true} closes the connection."""

    protocol_version = "HTTP/1.1"   # keep-alive

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.server.peers.add(self.client_address)
        time.sleep(body.get("sleep", 0))
        payload = json.dumps({"hits": [], "echo": body}).encode()
        self.send_response(body.get("status", 200))
        self.send_header("Content-Type", "application/json")
        if body.get("close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        if body.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(payload) // 2
            for part in (payload[:half], payload[half:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.peers = set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run(server, bodies, **kw):
    return run_load("127.0.0.1", server.server_address[1], "/v1/search", bodies, **kw)


def test_counts_errors_and_keep_alive(http_server):
    res = _run(http_server, [{"q": 1}, {"q": 2}, {"status": 503}], concurrency=3, requests=30, warmup=0)
    assert res.sent == 30 and res.ok == 20 and res.errors == {"http_503": 10}
    assert len(res.latencies_ms) == 20 and all(x > 0 for x in res.latencies_ms)
    assert res.stopped_by == "requests"
    assert len(http_server.peers) == 3          # one keep-alive connection per client
    stats = res.stats()
    assert stats["requests"] == 30 and stats["ok"] == 20 and stats["errors"] == 10
    assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]


def test_warmup_requests_are_not_counted(http_server):
    res = _run(http_server, [{"q": 1}], concurrency=2, requests=5, warmup=3)
    assert res.sent == 5 and res.ok == 5 and len(res.latencies_ms) == 5


def test_duration_caps_the_run(http_server):
    t = time.perf_counter()
    res = _run(http_server, [{"sleep": 0.05}], concurrency=2, requests=100_000, duration_s=0.3, warmup=0)
    wall = time.perf_counter() - t
    assert res.stopped_by == "duration"
    assert 2 <= res.sent <= 20 and res.ok == res.sent and not res.errors
    assert 0.25 <= res.elapsed_s < 1.0 and wall < 2.0
    assert res.stats()["p50_ms"] >= 45


def test_timeouts_chunked_bodies_and_closed_connections(http_server):
    res = _run(http_server, [{"sleep": 0.3}], requests=2, timeout_s=0.05, warmup=0)
    assert res.errors == {"timeout": 2} and res.ok == 0
    assert np.isnan(res.stats()["p50_ms"])
    res = _run(http_server, [{"chunked": True}, {"close": True}], concurrency=2, requests=12, warmup=1)
    assert res.ok == 12 and not res.errors


def test_refused_connections_count_as_errors():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # nothing listens there once closed
    res = run_load("127.0.0.1", port, "/", [b"{}"], requests=3, warmup=0)
    assert res.errors == {"connection": 3} and res.ok == 0


def test_bad_settings_are_refused():
    with pytest.raises(LoadError):
        run_load("127.0.0.1", 1, "/", [b"{}"], concurrency=0)
    with pytest.raises(LoadError):
        run_load("127.0.0.1", 1, "/", [], requests=1)


def test_summarize_percentiles_and_qps():
    s = summarize(list(range(1, 101)), elapsed_s=2.0, errors=3)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01) and s["max_ms"] == 100 and s["mean_ms"] == pytest.approx(50.5)
    assert s["qps"] == pytest.approx(50.0) and s["ok"] == 100 and s["requests"] == 103 and s["errors"] == 3


def test_command_line_writes_the_result(http_server, tmp_path):
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text('{"q": 1}\n\n{"status": 404}\n')
    out = tmp_path / "out.json"
    port = http_server.server_address[1]
    assert loadgen_main(["--url", f"http://127.0.0.1:{port}/v1/search", "--bodies", str(bodies), "--requests", "6",
                         "--concurrency", "2", "--warmup", "0", "--out", str(out)]) == 0
    res = LoadResult.from_json(json.loads(out.read_text()))
    assert res.sent == 6 and res.ok == 3 and res.errors == {"http_404": 3}
    with pytest.raises(SystemExit):
        loadgen_main(["--url", "https://x/y", "--bodies", str(bodies)])


# ---------------------------------------------------------------------- pipeline helpers
def test_cached_array_computes_once(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return np.arange(6, dtype=np.float64).reshape(3, 2)

    a, hit = serve_load.cached_array(tmp_path / "c" / "x.npy", 3, make)
    b, hit2 = serve_load.cached_array(tmp_path / "c" / "x.npy", 3, make)
    assert (hit, hit2) == (False, True) and len(calls) == 1
    assert a.dtype == np.float32 and np.array_equal(a, b)
    _, hit3 = serve_load.cached_array(tmp_path / "c" / "x.npy", 4, make)   # another corpus size: recomputed
    assert not hit3 and len(calls) == 2


def test_keys_change_with_content(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"abc")
    d1 = serve_load.file_digest(tmp_path / "m")
    assert serve_load.file_digest(tmp_path / "m") == d1
    (tmp_path / "m" / "w.bin").write_bytes(b"abdd")
    assert serve_load.file_digest(tmp_path / "m") != d1
    assert serve_load.settings_key("a", {"x": 1}) == serve_load.settings_key("a", {"x": 1})
    assert serve_load.settings_key("a", {"x": 1}) != serve_load.settings_key("a", {"x": 2})
    assert serve_load.corpus_fingerprint(["a"], ["t"]) != serve_load.corpus_fingerprint(["a"], ["u"])


def test_batch_summary_reads_prometheus_text():
    text = ('embedx_encoder_batch_texts_sum{collection="scifact",side="dense"} 120.0\n'
            'embedx_encoder_batch_texts_count{collection="scifact",side="dense"} 40.0\n'
            'embedx_encoder_batch_texts_bucket{collection="scifact",side="dense",le="1.0"} 3.0\n')
    out = serve_load._batch_summary(text)
    assert out == {'collection="scifact",side="dense"': {"calls": 40.0, "mean_texts_per_call": 3.0}}


# ---------------------------------------------------------------------- tiny runs
def _spec(tmp_path, **params):
    from embedx.bench.spec import Spec
    from embedx.data import demo_corpus_path

    base = {"modes": ["sparse"], "concurrency": [1, 4], "rounds": 2, "c1_requests": 12, "requests": 40,
            "duration_s": 20, "encoders": {"enabled": False}, "cache_dir": str(tmp_path / "cache")}
    return Spec(name="serve-load", pipeline="serve-load",
                dataset={"path": str(demo_corpus_path()), "split": "test"}, params={**base, **params})


@pytest.mark.slow
def test_tiny_sparse_run_through_the_real_server(tmp_path):
    import os

    from embedx.bench.runner import run_spec

    rec = run_spec(_spec(tmp_path, c1_scheduling=["fifo", "shared"]), data_root=tmp_path,
                   results_dir=tmp_path / "results", work_dir=tmp_path / "w")
    m = rec["metrics"]
    assert m["sparse_c1_requests"] == 24 and m["sparse_c1_errors"] == 0      # 2 rounds x 12
    assert m["sparse_c4_requests"] == 40 and m["sparse_c4_errors"] == 0 and m["errors_total"] == 0
    for key in ("sparse_c1_p50_ms", "sparse_inproc_p50_ms", "sparse_c4_qps", "sparse_c4_p99_ms",
                "sparse_c1_p50_ms_shared", "sparse_client_cpu_ms_per_query"):
        assert m[key] > 0
    assert m["sparse_server_cpu_ms_per_query"] >= 0     # clock ticks of 10 ms: a dozen requests may read 0
    assert m["sparse_c1_p50_ms"] <= m["sparse_c1_p99_ms"]
    for key in ("sparse_http_overhead_p50_ms", "sparse_http_overhead_p50_ms_shared", "sparse_c4_p99_over_p50",
                "sparse_http_cpu_overhead_ms"):
        assert np.isfinite(m[key])
    assert "sparse_http_overhead_p50_ms" in rec["headline"]
    c1 = rec["details"]["load"]["c1"]
    assert c1["shared"]["fifo_priority"] is None
    rounds = c1["fifo"]["per_round"]["sparse"]
    assert len(rounds["http_p50_ms"]) == len(rounds["inproc_p50_ms"]) == len(rounds["server_cpu_ms"]) == 2
    assert os.sched_getscheduler(0) == os.SCHED_OTHER        # this process is back to normal scheduling
    assert "Traceback" not in rec["details"]["load"]["server_log_tail"]
    assert (tmp_path / "results" / "serve-load.json").is_file()


def tiny_onnx_encoder(folder, corpus, dim: int = 16):
    """A real ``onnx-dense`` folder in milliseconds: a word-level tokenizer over the corpus and a
    graph that looks token embeddings up in a fixed random table (mean-pooled and normalised by
    the runtime encoder), so the server subprocess loads it like any export."""
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from embedx.retrieval import doc_text
    from serving.encoders.onnx import encoder_hash

    words = sorted({w for d in corpus.values() for w in doc_text(d).lower().split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    table = np.random.default_rng(0).standard_normal((tok.get_vocab_size(), dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["token_embeddings"], axis=0)], "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "seq", dim])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "tokenizer.json").write_text(tok.to_str())
    config = {"type": "onnx-dense", "kind": "dense", "format_version": 1, "model": "model.onnx",
              "tokenizer": "tokenizer.json", "inputs": ["input_ids", "attention_mask"], "output": "token_embeddings",
              "pooling": "mean", "normalize": True, "max_length": 64, "dimension": dim}
    config["hash"] = encoder_hash((folder / "model.onnx").read_bytes(), tok.to_str(), config)
    (folder / "encoder.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_tiny_dense_and_hybrid_run_through_the_real_server(tmp_path):
    """An ONNX encoder folder serves dense and hybrid queries; its document vectors are cached."""
    from embedx.bench.runner import run_spec
    from test_server_kit import demo_corpus

    pytest.importorskip("onnxruntime")
    folder = tiny_onnx_encoder(tmp_path / "enc", demo_corpus())
    rec = run_spec(_spec(tmp_path, modes=["dense", "hybrid"], concurrency=[1, 3], rounds=1, requests=12,
                         encoders={"enabled": False, "folder": str(folder)}),
                   data_root=tmp_path, results_dir=None, work_dir=tmp_path / "w")
    m = rec["metrics"]
    assert m["dense_c1_errors"] == 0 and m["hybrid_c1_requests"] == 12
    assert m["dense_c3_errors"] == 0 and m["hybrid_c3_errors"] == 0 and m["hybrid_c3_requests"] == 12
    assert m["dense_inproc_p50_ms"] > 0 and np.isfinite(m["hybrid_http_overhead_p50_ms"])
    assert list((tmp_path / "cache" / "embeddings").glob("onnx_fp32-*.npy"))
    config = rec["details"]["load"]["config"]["collections"]["scifact"]
    assert config["default_mode"] == "hybrid" and config["dense"]["encoder"] == str(folder)


class _FakeEncoder:
    """``encode`` = a fixed random projection of word counts; ``noise`` perturbs its vectors."""

    def __init__(self, vocab, noise=0.0, dim=8):
        self.vocab, self.noise = vocab, noise
        self.proj = np.random.default_rng(1).standard_normal((len(vocab), dim)).astype(np.float32)

    def encode(self, texts, batch_size=32):
        counts = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        for row, t in enumerate(texts):
            for w in t.lower().split():
                if w in self.vocab:
                    counts[row, self.vocab[w]] += 1
        out = counts @ self.proj
        out += self.noise * np.random.default_rng(len(texts)).standard_normal(out.shape).astype(np.float32)
        return out


@pytest.mark.slow
def test_encoder_comparison_on_fake_encoders(tmp_path):
    """Throughput and quality of the encoder part, with stand-ins for torch and ONNX (slow only
    because ranx compiles its metrics on first use)."""
    pytest.importorskip("torch")
    from embedx.data import demo_corpus_path, load_beir

    ds = load_beir(demo_corpus_path(), split="test")
    qids = [q for q in ds.qrels if q in ds.queries]
    bench = serve_load.EncoderBench(ds, qids, {"throughput_docs": 10, "rounds": 2, "clock": "wall"}, 1, tmp_path)
    vocab = {w: i for i, w in enumerate(sorted({w for t in bench.doc_texts + bench.query_texts
                                                for w in t.lower().split()}))}
    encoders = {"torch": _FakeEncoder(vocab), "onnx_fp32": _FakeEncoder(vocab), "onnx_int8": _FakeEncoder(vocab, 0.5)}
    m, d = bench.throughput(encoders)
    assert d["docs"] == 10 and d["queries"] == len(qids) and d["docs_per_s"]["torch"]["rounds"] == 2
    for name in encoders:
        assert m[f"{name}_docs_per_s"] > 0 and m[f"{name}_queries_per_s"] > 0
    assert m["onnx_fp32_speedup_docs"] > 0 and "torch_speedup_docs" not in m
    bench.doc_vectors = {n: e.encode(bench.doc_texts) for n, e in encoders.items()}
    q, details = bench.quality(encoders)
    assert q["onnx_fp32_ndcg@10_diff"] == 0 and q["onnx_fp32_query_min_cosine"] == pytest.approx(1, abs=1e-5)
    assert 0 < q["torch_ndcg@10"] <= 1 and q["onnx_int8_ndcg@10_diff"] == abs(q["onnx_int8_ndcg@10"] -
                                                                            q["torch_ndcg@10"])
    assert "onnx_int8_queries_fp32_docs_ndcg@10" in q and q["onnx_int8_query_min_cosine"] < 1
