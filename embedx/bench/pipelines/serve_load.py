"""``serve-load``: the retrieval server under load, next to the same searches in-process, and the
ONNX encoders against the torch encoder they were exported from.

1. Encoders: the dense model (all-MiniLM-L6-v2) exported to ONNX fp32 and int8 by
   :mod:`embedx.export` into ``cache_dir`` (keyed by a hash of the model files and the export
   settings), with the parity numbers the export recorded. Throughput of torch, ONNX fp32 and
   ONNX int8 at the same thread count: documents in batches, queries one at a time, rounds
   interleaved, medians. Retrieval quality: NDCG@10 on the test queries of dense retrieval
   (FAISS Flat, inner product) with each encoder's own document and query embeddings;
   document embeddings are cached (encoding SciFact's 5,183 documents takes minutes).
2. Bundles: BM25 impacts of the corpus (sparse) and the ONNX fp32 document embeddings (dense).
3. ``embedx serve`` in a subprocess on a free loopback port with a generated config: one
   collection with both sides (hybrid: RRF over ``depth`` candidates of each).
4. Load over HTTP: a closed-loop generator with keep-alive connections in its own process
   (:mod:`embedx.bench.loadgen`), real test queries, a fixed request count and a duration cap,
   per (mode, concurrency): QPS, p50/p95/p99 latency measured by the client, errors.
5. In-process: the same searches through :func:`serving.search.search_texts` on a
   :class:`serving.state.ServerState` loaded from the same config (same encoder, bundles,
   micro-batcher and fusion), one at a time, in rounds alternated with the concurrency-1 HTTP
   runs. HTTP overhead = HTTP p50 - in-process p50, per round, median over rounds.

All thread pools (onnxruntime, torch, FAISS) are pinned to ``threads`` in this process and in
the server, so ratios compare code rather than thread counts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ...data import load_beir
from ...retrieval import doc_text
from ..figures import plot_path, pyplot, save_figure
from ..loadgen import LoadResult, summarize
from ..runner import BenchmarkSkipped, Context
from .common import torch_threads

log = logging.getLogger(__name__)

COLLECTION = "scifact"
MODES = ("sparse", "dense", "hybrid")
DENSE_MODES = ("dense", "hybrid")
PRECISIONS = ("fp32", "int8")
ORT_THREADS_ENV = "EMBEDX_ORT_THREADS"   # serving.encoders.runtime.THREADS_ENV (not imported: no onnxruntime needed)


def run(ctx: Context) -> dict:
    p = ctx.params
    split = ctx.spec.dataset.get("split", "test")
    ds = load_beir(ctx.dataset_path(), split=split)
    qids = [q for q in ds.qrels if q in ds.queries]
    texts = [ds.queries[q] for q in qids]
    modes = list(p.get("modes", MODES))
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    threads = int(p.get("threads", 1))
    enc_p = dict(p.get("encoders") or {})
    need_dense = any(m in DENSE_MODES for m in modes)
    metrics: dict[str, Any] = {"queries": len(qids), "documents": len(ds.corpus), "threads": threads}
    details: dict[str, Any] = {}

    with pinned_threads(threads):
        dense = None
        if need_dense or enc_p.get("enabled", True):
            bench = EncoderBench(ds, qids, enc_p, threads, Path(os.path.expanduser(p.get("cache_dir", CACHE_DIR))))
            m, d = bench.run(compare=enc_p.get("enabled", True))
            metrics.update(m)
            details["encoders"] = d
            dense = bench
        config = build_serving(ctx.work_dir, ds, dense if need_dense else None, p, threads)
        m, load_details = load_benchmark(ctx.work_dir, config, texts, modes, p)
        metrics.update(m)
        details["load"] = load_details

    latencies = load_details.pop("latencies", {})
    if p.get("plot") and latencies:
        details["plot"] = plot_latencies(latencies, plot_path(p["plot"]))
    return {"metrics": metrics, "headline": headline(metrics, modes), "details": details}


def headline(metrics: Mapping[str, Any], modes: Sequence[str]) -> list[str]:
    names = []
    for mode in modes:
        names += [f"{mode}_http_overhead_p50_ms", f"{mode}_c1_p50_ms", f"{mode}_c32_qps", f"{mode}_c32_p99_over_p50",
                  f"{mode}_c32_errors"]
    names += ["onnx_fp32_speedup_docs", "onnx_int8_speedup_docs", "onnx_int8_speedup_queries", "torch_ndcg@10",
              "onnx_fp32_ndcg@10", "onnx_int8_ndcg@10", "onnx_int8_ndcg@10_diff"]
    return [n for n in names if n in metrics]


# ---------------------------------------------------------------------- threads
@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """onnxruntime (through ``$EMBEDX_ORT_THREADS``, which the server inherits), torch and FAISS
    at ``n`` threads; restored afterwards."""
    saved_env = os.environ.get(ORT_THREADS_ENV)
    os.environ[ORT_THREADS_ENV] = str(n)
    torch_mod = sys.modules.get("torch")
    saved_torch = torch_mod.get_num_threads() if torch_mod else None
    try:
        import faiss
        saved_faiss = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(n)
    except ImportError:
        faiss = saved_faiss = None
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(ORT_THREADS_ENV, None)
        else:
            os.environ[ORT_THREADS_ENV] = saved_env
        if faiss is not None:
            faiss.omp_set_num_threads(saved_faiss)
        if saved_torch is not None:
            sys.modules["torch"].set_num_threads(saved_torch)


# ---------------------------------------------------------------------- encoders
CACHE_DIR = "~/.cache/embedx/serve-load"


def file_digest(folder: str | os.PathLike) -> str:
    """sha256 over the relative paths and contents of every file under ``folder`` (computed once
    per run for unchanged files: a model folder is ~90 MB)."""
    root = Path(folder)
    files = sorted(q for q in root.rglob("*") if q.is_file())
    return _digest(root, tuple((str(q.relative_to(root)), q.stat().st_size, q.stat().st_mtime_ns) for q in files))


@functools.lru_cache(maxsize=8)
def _digest(root: Path, files: tuple) -> str:
    h = hashlib.sha256()
    for rel, _, _ in files:
        h.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def settings_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def corpus_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i, t in zip(ids, texts):
        h.update(i.encode() + b"\0" + t.encode() + b"\0")
    return h.hexdigest()[:16]


def cached_array(path: Path, rows: int, make: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """``np.load(path)`` when it holds ``rows`` rows, else ``make()`` saved there atomically.
    Returns the array and whether it came from the cache."""
    from indexing.fsutil import atomic_open

    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape[0] == rows:
                return arr, True
            log.warning("%s holds %d rows, expected %d: recomputing", path, arr.shape[0], rows)
        except (OSError, ValueError) as e:
            log.warning("cannot read %s (%s): recomputing", path, e)
    arr = np.ascontiguousarray(make(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.save(f, arr)
    return arr, False


def exporter_digest() -> str:
    """A hash of the code that writes and runs exports: a changed exporter means a new export."""
    import embedx.encoders.dense
    import embedx.export
    import serving.encoders.onnx
    import serving.encoders.runtime

    h = hashlib.sha256()
    files = sorted(Path(embedx.export.__file__).parent.glob("*.py"))
    files += [Path(m.__file__) for m in (embedx.encoders.dense, serving.encoders.onnx, serving.encoders.runtime)]
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def exported_folder(model: str, precision: str, cache: Path, quantization: Mapping | None = None) -> Path:
    """The ONNX export of ``model`` at ``precision``, made once per model content, settings and
    exporter code (older exports stay in the cache: a run in progress may be serving one)."""
    from embedx.export import export_dense
    from embedx.pretrained import resolve_model

    source = Path(resolve_model(model))
    quant = dict(quantization or {}) if precision == "int8" else None
    key = settings_key(file_digest(source) if source.is_dir() else str(source), precision, quant, exporter_digest())
    out = cache / "onnx" / f"{Path(model).name}-{precision}-{key}"
    if not (out / "encoder.json").is_file():
        log.info("exporting %s to ONNX %s: %s", model, precision, out)
        export_dense(model, out, int8=precision == "int8", quantization=quant, overwrite=True)
    return out


class EncoderBench:
    """Exports, throughput, parity and retrieval quality of torch vs ONNX fp32 vs ONNX int8."""

    def __init__(self, ds, qids: list[str], params: Mapping, threads: int, cache: Path):
        self.ds, self.qids, self.p, self.threads, self.cache = ds, qids, params, threads, cache
        self.model = params.get("model", "all-minilm-l6-v2")
        self.precisions = list(params.get("precisions", PRECISIONS))
        self.doc_ids = list(ds.corpus)
        self.doc_texts = [doc_text(ds.corpus[i]) for i in self.doc_ids]
        self.query_texts = [ds.queries[q] for q in qids]
        self.folders: dict[str, Path] = {}
        self.doc_vectors: dict[str, np.ndarray] = {}
        self._torch = None

    @property
    def torch_encoder(self):
        """The torch :class:`~embedx.encoders.DenseTextEncoder` the exports come from (loaded once)."""
        if self._torch is None:
            from embedx.encoders import DenseTextEncoder
            self._torch = DenseTextEncoder.from_pretrained(self.model)
        return self._torch

    @property
    def serving_folder(self) -> Path:
        return self.folders["fp32"]

    def run(self, compare: bool = True) -> tuple[dict, dict]:
        from embedx.pretrained import model_available

        t0 = time.perf_counter()
        precisions = self.precisions if compare else ["fp32"]
        if self.p.get("folder"):  # an encoder exported beforehand serves (and stands for fp32)
            self.folders["fp32"] = Path(os.path.expanduser(self.p["folder"]))
        if compare or not self.folders:
            if not model_available(self.model) and not Path(self.model).exists():
                raise BenchmarkSkipped(f"model {self.model} is not installed")
            for prec in dict.fromkeys(["fp32", *precisions]):
                if prec not in self.folders:
                    self.folders[prec] = exported_folder(self.model, prec, self.cache,
                                                         self.p.get("quantization") if prec == "int8" else None)
        metrics: dict[str, Any] = {"export_s": time.perf_counter() - t0}
        details: dict[str, Any] = {"model": self.model, "folders": {k: str(v) for k, v in self.folders.items()}}
        from serving.encoders.onnx import OnnxDenseEncoder

        onnx_fp32 = OnnxDenseEncoder.load(self.folders["fp32"], threads=self.threads)
        self.doc_vectors["onnx_fp32"] = self.corpus_vectors("onnx_fp32", self.folders["fp32"])
        if not compare:
            return metrics, details
        for prec in precisions:
            config = json.loads((self.folders[prec] / "encoder.json").read_text())
            parity = config.get("parity") or {}
            details[f"onnx_{prec}"] = {"hash": config.get("hash"), "quantization": config.get("quantization"),
                                       "parity": {k: v for k, v in parity.items() if k != "batch_shapes"},
                                       "exporter": config.get("exporter"), "created": config.get("created")}
            for stat in ("max_abs", "mean_cosine", "min_cosine"):
                if stat in parity:
                    metrics[f"onnx_{prec}_parity_{stat}"] = parity[stat]
            metrics[f"onnx_{prec}_parity_passed"] = bool(parity.get("passed"))
        torch_enc = self.torch_encoder
        onnx = {f"onnx_{prec}": onnx_fp32 if prec == "fp32" else OnnxDenseEncoder.load(self.folders[prec],
                                                                                        threads=self.threads)
                for prec in precisions}
        encoders: dict[str, Any] = {"torch": torch_enc, **onnx}
        m, d = self.throughput(encoders)
        metrics.update(m)
        details["throughput"] = d
        for name in encoders:
            if name not in self.doc_vectors:
                self.doc_vectors[name] = self.corpus_vectors(name, self.folders.get(name.removeprefix("onnx_")))
        m, d = self.quality(encoders)
        metrics.update(m)
        details["quality"] = d
        metrics["encoders_s"] = time.perf_counter() - t0
        return metrics, details

    # ------------------------------------------------------------------ document vectors (cached)
    def corpus_vectors(self, name: str, folder: Path | None) -> np.ndarray:
        """Every document's embedding by encoder ``name``, from the cache when it has them."""
        batch = int(self.p.get("batch_size", 32))
        threads = int(self.p.get("encode_threads", self.threads))
        if name == "torch":  # the weights and the settings that change outputs
            from embedx.pretrained import resolve_model
            source = Path(resolve_model(self.model))
            tag = "torch-" + settings_key(file_digest(source) if source.is_dir() else str(source),
                                          self.torch_encoder.settings())
        else:
            tag = f"{name}-{json.loads((folder / 'encoder.json').read_text())['hash']}"
        path = self.cache / "embeddings" / f"{tag}-{corpus_fingerprint(self.doc_ids, self.doc_texts)}.npy"

        def make() -> np.ndarray:
            log.info("encoding %d documents with %s (%d threads; cached afterwards in %s)", len(self.doc_texts),
                     name, threads, path)
            encode = self._encoder_fn(name, folder, threads)
            chunk, parts = 512, []
            for start in range(0, len(self.doc_texts), chunk):
                parts.append(encode(self.doc_texts[start:start + chunk], batch))
                log.info("  %s: %d/%d documents", name, min(start + chunk, len(self.doc_texts)), len(self.doc_texts))
            return np.concatenate(parts)

        t = time.perf_counter()
        with torch_threads(threads) if name == "torch" else contextlib.nullcontext():
            vectors, hit = cached_array(path, len(self.doc_ids), make)
        if not hit:
            log.info("%s: %d documents in %.0f s", name, len(self.doc_ids), time.perf_counter() - t)
        return vectors

    def _encoder_fn(self, name: str, folder: Path | None, threads: int) -> Callable[[list[str], int], np.ndarray]:
        if name == "torch":
            enc = self.torch_encoder
            return lambda texts, batch: enc.encode(texts, batch_size=batch)
        from serving.encoders.onnx import OnnxDenseEncoder
        enc = OnnxDenseEncoder.load(folder, threads=threads)
        return lambda texts, batch: enc.encode(texts, batch_size=batch)

    # ------------------------------------------------------------------ throughput
    def throughput(self, encoders: Mapping[str, Any]) -> tuple[dict, dict]:
        """Documents per second (batches of ``batch_size``) and queries per second (one per call)
        of each encoder (:func:`embedx.export.throughput.compare_throughput`: warmed up, rounds
        alternated); speed-ups against torch, the first encoder."""
        from embedx.export.throughput import compare_throughput
        import torch

        p = self.p
        rng = np.random.default_rng(p.get("seed", 0))
        n_docs = min(int(p.get("throughput_docs", 128)), len(self.doc_texts))
        docs = [self.doc_texts[i] for i in sorted(rng.choice(len(self.doc_texts), n_docs, replace=False))]
        queries = self.query_texts[:int(p.get("throughput_queries", len(self.query_texts)))]
        batch, rounds = int(p.get("batch_size", 32)), int(p.get("rounds", 3))
        # At one thread every encoder runs in the calling thread, so its CPU time is what the
        # encoder costs, whatever else the shared machine runs meanwhile.
        thread_clock = p.get("clock", "thread") == "thread" and self.threads == 1
        clock = time.thread_time if thread_clock else time.perf_counter
        details: dict[str, Any] = {"docs": n_docs, "queries": len(queries), "batch_size": batch, "rounds": rounds,
                                   "clock": "thread" if thread_clock else "wall", "threads": self.threads}
        one_by_one = {name: (lambda texts, enc=enc: [enc.encode([t]) for t in texts]) for name, enc in encoders.items()}
        metrics: dict[str, Any] = {}
        with torch.inference_mode(), torch_threads(self.threads):
            for unit, runs in (("docs", compare_throughput(dict(encoders), docs, batch_size=batch, rounds=rounds,
                                                           clock=clock)),
                               ("queries", compare_throughput(one_by_one, queries, rounds=rounds, clock=clock))):
                details[unit + "_per_s"] = runs
                for name, stats in runs.items():
                    metrics[f"{name}_{unit}_per_s"] = stats["docs_per_s"]
                    if name != "torch":
                        metrics[f"{name}_speedup_{unit}"] = stats["speedup"]
        return metrics, details

    # ------------------------------------------------------------------ quality
    def quality(self, encoders: Mapping[str, Any]) -> tuple[dict, dict]:
        """NDCG@10 and Recall@100 of dense retrieval with each encoder's documents and queries."""
        from ...eval import evaluate
        import torch

        k, out, details = int(self.p.get("eval_depth", 100)), {}, {}
        with torch.inference_mode(), torch_threads(self.threads):
            query_vectors = {n: e.encode(self.query_texts) for n, e in encoders.items()}
        pairs = [(n, n, n) for n in encoders]
        if "onnx_int8" in encoders and "onnx_fp32" in encoders:   # int8 queries against an fp32 index
            pairs.append(("onnx_int8_queries_fp32_docs", "onnx_fp32", "onnx_int8"))
        for label, docs, queries in pairs:
            run_ = self._dense_run(self.doc_vectors[docs], query_vectors[queries], k)
            scores = evaluate(self.ds.qrels, run_, ("ndcg@10", "recall@100"))
            details[label] = scores
            out[f"{label}_ndcg@10"] = scores["ndcg@10"]
            out[f"{label}_recall@100"] = scores["recall@100"]
        for name in encoders:
            if name != "torch":
                out[f"{name}_ndcg@10_diff"] = abs(out[f"{name}_ndcg@10"] - out["torch_ndcg@10"])
                cos = np.sum(query_vectors[name] * query_vectors["torch"], axis=1) / np.maximum(
                    np.linalg.norm(query_vectors[name], axis=1) * np.linalg.norm(query_vectors["torch"], axis=1), 1e-12)
                out[f"{name}_query_min_cosine"] = float(cos.min())
        return out, details

    def _dense_run(self, docs: np.ndarray, queries: np.ndarray, k: int) -> dict:
        from indexing.dense import DenseIndex

        index = DenseIndex(docs.shape[1], "Flat", "ip")
        index.add(self.doc_ids, docs)
        run_ = index.search(np.ascontiguousarray(queries, dtype=np.float32), k).to_run(self.qids)
        for q in self.qids:  # BEIR's evaluation ignores a hit whose id is the query's own
            run_[q].pop(q, None)
        return run_


