"""The HTTP server through its OpenAPI contract: search modes, vectors, batches, limits, errors,
API key, timeouts, metrics, config checks and micro-batching."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from embedx.retrieval import search_texts as inprocess_texts  # noqa: E402
from indexing.bundle import load_bundle  # noqa: E402
from indexing.fusion import fuse_results  # noqa: E402
from serving.app import create_app  # noqa: E402
from serving.batching import MicroBatcher  # noqa: E402
from serving.config import ConfigError, load_config, parse_config  # noqa: E402
from test_server_kit import HashEncoder, config_for, demo_queries  # noqa: E402

QUERY = "why does the moon cause tides"


@pytest.fixture(scope="module")
def client(workspace):
    with TestClient(create_app(config_for(workspace))) as c:
        yield c


def ids(hits):
    return [h["id"] for h in hits]


# ---------------------------------------------------------------------- search
def test_sparse_search_matches_in_process_search(client, workspace):
    r = client.post("/v1/search", json={"query": QUERY, "mode": "sparse", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["collection"] == "demo" and body["mode"] == "sparse" and body["generation"] == 1
    with load_bundle(workspace / "bm25") as b:
        want = inprocess_texts(b, [QUERY], 5).hits(0)
        fields = b.fields([d for d, _ in want])
    assert [(h["id"], pytest.approx(h["score"], rel=1e-6)) for h in body["hits"]] == want
    assert [h["fields"] for h in body["hits"]] == fields
    assert body["hits"][0]["fields"]["title"] == "The Moon and the tides"
    assert set(body["timings"]) == {"encode_ms", "search_ms", "fuse_ms", "fields_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["search_ms"] >= 0


def test_dense_and_hybrid_search_match_the_index_layer(client, workspace):
    enc = HashEncoder(32, "v1")
    with load_bundle(workspace / "dense-v1") as d, load_bundle(workspace / "bm25") as s:
        dense = d.search(enc.encode([QUERY]), 20)
        sparse = inprocess_texts(s, [QUERY], 20)
    r = client.post("/v1/search", json={"query": QUERY, "mode": "dense", "k": 5, "fields": []})
    assert r.status_code == 200, r.text
    assert ids(r.json()["hits"]) == [i for i, _ in dense.hits(0)[:5]]
    assert all(h["fields"] is None for h in r.json()["hits"])

    rrf = fuse_results(sparse, dense, method="rrf", k=60, limit=5)[0]
    r = client.post("/v1/search", json={"query": QUERY, "k": 5})          # the collection's default: hybrid
    assert r.json()["mode"] == "hybrid"
    assert [(h["id"], pytest.approx(h["score"])) for h in r.json()["hits"]] == rrf

    lin = fuse_results(sparse, dense, method="linear", alpha=0.3, norm="zscore", limit=5)[0]
    r = client.post("/v1/search", json={"query": QUERY, "k": 5, "mode": "hybrid",
                                        "fusion": {"method": "linear", "alpha": 0.3, "norm": "zscore"}})
    assert [(h["id"], pytest.approx(h["score"])) for h in r.json()["hits"]] == lin


def test_batch_search_equals_single_searches(client):
    queries = demo_queries()[:6]
    r = client.post("/v1/search/batch", json={"queries": queries, "k": 3, "mode": "hybrid", "fields": ["title"]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(queries)
    for q, res in zip(queries, results):
        single = client.post("/v1/search", json={"query": q, "k": 3, "mode": "hybrid", "fields": ["title"]}).json()
        assert res["hits"] == single["hits"]
        assert all(set(h["fields"]) <= {"title"} for h in res["hits"])


def test_vector_search_dense_sparse_and_both(client, workspace):
    enc = HashEncoder(32, "v1")
    vec = enc.encode([QUERY])[0].tolist()
    dense = client.post("/v1/search/vector", json={"dense": vec, "k": 4}).json()
    assert dense["mode"] == "dense"
    assert ids(dense["hits"]) == ids(client.post("/v1/search", json={"query": QUERY, "mode": "dense",
                                                                      "k": 4}).json()["hits"])
    with load_bundle(workspace / "bm25") as b:
        vocab = list(b.index.vocab)
    words = {"moon": 1.0, "tides": 1.0, "cause": 1.0}
    by_token = client.post("/v1/search/vector", json={"sparse": {**words, "notaword": 3.0}, "k": 4}).json()
    by_index = client.post("/v1/search/vector", json={
        "sparse": {"indices": [vocab.index(w) for w in words], "values": list(words.values())}, "k": 4}).json()
    assert by_token["mode"] == by_index["mode"] == "sparse"
    assert by_token["hits"] == by_index["hits"]
    assert by_token["hits"][0]["id"] == "astronomy-03"
    both = client.post("/v1/search/vector", json={"dense": vec, "sparse": words, "k": 4}).json()
    assert both["mode"] == "hybrid" and len(both["hits"]) == 4

    batch = client.post("/v1/search/vector/batch", json={"queries": [{"dense": vec}, {"sparse": words},
                                                                     {"dense": vec, "sparse": words}], "k": 4})
    assert batch.status_code == 200, batch.text
    assert [res["hits"] for res in batch.json()["results"]] == [dense["hits"], by_token["hits"], both["hits"]]
    assert batch.json()["mode"] == "mixed"


@pytest.mark.parametrize("body, status, kind", [
    ({"dense": [0.1] * 8}, 400, "invalid_input"),                          # wrong width
    ({"sparse": {"indices": [10 ** 9], "values": [1.0]}}, 400, "invalid_input"),  # outside the vocabulary
    ({"sparse": {"indices": [1, 2], "values": [1.0]}}, 422, "validation_error"),
    ({"sparse": {"indices": [1], "values": [-1.0]}}, 422, "validation_error"),
    ({"dense": [1e300] * 32}, 422, "validation_error"),
    ({}, 422, "validation_error"),
])
def test_bad_vectors_are_client_errors(client, body, status, kind):
    r = client.post("/v1/search/vector", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind


def test_sparse_side_with_an_encoder_folder(workspace):
    """An inference-free pair (IDF query encoder folder + token-count bundle), micro-batched like any encoder."""
    pytest.importorskip("tokenizers")
    from serving.encoders.idf import IdfQueryEncoder

    cfg = parse_config({"collections": {"idf": {"sparse": {"bundle": "idf", "encoder": "enc-idf"}}}}, workspace)
    enc = IdfQueryEncoder.load(workspace / "enc-idf")
    with TestClient(create_app(cfg)) as c, load_bundle(workspace / "idf") as b:
        queries = ["Why does the Moon cause tides", "black holes", "vaccines"]
        r = c.post("/v1/search/batch", json={"queries": queries, "k": 3})
        assert r.status_code == 200, r.text
        want = b.search(enc.encode(queries), 3)
        for i, res in enumerate(r.json()["results"]):
            assert [(h["id"], pytest.approx(h["score"], rel=1e-6)) for h in res["hits"]] == want.hits(i)
        assert r.json()["results"][0]["hits"][0]["id"] == "astronomy-03"
        described = c.get("/v1/indexes").json()["collections"]["idf"]["sparse"]["encoder"]
        assert described["type"] == "idf" and described["space_id"] == "test:idf"
        tokens = c.post("/v1/search/vector", json={"sparse": {"tides": 1.0, "moon": 1.0}, "k": 1}).json()
        assert tokens["hits"][0]["id"] == "astronomy-03"


def test_a_query_of_stopwords_only_finds_nothing(client):
    r = client.post("/v1/search", json={"query": "the of and", "mode": "sparse"})
    assert r.status_code == 200 and r.json()["hits"] == []


# ---------------------------------------------------------------------- errors and limits
@pytest.mark.parametrize("body, status, kind", [
    ({"query": ""}, 422, "validation_error"),
    ({"query": "   "}, 422, "validation_error"),
    ({"query": "x" * 1001}, 422, "validation_error"),                     # max_query_chars 1000
    ({"query": "x", "k": 0}, 422, "validation_error"),
    ({"query": "x", "k": 1001}, 422, "validation_error"),                 # max_k 1000
    ({"query": "x", "mode": "fuzzy"}, 422, "validation_error"),
    ({"query": "x", "unknown": 1}, 422, "validation_error"),
    ({"query": "x", "fusion": {"alpha": 2}}, 422, "validation_error"),
    ({"query": "x", "collection": "nope"}, 404, "not_found"),
    ({"query": "x", "collection": "../etc"}, 422, "validation_error"),
    ({"query": "\ud800"}, 422, "validation_error"),                       # a lone surrogate
])
def test_bad_requests_get_json_errors(client, body, status, kind):
    r = client.post("/v1/search", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind and r.json()["error"]["message"]


def test_batch_and_body_limits(client):
    r = client.post("/v1/search/batch", json={"queries": ["sun"] * 65})   # max_batch 64
    assert r.status_code == 422
    r = client.post("/v1/search", content=b'{"query": "' + b"a" * (1 << 20) + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def chunks():                                         # no Content-Length: counted as it streams
        yield b'{"query": "'
        for _ in range(40):
            yield b"a" * 32768
        yield b'"}'
    r = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_malformed_json_wrong_method_and_unknown_path(client):
    r = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"
    r = client.get("/v1/search")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    r = client.get("/no/such/path")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_modes_a_collection_lacks_are_refused(workspace):
    cfg = parse_config({"collections": {"lex": {"sparse": {"bundle": "bm25"}}}}, workspace)
    with TestClient(create_app(cfg)) as c:
        assert c.post("/v1/search", json={"query": "sun"}).json()["mode"] == "sparse"
        for mode in ("dense", "hybrid"):
            r = c.post("/v1/search", json={"query": "sun", "mode": mode})
            assert r.status_code == 400 and r.json()["error"]["type"] == "unsupported_mode"
        assert c.post("/v1/search/vector", json={"dense": [0.0] * 32}).status_code == 400


def test_two_collections_need_a_name(workspace):
    cfg = parse_config({"collections": {"a": {"sparse": {"bundle": "bm25"}},
                                        "b": {"dense": {"bundle": "dense-v2", "encoder": "enc-v2"}}}}, workspace)
    with TestClient(create_app(cfg)) as c:
        r = c.post("/v1/search", json={"query": "sun"})
        assert r.status_code == 400 and "name a collection" in r.json()["error"]["message"]
        assert c.post("/v1/search", json={"query": "sun", "collection": "b"}).json()["mode"] == "dense"


def test_api_key(workspace, monkeypatch):
    monkeypatch.setenv("EMBEDX_TEST_KEY", "s3cret-key-123")
    cfg = config_for(workspace, api_key_env="EMBEDX_TEST_KEY")
    with TestClient(create_app(cfg)) as c:
        for path, body in (("/v1/search", {"query": "sun"}), ("/v1/admin/swap", {"collection": "demo", "dense": {}})):
            r = c.post(path, json=body)
            assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
            assert c.post(path, json=body, headers={"X-API-Key": "wrong-key-123"}).status_code == 401
        assert c.get("/v1/indexes").status_code == 401
        assert c.post("/v1/search", json={"query": "sun"}, headers={"X-API-Key": "s3cret-key-123"}).status_code == 200
        assert c.post("/v1/search", json={"query": "sun"},
                      headers={"Authorization": "Bearer s3cret-key-123"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200   # probes stay open
        assert c.get("/metrics").status_code == 200


def test_request_timeout_is_504_and_the_server_keeps_answering(workspace):
    cfg = config_for(workspace, limits={"request_timeout_s": 0.1})
    data = cfg.model_dump()
    data["collections"]["demo"]["dense"]["encoder"] = "enc-slow"              # sleeps 0.5 s per call
    data.pop("base_dir")
    with TestClient(create_app(parse_config(data, workspace))) as c:
        t = time.perf_counter()
        r = c.post("/v1/search", json={"query": "sun", "mode": "dense"})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert time.perf_counter() - t < 0.45
        assert c.post("/v1/search", json={"query": "sun", "mode": "sparse"}).status_code == 200


def test_in_flight_limit_answers_503(workspace):
    data = config_for(workspace, limits={"max_in_flight": 1}).model_dump()
    data.pop("base_dir")
    data["collections"]["demo"]["dense"]["encoder"] = "enc-slow"
    with TestClient(create_app(parse_config(data, workspace))) as c:
        slow = threading.Thread(target=c.post, args=("/v1/search",), kwargs={"json": {"query": "sun", "mode": "dense"}})
        slow.start()
        deadline = time.monotonic() + 5
        while c.app.state.server.limiter.count == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = c.post("/v1/search", json={"query": "sun", "mode": "sparse"})
        slow.join()
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded"
        assert r.headers["retry-after"] == "1"


# ---------------------------------------------------------------------- operations
def test_health_ready_indexes(client, workspace):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "verify": True, "collections": {"demo": 1}}
    demo = client.get("/v1/indexes").json()["collections"]["demo"]
    assert demo["modes"] == ["sparse", "dense", "hybrid"] and demo["default_mode"] == "hybrid"
    assert demo["fusion"]["method"] == "rrf" and demo["fusion"]["k"] == 60
    assert demo["sparse"]["manifest"]["kind"] == "sparse"
    assert demo["sparse"]["encoder"]["type"] == "bundle"
    assert demo["dense"]["encoder"] == {**HashEncoder(32, "v1").describe(), "folder": "enc-v1"}
    assert demo["dense"]["manifest"]["space_id"] == f"encoder:{HashEncoder(32, 'v1').encoder_hash}"


def test_readyz_is_503_after_shutdown_and_a_new_lifespan_reloads(workspace):
    app = create_app(config_for(workspace))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
    c = TestClient(app)                              # no lifespan: the state stays closed
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
    r = c.post("/v1/search", json={"query": "sun"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
    with TestClient(app) as c:                       # a new lifespan loads everything again
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/search", json={"query": "sun"}).status_code == 200


def test_metrics_after_requests(workspace):
    with TestClient(create_app(config_for(workspace))) as c:
        for _ in range(3):
            c.post("/v1/search", json={"query": "sun", "mode": "hybrid"})
        c.post("/v1/search", json={"query": "sun", "k": 0})
        c.post("/v1/search", json={"query": "sun", "collection": "nope"})
        text = c.get("/metrics").text
    assert c.get  # the client closed cleanly
    assert 'embedx_http_requests_total{endpoint="/v1/search",method="POST",status="200"} 3.0' in text
    assert 'embedx_http_requests_total{endpoint="/v1/search",method="POST",status="422"} 1.0' in text
    assert 'embedx_http_errors_total{endpoint="/v1/search",type="validation_error"} 1.0' in text
    assert 'embedx_http_errors_total{endpoint="/v1/search",type="not_found"} 1.0' in text
    assert 'embedx_http_request_duration_seconds_count{endpoint="/v1/search"} 5.0' in text
    assert 'embedx_queries_total{collection="demo",mode="hybrid"} 3.0' in text
    assert 'embedx_search_stage_seconds_count{stage="encode"} 3.0' in text
    assert 'embedx_collection_generation{collection="demo"} 1.0' in text
    assert 'embedx_encoder_batch_texts_count{collection="demo",side="dense"} 3.0' in text


def test_openapi_is_published_with_the_limits(client):
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/search", "/v1/search/batch", "/v1/search/vector", "/v1/search/vector/batch", "/v1/indexes",
            "/v1/admin/swap", "/healthz", "/readyz", "/metrics"} <= paths
    schemas = spec["components"]["schemas"]
    query = schemas["SearchRequest"]["properties"]["query"]
    assert query["maxLength"] == 1000 and query["minLength"] == 1
    assert schemas["SearchRequest"]["properties"]["k"]["maximum"] == 1000
    assert schemas["BatchSearchRequest"]["properties"]["queries"]["maxItems"] == 64
    documented = set(spec["paths"]["/v1/search"]["post"]["responses"])
    assert {"400", "401", "404", "409", "413", "422", "503", "504"} <= documented


def test_search_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="search-form"' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


# ---------------------------------------------------------------------- config
def test_config_file_resolves_paths_against_its_folder(workspace, tmp_path):
    import os
    conf = tmp_path / "conf"
    conf.mkdir()
    rel = os.path.relpath(workspace, conf)
    (conf / "server.yaml").write_text(f"port: 9123\ncollections:\n  demo:\n    sparse: {{bundle: {workspace}/bm25}}\n"
                                      f"    dense: {{bundle: {rel}/dense-v1, encoder: {rel}/enc-v1}}\n")
    cfg = load_config(conf / "server.yaml")
    assert cfg.port == 9123 and cfg.host == "127.0.0.1" and cfg.collections["demo"].mode == "hybrid"
    assert os.path.normpath(cfg.resolve(cfg.collections["demo"].dense.bundle)) == str(workspace / "dense-v1")
    with TestClient(create_app(conf / "server.yaml")) as c:
        assert c.post("/v1/search", json={"query": "sun"}).json()["mode"] == "hybrid"


@pytest.mark.parametrize("text, message", [
    ("collections: {}", "collections"),
    ("prot: 1\ncollections: {a: {sparse: {bundle: x}}}", "prot: unknown key"),
    ("collections: {a: {}}", "needs a sparse or a dense entry"),
    ("collections: {a: {dense: {bundle: x}}}", "dense.encoder must be an encoder folder"),
    ("collections: {a: {sparse: {bundle: x}, default_mode: hybrid}}", "needs the dense entry"),
    ("collections: {a: {sparse: {bundle: x}}}\nlimits: {max_k: 0}", "limits.max_k"),
    ("collections: [1, 2", "not valid YAML"),
    ("- 1", "expected a mapping"),
    ("collections: {'a b': {sparse: {bundle: x}}}", "collection names"),
])
def test_bad_configs_fail_with_one_clear_line(tmp_path, text, message):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("dense, message", [
    ({"bundle": "dense-v1", "encoder": "enc-v2"}, "space"),          # another representation space
    ({"bundle": "dense-v1", "encoder": "enc-narrow"}, "16-wide"),
    ({"bundle": "bm25", "encoder": "enc-v1"}, "a 'sparse' bundle"),
    ({"bundle": "missing", "encoder": "enc-v1"}, "cannot load bundle"),
    ({"bundle": "dense-v1", "encoder": "missing"}, "cannot load encoder"),
])
def test_startup_refuses_what_does_not_fit(workspace, dense, message):
    cfg = parse_config({"collections": {"demo": {"dense": dense}}}, workspace)
    with pytest.raises(ConfigError, match=message):
        create_app(cfg)


# ---------------------------------------------------------------------- micro-batching
def test_micro_batcher_coalesces_queued_requests():
    gate, calls = threading.Event(), []

    def encode(texts):
        calls.append(list(texts))
        if len(calls) == 1:
            gate.wait(5)
        return np.arange(len(texts), dtype=np.float32)[:, None] + 100 * len(calls)

    b = MicroBatcher(encode, max_batch=8, max_wait_ms=0, workers=1)
    try:
        first = b.submit(["a"])
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.001)
        later = [b.submit([f"q{i}", f"r{i}"]) for i in range(5)]   # queue while the first call runs
        gate.set()
        assert first.result(5).tolist() == [[100.0]]
        rows = [f.result(5) for f in later]
    finally:
        b.close()
    assert calls[1] == ["q0", "r0", "q1", "r1", "q2", "r2", "q3", "r3"]     # 8 texts: full batch
    assert calls[2] == ["q4", "r4"]
    assert [r.ravel().tolist() for r in rows[:4]] == [[200 + 2 * i, 201 + 2 * i] for i in range(4)]
    assert rows[4].ravel().tolist() == [300, 301]


def test_micro_batcher_isolates_a_failing_request():
    def encode(texts):
        if "bad" in texts:
            raise ValueError("bad text")
        return np.ones((len(texts), 2), dtype=np.float32)

    gate = threading.Event()
    b = MicroBatcher(lambda t: (gate.wait(5), encode(t))[1], max_batch=8, max_wait_ms=0)
    try:
        futures = [b.submit(["ok"]), b.submit(["bad"]), b.submit(["fine", "ok"])]
        gate.set()
        assert futures[0].result(5).shape == (1, 2)
        with pytest.raises(ValueError, match="bad text"):
            futures[1].result(5)
        assert futures[2].result(5).shape == (2, 2)
    finally:
        b.close()


def test_concurrent_requests_share_encoder_calls(workspace):
    data = config_for(workspace, batching={"max_batch": 32, "max_wait_ms": 20}).model_dump()
    data.pop("base_dir")
    with TestClient(create_app(parse_config(data, workspace))) as c:
        HashEncoder.calls.clear()
        queries = demo_queries()
        results = [None] * 24

        def one(i):
            results[i] = c.post("/v1/search", json={"query": queries[i % len(queries)], "mode": "dense", "k": 3})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code == 200 for r in results)
        assert sum(HashEncoder.calls) == 24
        assert len(HashEncoder.calls) < 24          # some calls carried several requests
        for i, r in enumerate(results):             # and each request got its own rows back
            single = c.post("/v1/search", json={"query": queries[i % len(queries)], "mode": "dense", "k": 3})
            assert r.json()["hits"] == single.json()["hits"]


# ---------------------------------------------------------------------- layering
def test_serving_runs_a_search_without_torch(workspace):
    code = ("import sys\n"
            "import test_server_kit as kit\n"
            "from fastapi.testclient import TestClient\n"
            "from serving.app import create_app\n"
            "import serving.cli\n"
            f"app = create_app(kit.config_for(__import__('pathlib').Path({str(workspace)!r})))\n"
            "with TestClient(app) as c:\n"
            "    assert c.post('/v1/search', json={'query': 'sun'}).status_code == 200\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "assert not bad, bad[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(_tests_dir()))
    assert proc.returncode == 0, proc.stderr[-2000:]


def _tests_dir():
    from pathlib import Path
    return Path(__file__).parent


# ---------------------------------------------------------------------- the command line
def test_serve_command_runs_the_example_config(tmp_path):
    """`serve --config serving/example-server.yaml` (as `embedx serve` runs it) answers over real HTTP."""
    import shutil
    import socket
    import urllib.request
    from importlib import resources

    from embedx.retrieval import build_lexical_bundle
    from test_server_kit import demo_corpus

    (tmp_path / "serving").mkdir()
    shutil.copy(resources.files("serving") / "example-server.yaml", tmp_path / "serving" / "server.yaml")
    build_lexical_bundle(demo_corpus(), tmp_path / "demo-out" / "bundle")     # where `embedx demo` writes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import sys; from serving.cli import serve; serve(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, "--config", str(tmp_path / "serving" / "server.yaml"),
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    assert json.load(r)["status"] == "ready"
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        req = urllib.request.Request(base + "/v1/search", data=json.dumps({"query": "black hole", "k": 2}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            body = json.load(r)
        assert body["hits"][0]["id"] == "astronomy-02" and body["hits"][0]["fields"]["title"] == "Black holes"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    import signal
    assert proc.returncode in (0, -signal.SIGTERM), out     # uvicorn re-raises the signal after a clean stop
    assert "Traceback" not in out, out


def test_serve_command_reports_a_bad_config_in_one_line(tmp_path):
    from click.testing import CliRunner

    from serving.cli import serve
    bad = tmp_path / "server.yaml"
    bad.write_text("collections: {demo: {sparse: {bundle: nowhere}}}\n")
    result = CliRunner().invoke(serve, ["--config", str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: collection 'demo': cannot load bundle") and "Traceback" not in result.output
