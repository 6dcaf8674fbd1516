"""Hot swap: atomic switch under concurrent load, in-flight requests finishing on the old version,
refusal of an incompatible encoder, and reloading a bundle rebuilt at the same path."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from embedx.retrieval import build_lexical_bundle  # noqa: E402
from serving.app import create_app  # noqa: E402
from serving.state import ServerState  # noqa: E402
from test_server_kit import HashEncoder, build_dense_bundle, config_for, demo_corpus  # noqa: E402

QUERY = "how do vaccines train the immune system"


def _hits(client, mode="dense", query=QUERY):
    r = client.post("/v1/search", json={"query": query, "mode": mode, "k": 5, "fields": []})
    assert r.status_code == 200, r.text
    return r.json()


def test_swap_under_concurrent_requests(workspace):
    with TestClient(create_app(config_for(workspace))) as c:
        server = c.app.state.server
        expected = {"v1": [h["id"] for h in _hits(c)["hits"]]}
        # what v2 answers, from a separate app that serves it directly
        with TestClient(create_app(config_for(workspace, collections={"demo": {
                "dense": {"bundle": "dense-v2", "encoder": "enc-v2"}}}))) as c2:
            expected["v2"] = [h["id"] for h in _hits(c2)["hits"]]
        assert expected["v1"] != expected["v2"]

        stop = threading.Event()
        seen: list[tuple[int, list[str]]] = []
        failures: list[str] = []

        def hammer():
            while not stop.is_set():
                r = c.post("/v1/search", json={"query": QUERY, "mode": "dense", "k": 5, "fields": []})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                body = r.json()
                seen.append((body["generation"], [h["id"] for h in body["hits"]]))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        old_retrievers = []
        try:
            for i in range(6):
                version = "v2" if i % 2 == 0 else "v1"
                before = len(seen)
                old_retrievers.append(server.state.current("demo").dense)
                side = {"bundle": f"dense-{version}", "encoder": f"enc-{version}"}
                r = c.post("/v1/admin/swap", json={"collection": "demo", "dense": side})
                assert r.status_code == 200, r.text
                assert r.json()["generation"] == i + 2 and r.json()["swapped"] == ["dense"]
                deadline = time.monotonic() + 10
                while len(seen) < before + 8 and time.monotonic() < deadline:   # let requests run on it
                    time.sleep(0.005)
        finally:
            stop.set()
            for t in threads:
                t.join()

        assert not failures, failures[:3]
        assert len(seen) >= 40
        for generation, got in seen:        # every answer is exactly one version's answer
            assert got == expected["v1" if generation % 2 == 1 else "v2"], generation
        assert {g for g, _ in seen} == set(range(1, 8))
        after = _hits(c)
        assert after["generation"] == 7 and [h["id"] for h in after["hits"]] == expected["v1"]
        # every replaced dense retriever was closed once its requests were done; sparse was shared
        assert all(r.bundle.store._closed for r in old_retrievers)
        assert not server.state.current("demo").sparse.bundle.store._closed
        metrics = c.get("/metrics").text
        assert 'embedx_swaps_total{collection="demo",result="ok"} 6.0' in metrics
        assert 'embedx_collection_generation{collection="demo"} 7.0' in metrics


@pytest.mark.parametrize("dense, message", [
    ({"encoder": "enc-v2"}, "space"),                          # v2 encoder, v1 bundle
    ({"bundle": "dense-v2"}, "space"),                         # v2 bundle, v1 encoder
    ({"encoder": "enc-narrow"}, "16-wide"),
])
def test_incompatible_swap_is_refused_and_changes_nothing(workspace, dense, message):
    with TestClient(create_app(config_for(workspace))) as c:
        before = _hits(c)
        r = c.post("/v1/admin/swap", json={"collection": "demo", "dense": dense})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["type"] == "incompatible_encoder" and message in r.json()["error"]["message"]
        after = _hits(c)
        assert after["hits"] == before["hits"] and after["generation"] == 1
        assert 'embedx_swaps_total{collection="demo",result="refused"} 1.0' in c.get("/metrics").text


@pytest.mark.parametrize("body, status, kind", [
    ({"collection": "demo", "dense": {"bundle": "no-such-bundle"}}, 400, "load_failed"),
    ({"collection": "demo", "dense": {"bundle": "bm25"}}, 400, "load_failed"),           # a sparse bundle
    ({"collection": "demo", "dense": {"encoder": "bundle"}}, 400, "load_failed"),
    ({"collection": "demo", "sparse": {"bundle": "dense-v1"}}, 400, "load_failed"),
    ({"collection": "demo", "sparse": {"bundle": "bm25\u0000x"}}, 400, "load_failed"),
    ({"collection": "nope", "dense": {}}, 404, "not_found"),
    ({"collection": "demo"}, 422, "validation_error"),
])
def test_swap_errors(workspace, body, status, kind):
    with TestClient(create_app(config_for(workspace))) as c:
        r = c.post("/v1/admin/swap", json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["type"] == kind
        assert _hits(c)["generation"] == 1


def test_admin_can_be_turned_off(workspace):
    with TestClient(create_app(config_for(workspace, admin=False))) as c:
        r = c.post("/v1/admin/swap", json={"collection": "demo", "dense": {}})
        assert r.status_code == 404 and "turned off" in r.json()["error"]["message"]


def test_swap_reloads_a_bundle_rebuilt_at_the_same_path(workspace, tmp_path):
    root = tmp_path / "live"
    shutil.copytree(workspace, root, symlinks=True)
    corpus = demo_corpus()
    with TestClient(create_app(config_for(root))) as c:
        v1_dense, v1_sparse = _hits(c), _hits(c, "sparse", "black hole")
        assert v1_sparse["hits"][0]["id"] == "astronomy-02"
        # rebuild both bundles in place: dense in the v2 space, BM25 without the black-hole document
        build_dense_bundle(corpus, root / "dense-v1", HashEncoder(32, "v2"))
        build_lexical_bundle({k: v for k, v in corpus.items() if k != "astronomy-02"}, root / "bm25")
        assert _hits(c)["hits"] == v1_dense["hits"]                     # nothing changes before the swap
        r = c.post("/v1/admin/swap", json={"collection": "demo", "sparse": {}, "dense": {"encoder": "enc-v2"}})
        assert r.status_code == 200, r.text
        assert r.json()["swapped"] == ["dense", "sparse"] and r.json()["generation"] == 2
        assert r.json()["dense"]["encoder"]["salt"] == "v2"
        assert _hits(c)["hits"] != v1_dense["hits"]
        assert "astronomy-02" not in [h["id"] for h in _hits(c, "sparse", "black hole")["hits"]]
        indexes = c.get("/v1/indexes").json()["collections"]["demo"]
        assert indexes["generation"] == 2 and indexes["dense"]["encoder"]["folder"] == "enc-v2"


def test_old_version_closes_only_after_its_last_request(workspace):
    state = ServerState(config_for(workspace))
    state.load_all()
    try:
        with state.lease("demo") as old:
            new = state.swap("demo", {"dense": {"bundle": "dense-v2", "encoder": "enc-v2"}})
            assert state.current("demo") is new and new.generation == 2
            assert new.sparse is old.sparse                       # untouched side is shared
            assert not old.dense.bundle.store._closed              # still in use by this request
            assert old.fields(["astronomy-01"], ["title"]) == [{"title": "The Sun"}]
        assert old.dense.bundle.store._closed                      # closed when the lease ended
        assert not new.sparse.bundle.store._closed
        assert old.dense.batcher._closed
    finally:
        state.close()
    assert new.sparse.bundle.store._closed and new.dense.bundle.store._closed