# ---------------------------------------------------------------------- bundles and config
def build_serving(work: Path, ds, dense: EncoderBench | None, p: Mapping, threads: int) -> dict:
    """Write the bundles and return the server config (as a mapping; paths relative to ``work``)."""
    from embedx.retrieval import build_lexical_bundle

    t = time.perf_counter()
    build_lexical_bundle(ds.corpus, work / "bm25")
    collection: dict[str, Any] = {"sparse": {"bundle": "bm25", "encoder": "bundle"},
                                  "fusion": dict(p.get("fusion", {"method": "rrf", "k": 60, "depth": 100})),
                                  "fields": list(p.get("fields", ["title"]))}
    if dense is not None:
        from indexing.bundle import write_bundle
        from indexing.dense import DenseIndex
        from serving.encoders.onnx import OnnxDenseEncoder

        folder = dense.serving_folder
        enc = OnnxDenseEncoder.load(folder, threads=threads)
        vectors = dense.doc_vectors["onnx_fp32"]
        index = DenseIndex(vectors.shape[1], "Flat", "ip")
        index.add(dense.doc_ids, vectors)
        docs = ((i, {"title": ds.corpus[i].get("title", "")}) for i in dense.doc_ids)
        write_bundle(work / "dense", index, docs, encoder={"name": f"onnx-dense:{dense.model}",
                                                           "hash": enc.encoder_hash}, space_id=enc.space_id)
        collection["dense"] = {"bundle": "dense", "encoder": str(folder)}
        collection["default_mode"] = "hybrid"
    server = dict(p.get("server") or {})
    config = {"host": "127.0.0.1", "port": 8000, "admin": False, "verify": True, "faiss_threads": threads,
              "workers": 32, "limits": {"max_in_flight": 256, "request_timeout_s": 30},
              "batching": {"max_batch": 32, "max_wait_ms": 2, "workers": 1},
              **server, "collections": {COLLECTION: collection}}
    log.info("bundles built in %.1f s", time.perf_counter() - t)
    return config


# ---------------------------------------------------------------------- the server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    """``embedx serve``: the installed console script beside this interpreter, else the same
    command line through ``-c``."""
    script = Path(sys.executable).with_name("embedx")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "serve"]
    return [sys.executable, "-c", "from embedx.cli import main; main()", "serve"]


class ServerProcess:
    """``embedx serve --config PATH`` on a free loopback port, ready (``/readyz`` 200) on enter,
    stopped on exit. The server log goes to ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path, *, env: Mapping[str, str] | None = None,
                 startup_timeout_s: float = 180.0):
        self.config_path, self.log_path = Path(config_path), Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        self.port = free_port()
        cmd = serve_command() + ["--config", str(self.config_path), "--port", str(self.port),
                                 "--log-level", "warning"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/readyz")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far (Linux)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


# ---------------------------------------------------------------------- load
def loadgen(port: int, bodies: Path, out: Path, *, concurrency: int, requests: int, duration_s: float,
            warmup: int = 2, timeout_s: float = 30.0) -> LoadResult:
    """One run of :mod:`embedx.bench.loadgen` in its own process (which inherits the calling
    thread's scheduling policy)."""
    cmd = [sys.executable, "-m", "embedx.bench.loadgen", "--url", f"http://127.0.0.1:{port}/v1/search",
           "--bodies", str(bodies), "--concurrency", str(concurrency), "--requests", str(requests),
           "--duration", str(duration_s), "--warmup", str(warmup), "--timeout", str(timeout_s), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 120)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return LoadResult.from_json(json.loads(out.read_text()))


def load_benchmark(work: Path, config: dict, texts: list[str], modes: Sequence[str], p: Mapping) -> tuple[dict, dict]:
    """Start the server on ``config`` and run every (mode, concurrency); concurrency 1 in rounds
    alternated with the same searches in-process."""
    import yaml

    from serving.config import parse_config
    from serving.state import ServerState

    k, fields = int(p.get("k", 10)), list(p.get("fields", ["title"]))
    bodies = {}
    for mode in modes:
        bodies[mode] = work / f"bodies-{mode}.jsonl"
        bodies[mode].write_text("".join(json.dumps({"query": t, "mode": mode, "k": k, "fields": fields}) + "\n"
                                        for t in texts), encoding="utf-8")
    config_path = work / "server.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    load_requests, duration = int(p.get("requests", 2000)), float(p.get("duration_s", 30))
    concurrency = [int(c) for c in p.get("concurrency", [1, 8, 32])]

    state = ServerState(parse_config(config, work, str(config_path)))
    state.load_all()
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"config": config, "requests": load_requests, "duration_s": duration, "latencies": {}}
    try:
        with ServerProcess(config_path, work / "server.log") as server:
            t0 = time.perf_counter()
            for mode in modes:  # untimed: page cache, LMDB, encoder sessions and both interpreters warm
                warm = min(len(texts), 100)
                loadgen(server.port, bodies[mode], work / "warm.json", concurrency=1, requests=warm,
                        duration_s=duration)
                search = in_process_search(state, texts, mode, k, fields)
                for i in range(warm):
                    search(i)
            if 1 in concurrency:
                m, d = overhead_rounds(server, state, bodies, texts, modes, work, p)
                metrics.update(m)
                details["latencies"].update(d.pop("latencies"))
                details["c1"] = d
            for c in (c for c in concurrency if c > 1):
                for mode in modes:
                    cpu = server.cpu_seconds()
                    res = loadgen(server.port, bodies[mode], work / f"c{c}.json", concurrency=c,
                                  requests=load_requests, duration_s=duration)
                    cpu = server.cpu_seconds() - cpu
                    stats = res.stats()
                    _put(metrics, f"{mode}_c{c}", stats)
                    # what the server spent per request, and the share of a core it got: on a shared
                    # machine QPS follows that share, CPU per request does not
                    metrics[f"{mode}_c{c}_server_cpu_ms_per_query"] = cpu / max(res.sent, 1) * 1e3
                    metrics[f"{mode}_c{c}_server_cores_used"] = cpu / res.elapsed_s if res.elapsed_s else float("nan")
                    metrics[f"{mode}_c{c}_p99_over_p50"] = stats["p99_ms"] / stats["p50_ms"] if res.ok else float("nan")
                    metrics[f"{mode}_c{c}_stopped_by"] = res.stopped_by
                    details.setdefault("errors", {})[f"{mode}_c{c}"] = res.errors
                    details["latencies"][f"{mode}_c{c}"] = res.latencies_ms
            status, body = server.get("/metrics")
            details["server_metrics"] = _batch_summary(body.decode()) if status == 200 else {}
            metrics["load_s"] = time.perf_counter() - t0
        details["server_log_tail"] = (work / "server.log").read_text(errors="replace")[-2000:]
    finally:
        state.close()
    metrics["errors_total"] = int(sum(v for k_, v in metrics.items() if k_.endswith("_errors")))
    return metrics, details


def in_process_search(state, texts: list[str], mode: str, k: int, fields: list[str]) -> Callable[[int], object]:
    """What a ``POST /v1/search`` handler runs, minus HTTP: lease, encode, search, fuse, fields."""
    from serving.search import Options, Timings, search_texts

    opts = Options(k=k, mode=mode, fields=fields)

    def one(i: int):
        with state.lease(COLLECTION) as version:
            return search_texts(version, [texts[i % len(texts)]], opts, Timings())
    return one


# ---------------------------------------------------------------------- concurrency 1
def set_fifo(pid: int, priority: int | None) -> bool:
    """Every thread of process ``pid`` to ``SCHED_FIFO`` at ``priority``, or back to the normal
    scheduler (``None``). Returns False where that is not allowed (not root, not Linux)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        policy, param = (os.SCHED_FIFO, os.sched_param(priority)) if priority is not None else \
            (os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, param)
        except ProcessLookupError:   # the thread ended meanwhile
            continue
        except OSError:
            return False
    return True


@contextlib.contextmanager
def fifo_scheduling(pids: Sequence[int], priority: int | None) -> Iterator[bool]:
    """``SCHED_FIFO`` for every thread of ``pids`` inside the block (threads they start inherit it);
    yields whether it took effect everywhere. Always restored, also on errors."""
    if priority is None:
        yield False
        return
    ok = all([set_fifo(pid, priority) for pid in pids])
    try:
        yield ok
    finally:
        for pid in pids:
            set_fifo(pid, None)


def overhead_rounds(server: ServerProcess, state, bodies: Mapping[str, Path], texts: list[str], modes: Sequence[str],
                    work: Path, p: Mapping) -> tuple[dict, dict]:
    """Concurrency 1, once per entry of ``c1_scheduling``: per round and mode, the queries over
    HTTP (load generator) and in-process, in alternating order. Latency overhead = HTTP p50 -
    in-process p50 of the same round, median over rounds. Also the server's CPU time per request
    against the in-process CPU time per search: what HTTP costs in work.

    ``fifo``: the server, the load generator (started from a thread that has it, so it
    inherits it) and this process run at ``SCHED_FIFO`` priority ``fifo_priority``, all three
    alike, so a wake-up never waits behind other tenants of a small shared machine: on 2 busy
    cores each of the ~4 wake-ups of an HTTP request otherwise costs up to a scheduler slice,
    which measures the machine, not the server. ``shared``: the normal scheduler. Metrics of
    the first entry carry plain names, the others a ``_<name>`` suffix.
    """
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"latencies": {}}
    for i, sched in enumerate(p.get("c1_scheduling", ["fifo"])):
        if sched not in ("fifo", "shared"):
            raise ValueError(f"c1_scheduling entries are 'fifo' or 'shared', got {sched!r}")
        priority = int(p.get("fifo_priority", 10)) if sched == "fifo" else None
        with fifo_scheduling([server.proc.pid, os.getpid()], priority) as applied:
            if priority is not None and not applied:
                log.warning("cannot use SCHED_FIFO here (needs root or CAP_SYS_NICE): measuring under the "
                            "normal scheduler")
                priority = None
            m, d = _c1_rounds(server, state, bodies, texts, modes, work, p)
        suffix = "" if i == 0 else f"_{sched}"
        metrics.update({f"{k}{suffix}": v for k, v in m.items()})
        lat = d.pop("latencies")
        if i == 0:
            details["latencies"] = lat
        details[sched] = {**d, "fifo_priority": priority}
    return metrics, details


def _c1_rounds(server: ServerProcess, state, bodies: Mapping[str, Path], texts: list[str], modes: Sequence[str],
               work: Path, p: Mapping) -> tuple[dict, dict]:
    k, fields = int(p.get("k", 10)), list(p.get("fields", ["title"]))
    n, rounds, duration = int(p.get("c1_requests", len(texts))), int(p.get("rounds", 3)), float(p.get("duration_s", 30))
    keys = ("http_p50_ms", "inproc_p50_ms", "server_cpu_ms", "client_cpu_ms", "inproc_cpu_ms")
    per_round = {m: {key: [] for key in keys} for m in modes}
    http_runs: dict[str, list[LoadResult]] = {m: [] for m in modes}
    inproc_lat: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for j, mode in enumerate(modes[r % len(modes):] + modes[:r % len(modes)]):
            rec = per_round[mode]

            def over_http():
                cpu = server.cpu_seconds()
                res = loadgen(server.port, bodies[mode], work / "c1.json", concurrency=1, requests=n,
                              duration_s=duration)
                http_runs[mode].append(res)
                rec["http_p50_ms"].append(res.stats()["p50_ms"])
                rec["server_cpu_ms"].append((server.cpu_seconds() - cpu) / max(res.sent, 1) * 1e3)
                rec["client_cpu_ms"].append(res.cpu_s / max(res.sent, 1) * 1e3)

            def in_process():
                search, lat = in_process_search(state, texts, mode, k, fields), []
                cpu = time.process_time()
                for i in range(n):
                    t = time.perf_counter()
                    search(i)
                    lat.append((time.perf_counter() - t) * 1e3)
                rec["inproc_cpu_ms"].append((time.process_time() - cpu) / n * 1e3)
                rec["inproc_p50_ms"].append(float(np.percentile(lat, 50)))
                inproc_lat[mode].extend(lat)

            for step in ((over_http, in_process) if (r + j) % 2 == 0 else (in_process, over_http)):
                step()
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"rounds": rounds, "requests_per_round": n, "per_round": per_round, "latencies": {}}
    for mode in modes:
        runs, rec = http_runs[mode], per_round[mode]
        lat = [x for res in runs for x in res.latencies_ms]
        _put(metrics, f"{mode}_c1", summarize(lat, sum(res.elapsed_s for res in runs),
                                              sum(res.error_count for res in runs), sum(res.sent for res in runs)))
        in_stats = summarize(inproc_lat[mode], sum(inproc_lat[mode]) / 1e3)
        for key in ("p50_ms", "p95_ms", "p99_ms", "qps"):
            metrics[f"{mode}_inproc_{key}"] = in_stats[key]
        overhead = np.subtract(rec["http_p50_ms"], rec["inproc_p50_ms"])
        metrics[f"{mode}_http_overhead_p50_ms"] = float(np.median(overhead))
        for key in ("server_cpu_ms", "client_cpu_ms", "inproc_cpu_ms"):
            metrics[f"{mode}_{key}_per_query"] = float(np.median(rec[key]))
        cpu_overhead = np.subtract(rec["server_cpu_ms"], rec["inproc_cpu_ms"])
        metrics[f"{mode}_http_cpu_overhead_ms"] = float(np.median(cpu_overhead))
        details["latencies"][f"{mode}_c1"] = lat
        details["latencies"][f"{mode}_inproc"] = inproc_lat[mode]
    return metrics, details


def _put(metrics: dict, prefix: str, stats: Mapping[str, float]) -> None:
    for key in ("qps", "p50_ms", "p95_ms", "p99_ms", "requests", "errors"):
        metrics[f"{prefix}_{key}"] = stats[key]


def _batch_summary(text: str) -> dict:
    """Mean texts per encoder call from the server's Prometheus histograms (micro-batching at work)."""
    sums, counts = {}, {}
    for line in text.splitlines():
        if line.startswith("embedx_encoder_batch_texts_sum"):
            sums[line.split("{")[1].split("}")[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("embedx_encoder_batch_texts_count"):
            counts[line.split("{")[1].split("}")[0]] = float(line.rsplit(" ", 1)[1])
    return {labels: {"calls": counts[labels], "mean_texts_per_call": sums[labels] / counts[labels]}
            for labels in sums if counts.get(labels)}


# ---------------------------------------------------------------------- plot
def plot_latencies(latencies: Mapping[str, Sequence[float]], path: Path) -> str | None:
    """Latency distributions (CDF, log-scale ms) per mode: in-process and HTTP at each concurrency."""
    plt = pyplot()
    if plt is None:
        return None
    modes = [m for m in MODES if any(k.startswith(m + "_") for k in latencies)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4.2), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        keys = [k for k in latencies if k.startswith(mode + "_")]
        for key in sorted(keys, key=lambda k: -1 if k.endswith("inproc") else int(k.rsplit("_c", 1)[-1])):
            lat = np.sort(np.asarray(latencies[key], dtype=float))
            if not len(lat):
                continue
            clients = key.rsplit("_c", 1)[-1]
            label = "in-process" if key.endswith("inproc") else f"HTTP, {clients} client{'s' * (clients != '1')}"
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=label,
                    ls="--" if key.endswith("inproc") else "-")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_title(f"{mode}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("fraction of requests")
    fig.suptitle("serve-load: client-side latency distributions")
    return save_figure(fig, path, dpi=110)
