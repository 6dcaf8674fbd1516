"""``sparse-scifact``: the ablation table of inference-free learned sparse retrieval on SciFact
test, like Geng et al. (2024)'s: BM25; SPLADE-tiny siamese; SPLADE-tiny's document side with IDF
queries (untrained for that); and the trained ablations (plain FLOPS, IDF-aware FLOPS, IDF-aware
FLOPS + ensemble distillation), each a training output folder named in the spec.

Per row:

- quality and cost through :func:`embedx.sparse.evaluate.evaluate_sparse` (NDCG@10 and
  Recall@100 in the native index with float weights and in Lucene with uint8 impacts, FLOPS,
  mean document and query terms; corpus encodings cached per model hash under ~/.cache/embedx);
- search latency against Lucene BM25 in one process, one query per call, one thread, the two
  systems called back to back on the same query in swapped order (:func:`timing.interleaved`),
  p50 ratios: the Lucene impact index vs Lucene BM25 (same engine; neither index stores text)
  and the native :class:`indexing.sparse.ImpactIndex` vs Lucene BM25. Inference-free rows time
  the query end to end (tokenizer + IDF lookup + search); the siamese row's queries need a model
  call, so it times the search alone on precomputed query vectors (said so in the table).
  With ``latency.fold_query_weights`` (default on) an inference-free row's timed indexes hold
  ``idf(t) * w_d(t)`` (:meth:`IdfQueryEncoder.fold_into`), so its queries are plain bags of
  tokens, which reach Lucene as one pretokenized string; that Lucene index's NDCG@10 is reported too
  (``<row>_lucene_folded_ndcg@10``), to show the timed index ranks as well as the evaluated one.

Document encoding (on SPLADE-tiny, the start point, and on the best trained model when one
exists): torch :class:`~embedx.sparse.encoder.SparseDocEncoder` (packed) against its ONNX fp32
and int8 exports (:mod:`embedx.export`, cached per model hash and exporter code) on a fixed
seeded subset of the corpus, rounds alternated (:func:`embedx.export.throughput.compare_throughput`),
the same thread count for all; NDCG@10 of the whole corpus encoded by each export.

A trained row whose folder is missing is reported as not trained, with the command that makes
it; the checks on it have no value, and :func:`run` lists them under ``not_run``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..runner import BenchmarkSkipped, Context
from ..timing import interleaved
from .common import torch_threads

log = logging.getLogger(__name__)

KINDS = ("bm25", "siamese", "idf", "trained")
QUALITY = ("ndcg@10", "recall@100")
DEFAULT_CACHE = "~/.cache/embedx/sparse-scifact"
# the bars of issue 5 that a missing trained model leaves without a value
BEST_CHECKS = ("best_trained_ndcg@10", "best_trained_lucene_ratio_p50@k10", "best_trained_lucene_ratio_p50@k100",
               "best_trained_native_ratio_p50@k10", "best_trained_native_ratio_p50@k100",
               "best_trained_onnx_int8_docs_per_s", "best_trained_onnx_int8_ndcg@10_delta")


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    label: str = ""
    model: str | None = None      # model folder or short name; a training output folder for "trained"
    config: str | None = None     # the training config that makes a "trained" row
    seeds: tuple[str, ...] = ()   # "trained": output folders of the same config run with other seeds

    @property
    def title(self) -> str:
        return self.label or self.name


def parse_rows(raw: Sequence[Mapping]) -> list[Row]:
    rows = []
    for i, r in enumerate(raw or []):
        if not isinstance(r, Mapping) or "name" not in r or r.get("kind") not in KINDS:
            raise ValueError(f"rows[{i}] needs a name and a kind among {KINDS}, got {r!r}")
        if r["kind"] != "bm25" and not r.get("model"):
            raise ValueError(f"rows[{i}] ({r['name']}) needs a model")
        seeds = r.get("seeds") or []
        if seeds and (r["kind"] != "trained" or not isinstance(seeds, list)
                      or not all(isinstance(x, str) and x for x in seeds)):
            raise ValueError(f"rows[{i}] ({r['name']}): seeds must be a list of training output folders "
                             f"of a trained row")
        rows.append(Row(name=str(r["name"]), kind=r["kind"], label=str(r.get("label", "")),
                        model=r.get("model"), config=r.get("config"), seeds=tuple(seeds)))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique, got {names}")
    return rows


def training_missing(row: Row) -> str | None:
    """None when a trained row's output folder holds ``model/`` and ``query_encoder/``, else why not."""
    root = Path(row.model)
    missing = [p for p in ("model/config.json", "query_encoder/encoder.json") if not (root / p).is_file()]
    return f"{root}: no {' or '.join(missing)}" if missing else None


def training_record(row: Row) -> dict[str, Any]:
    """How a trained row's model was made, as its run folder records it: the resolved config
    (``config.yaml``, overrides applied) and the run summary (``summary.json``), so a result made
    with a shortened or changed recipe says so."""
    import json

    import yaml

    root, out = Path(row.model), {}
    if (root / "config.yaml").is_file():
        out["config"] = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    if (root / "summary.json").is_file():
        out["summary"] = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    return out


def seed_quality(row: Row, first: Mapping[str, float], texts: Sequence[str], dataset_dir: Path, p: Mapping,
                 work_dir: Path) -> tuple[dict[str, float], list[dict]]:
    """Quality of a trained row over its seeds: the row's own model (``first``: its native
    NDCG@10 and R@100) and each folder in ``row.seeds`` that holds a finished run.

    Why: one fine-tuning run on 809 training queries moves by a few thousandths of NDCG@10
    from seed to seed, as much as some gaps between ablation rows. Returns the mean, sample
    standard deviation (two runs or more) and minimum, and one record per seed (a missing
    folder says so).
    """
    from embedx.sparse.evaluate import evaluate_sparse

    records = [{"model": str(row.model), "seed": _run_seed(row), **first}]
    for folder in row.seeds:
        sub = Row(name=row.name, kind="trained", model=folder)
        why = training_missing(sub)
        if why:
            records.append({"model": folder, "status": "not trained", "reason": why})
            log.warning("%s: seed run %s not trained: %s", row.name, folder, why)
            continue
        doc_enc, q_enc, _ = row_encoders(sub, texts, p)
        res = evaluate_sparse(doc_enc, dataset_dir, query_encoder=q_enc, engines=("native",),
                              depth=int(p.get("depth", 100)), progress=False, work_dir=work_dir)
        records.append({"model": folder, "seed": _run_seed(sub), **{m: res[f"native_{m}"] for m in QUALITY}})
    done = [r for r in records if "status" not in r]
    metrics: dict[str, float] = {"seeds": len(done)}
    for m in QUALITY:
        v = np.array([r[m] for r in done])
        metrics.update({f"{m}_mean": float(v.mean()), f"{m}_min": float(v.min())})
        if len(v) > 1:   # a sample sd needs two runs
            metrics[f"{m}_sd"] = float(v.std(ddof=1))
    return metrics, records


def _run_seed(row: Row) -> int | None:
    return (training_record(row).get("config") or {}).get("seed")


def train_command(row: Row) -> str:
    config = row.config or "<config.yaml>"
    return (f"embedx sparse prepare --dataset $EMBEDX_DATA/scifact --out runs/sparse/scifact-train.npz "
            f"(once, shared by the ablations); embedx train sparse --config {config}")


# ---------------------------------------------------------------------- encoders of a row
class SiameseQueries:
    """SPLADE-style queries: the document encoder run on the query text (a model call per query),
    cached like the teachers' encodings; vocabulary from the same tokenizer."""

    kind = "sparse"

    def __init__(self, model: str, vocab_source, *, max_length: int, cache_dir: Path):
        from embedx.sparse.teachers import SparseTeacher

        self.teacher = SparseTeacher(model, cache_dir=cache_dir, max_length=max_length, progress=False)
        self._vocab = vocab_source

    def encode(self, texts: Sequence[str]):
        return self.teacher.encode_queries(list(texts))

    def vocabulary(self) -> list[str]:
        return self._vocab.vocabulary()


def row_encoders(row: Row, corpus_texts: Sequence[str], p: Mapping) -> tuple[Any, Any, Path]:
    """(document encoder, query encoder, model folder) of a learned row."""
    from embedx.sparse.cache import default_cache_dir
    from embedx.sparse.evaluate import TorchDocEncoder, resolve_model_dirs
    from embedx.sparse.query import idf_tokenizer
    from serving.encoders.base import load_encoder
    from serving.encoders.idf import IdfQueryEncoder

    model_dir, query_dir = resolve_model_dirs(row.model)
    docs = TorchDocEncoder(model_dir, max_length=int(p.get("max_length", 512)),
                           batch_size=int(p.get("batch_size", 32)), progress=bool(p.get("progress", False)))
    if row.kind == "trained":
        if query_dir is None:
            raise ValueError(f"{row.model}: a trained row needs the run's query_encoder/")
        return docs, load_encoder(query_dir), model_dir
    idf = IdfQueryEncoder.from_corpus(idf_tokenizer(docs.tokenizer), corpus_texts)
    if row.kind == "idf":
        return docs, idf, model_dir
    cache = default_cache_dir() / "encodings"
    return docs, SiameseQueries(str(model_dir), idf, max_length=docs.max_length, cache_dir=cache), model_dir


def corpus_matrix(doc_encoder, texts: Sequence[str]):
    """The corpus encoding :func:`evaluate_sparse` cached (same key: a cache hit once it ran)."""
    from scipy import sparse

    from embedx.sparse.cache import cached_encoding, default_cache_dir

    key = getattr(doc_encoder, "encoder_hash", None)
    cache = default_cache_dir() / "encodings" if isinstance(key, str) else None
    m = cached_encoding(cache, f"{key}-docs", list(texts), lambda t: sparse.csr_matrix(doc_encoder.encode(list(t))))
    return sparse.csr_matrix(m, dtype=np.float32)


# ---------------------------------------------------------------------- latency
def latency_pair(a: Callable[[int], object], b: Callable[[int], object], n: int, rounds: int,
                 warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Per-call latency of ``a`` against ``b`` on the same inputs, interleaved: p50 of each (us),
    the ratio of the p50s and the median over rounds of the ratio of round totals."""
    for _ in range(warmup):          # JIT, caches, lazily built query tools
        for i in range(n):
            a(i)
            b(i)
    ta, tb = interleaved(a, b, n, rounds, clock)
    pa, pb = float(np.median(ta)), float(np.median(tb))
    return {"a_p50_us": pa * 1e6, "b_p50_us": pb * 1e6, "ratio_p50": pa / pb if pb else float("nan"),
            "ratio_total": float(np.median(ta.sum(axis=1) / tb.sum(axis=1)))}


def tokenize_costs(qtexts: Sequence[str], rounds: int, clock: Callable[[], float]) -> dict[str, float]:
    """p50 per query (us) of SPLADE-tiny's tokenizer called directly against the per-word cache
    the IDF query encoder uses (same ids, checked), interleaved; empty when the model is missing."""
    from embedx.pretrained import local_model_path
    from serving.encoders.idf import load_tokenizer
    from serving.encoders.word_cache import WordCacheTokenizer

    folder = local_model_path("splade-tiny")
    if folder is None:
        return {}
    tok = load_tokenizer(folder)
    tok.no_padding()
    tok.no_truncation()
    cache = WordCacheTokenizer(tok)
    if cache.ids_batch(qtexts) != [e.ids for e in tok.encode_batch(list(qtexts), add_special_tokens=False)]:
        raise AssertionError("the word cache's token ids differ from the tokenizer's")
    st = latency_pair(lambda i: tok.encode(qtexts[i], add_special_tokens=False).ids,
                      lambda i: cache.ids(qtexts[i]), len(qtexts), rounds, 1, clock)
    return {"query_tokenize_p50_us_tokenizer": st["a_p50_us"], "query_tokenize_p50_us_word_cache": st["b_p50_us"]}


# ---------------------------------------------------------------------- ONNX export and throughput
def exported(model_dir: Path, precision: str, cache: Path, max_length: int) -> Path:
    """The ONNX export of a document encoder folder, made once per model content, settings and exporter code."""
    from embedx.export import export_sparse_doc
    from embedx.sparse.cache import folder_hash

    from .serve_load import exporter_digest, settings_key

    key = settings_key(folder_hash(model_dir), precision, max_length, exporter_digest())
    out = cache / "onnx" / f"{model_dir.parent.name}-{model_dir.name}-{precision}-{key}"
    if not (out / "encoder.json").is_file():
        log.info("exporting %s to ONNX %s: %s", model_dir, precision, out)
        export_sparse_doc(str(model_dir), out, int8=precision == "int8", max_length=max_length, overwrite=True)
    return out


def encoding_bench(tag: str, model_dir: Path, doc_encoder, query_encoder, dataset_dir: Path, texts: Sequence[str],
                   p: Mapping, cache: Path, work_dir: Path) -> tuple[dict, dict]:
    """Throughput of torch vs ONNX fp32 vs int8 on a subset, and NDCG@10 of the corpus encoded by each export."""
    import json

    import torch

    from embedx.export.throughput import compare_throughput
    from embedx.sparse.evaluate import evaluate_sparse
    from serving.encoders.onnx import OnnxSparseEncoder

    t = dict(p.get("throughput") or {})
    threads = int(t.get("threads", 1))
    max_length = int(p.get("max_length", 512))
    batch = int(t.get("batch_size", 32))
    precisions = list(t.get("precisions", ["fp32", "int8"]))
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"model": str(model_dir), "threads": threads}
    folders = {}
    for prec in precisions:
        try:
            folders[prec] = exported(model_dir, prec, cache, max_length)
        except (ValueError, RuntimeError) as e:   # ExportError / ParityError: reported, not fatal
            log.warning("%s: ONNX %s export failed: %s", tag, prec, e)
            details[f"onnx_{prec}_error"] = str(e)
    for prec, folder in folders.items():
        cfg = json.loads((folder / "encoder.json").read_text())
        details[f"onnx_{prec}"] = {"folder": str(folder), "hash": cfg.get("hash"),
                                   "quantization": cfg.get("quantization"),
                                   "parity": {k: v for k, v in (cfg.get("parity") or {}).items()
                                              if k not in ("batch_shapes", "thresholds")}}
    onnx = {f"onnx_{prec}": OnnxSparseEncoder.load(folder, threads=threads) for prec, folder in folders.items()}

    rng = np.random.default_rng(int(t.get("seed", 0)))
    n = min(int(t.get("docs", 500)), len(texts))
    subset = [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))]
    # one thread: every encoder computes in the calling thread, so its CPU time is its cost
    # whatever else runs on the shared machine; more threads: wall time
    thread_clock = t.get("clock", "thread") == "thread" and threads == 1
    clock = time.thread_time if thread_clock else time.perf_counter
    model = doc_encoder.model
    fns: dict[str, Callable] = {"torch": lambda x: model.encode(x, batch_size=batch, max_length=max_length)}
    fns.update({name: (lambda x, e=e: e.encode(x, batch_size=batch)) for name, e in onnx.items()})
    with torch.inference_mode(), torch_threads(threads):
        for fn in fns.values():      # session set-up and allocator growth are not throughput
            fn(subset[:batch])
        runs = compare_throughput(fns, subset, rounds=int(t.get("rounds", 3)), warmup=0, clock=clock)
    details["throughput"] = {"docs": n, "rounds": int(t.get("rounds", 3)), "batch_size": batch,
                             "clock": "thread CPU time" if thread_clock else "wall", "runs": runs}
    for name, stats in runs.items():
        metrics[f"{tag}_{name}_docs_per_s"] = stats["docs_per_s"]
        if name != "torch":
            metrics[f"{tag}_{name}_speedup"] = stats["speedup"]

    # quality of the whole corpus encoded by each export (cached per export hash)
    enc_threads = int(t.get("encode_threads", 2))
    for name in onnx:
        corpus_enc = OnnxSparseEncoder.load(folders[name.removeprefix("onnx_")], threads=enc_threads)
        res = evaluate_sparse(corpus_enc, dataset_dir, query_encoder=query_encoder, engines=("native",),
                              depth=int(p.get("depth", 100)), progress=False, work_dir=work_dir)
        for m in QUALITY:
            metrics[f"{tag}_{name}_{m}"] = res[f"native_{m}"]
        metrics[f"{tag}_{name}_doc_terms"] = res["doc_terms"]
    if "onnx_int8" in onnx and "onnx_fp32" in onnx:
        metrics[f"{tag}_onnx_int8_ndcg@10_delta"] = abs(metrics[f"{tag}_onnx_int8_ndcg@10"]
                                                         - metrics[f"{tag}_onnx_fp32_ndcg@10"])
    return metrics, details


# ---------------------------------------------------------------------- the table
def _cell(v, fmt: str = "{:.3f}") -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def ablation_table(rows: Sequence[Row], m: Mapping[str, Any], status: Mapping[str, str]) -> str:
    """The markdown ablation table (one line per row; a row not trained says so)."""
    head = ["Model", "NDCG@10", "R@100", "NDCG@10 over seeds", "NDCG@10 Lucene", "FLOPS", "doc terms", "query terms",
            "Lucene / BM25 k10", "Lucene / BM25 k100", "native / BM25 k10", "native / BM25 k100"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        g = lambda key: m.get(f"{r.name}_{key}")  # noqa: E731
        if status.get(r.name):
            lines.append(f"| {r.title} | {status[r.name]} |" + " |" * (len(head) - 2))
            continue
        lat = [_cell(g(k), "{:.2f}x") for k in ("lucene_ratio_p50@k10", "lucene_ratio_p50@k100",
                                                "native_ratio_p50@k10", "native_ratio_p50@k100")]
        if r.kind == "bm25":
            lat = ["1 (baseline)"] * 2 + ["—"] * 2
        seeds = "—"
        if g("seeds"):
            sd = g("ndcg@10_sd")
            seeds = f"{g('ndcg@10_mean'):.3f}" + ("" if sd is None or np.isnan(sd) else f" ± {sd:.3f}") + \
                f" ({g('seeds')} seeds)"
        lines.append("| " + " | ".join([r.title, _cell(g("ndcg@10")), _cell(g("recall@100")), seeds,
                                        _cell(g("lucene_ndcg@10")), _cell(g("flops"), "{:.2f}"),
                                        _cell(g("doc_terms"), "{:.1f}"), _cell(g("query_terms"), "{:.1f}"), *lat])
                     + " |")
    return "\n".join(lines)


def encoding_table(tags: Sequence[tuple[str, str]], m: Mapping[str, Any]) -> str:
    head = ["Document encoder", "torch docs/s", "ONNX fp32 docs/s", "ONNX int8 docs/s", "int8 / torch",
            "NDCG@10 fp32", "NDCG@10 int8", "NDCG@10 delta"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tag, title in tags:
        g = lambda key: m.get(f"{tag}_{key}")  # noqa: E731
        lines.append("| " + " | ".join([title, _cell(g("torch_docs_per_s"), "{:.1f}"),
                                        _cell(g("onnx_fp32_docs_per_s"), "{:.1f}"),
                                        _cell(g("onnx_int8_docs_per_s"), "{:.1f}"),
                                        _cell(g("onnx_int8_speedup"), "{:.2f}x"),
                                        _cell(g("onnx_fp32_ndcg@10"), "{:.4f}"),
                                        _cell(g("onnx_int8_ndcg@10"), "{:.4f}"),
                                        _cell(g("onnx_int8_ndcg@10_delta"), "{:.4f}")]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the pipeline
def run(ctx: Context) -> dict:
    from indexing.lucene import LuceneBM25Index, LuceneImpactIndex
    from indexing.quantize import quantize_uint8
    from indexing.sparse import ImpactIndex

    from ...data import load_beir
    from ...eval import evaluate
    from ...lexical import BM25Weighting
    from ...pretrained import model_available
    from ...retrieval import doc_text
    from ...sparse.evaluate import evaluate_sparse, flops_stats

    p = ctx.params
    rows = parse_rows(p.get("rows"))
    dataset_dir = ctx.dataset_path()
    ds = load_beir(dataset_dir, split=ctx.spec.dataset.get("split", "test"))
    doc_ids = list(ds.corpus)
    texts = [doc_text(ds.corpus[d]) for d in doc_ids]
    qids = list(ds.judged_queries())
    qtexts = [ds.queries[q] for q in qids]
    depth, k1, b = int(p.get("depth", 100)), float(p.get("k1", 0.9)), float(p.get("b", 0.4))
    lat = dict(p.get("latency") or {})
    ks = [int(k) for k in lat.get("k", [10, 100])]
    lat_rounds, lat_warmup = int(lat.get("rounds", 5)), int(lat.get("warmup", 1))
    clock = time.thread_time if lat.get("clock", "wall") == "thread" else time.perf_counter
    cache = Path(str(p.get("cache_dir", DEFAULT_CACHE))).expanduser()
    metrics: dict[str, Any] = {"queries": len(qids), "documents": len(doc_ids)}
    details: dict[str, Any] = {"rows": {}, "latency": {"k": ks, "rounds": lat_rounds, "threads": 1,
                                                       "clock": "thread" if clock is time.thread_time else "wall"}}
    status: dict[str, str] = {}

    # BM25 in Lucene: quality and the latency baseline (no stored text, as the impact indexes)
    t0 = time.perf_counter()
    bm25_dir = ctx.work_dir / "lucene-bm25"
    shutil.rmtree(bm25_dir, ignore_errors=True)
    bm25 = LuceneBM25Index.build(bm25_dir, ((i, d.get("title", ""), d.get("text", "")) for i, d in ds.corpus.items()),
                                 store_raw=False)
    bm25_search = lambda i, k: bm25.search([qtexts[i]], k, k1=k1, b=b)  # noqa: E731
    for r in rows:
        if r.kind != "bm25":
            continue
        run_ = bm25.search(qtexts, depth, k1=k1, b=b).to_run(qids)
        for q in qids:   # as Pyserini's BEIR runs: a hit whose id is the query's own is dropped
            run_[q].pop(q, None)
        for mname, v in evaluate(ds.qrels, run_, QUALITY).items():
            metrics[f"{r.name}_{mname}"] = v
        w = BM25Weighting(k1=k1, b=b)
        bm25_docs = w.fit_transform(texts)
        for key, v in flops_stats(w.queries(qtexts), bm25_docs).items():
            metrics[f"{r.name}_{key}"] = v   # terms of embedx.lexical's analyzer (close to Lucene's)
        for k in ks:
            per_call = [0.0] * len(qtexts)
            for i in range(len(qtexts)):       # warm-up, then one timed pass
                bm25_search(i, k)
            for i in range(len(qtexts)):
                s = clock()
                bm25_search(i, k)
                per_call[i] = clock() - s
            metrics[f"{r.name}_p50_us@k{k}"] = float(np.median(per_call) * 1e6)
    metrics["bm25_seconds"] = time.perf_counter() - t0
    metrics.update(tokenize_costs(qtexts, lat_rounds, clock))

    # learned rows
    trained: list[Row] = []
    for r in rows:
        if r.kind == "bm25":
            continue
        if r.kind == "trained":
            why = training_missing(r)
            if why:
                status[r.name] = f"not trained ({why}): {train_command(r)}"
                details["rows"][r.name] = {"status": "not trained", "reason": why, "command": train_command(r)}
                log.warning("%s: not trained: %s", r.name, why)
                continue
        elif not model_available(r.model) and not Path(r.model).exists():
            raise BenchmarkSkipped(f"model {r.model} is not installed")
        t0 = time.perf_counter()
        doc_enc, q_enc, model_dir = row_encoders(r, texts, p)
        res = evaluate_sparse(doc_enc, dataset_dir, query_encoder=q_enc, engines=("native", "lucene"),
                              depth=depth, progress=False, work_dir=ctx.work_dir)
        for m in QUALITY:
            metrics[f"{r.name}_{m}"] = res[f"native_{m}"]
            metrics[f"{r.name}_lucene_{m}"] = res[f"lucene_{m}"]
        for key in ("flops", "doc_terms", "query_terms"):
            metrics[f"{r.name}_{key}"] = res[key]
        details["rows"][r.name] = {"status": "measured", "model": str(model_dir), "kind": r.kind,
                                   "query_encoder": type(q_enc).__name__,
                                   "latency_includes_query_encoding": r.kind != "siamese"}
        if r.kind == "trained":
            details["rows"][r.name]["training"] = training_record(r)
        if r.seeds:
            sm, records = seed_quality(r, {m: res[f"native_{m}"] for m in QUALITY}, texts, dataset_dir, p,
                                       ctx.work_dir)
            metrics.update({f"{r.name}_{k}": v for k, v in sm.items()})
            details["rows"][r.name]["seeds"] = records

        # latency against BM25, one query per call
        docs = corpus_matrix(doc_enc, texts)
        fold = r.kind != "siamese" and bool(lat.get("fold_query_weights", True))
        if fold:   # the IDF table moves into the impacts; a query is a bag of tokens
            q_enc, docs = q_enc.fold_into(docs)
        impacts = docs.copy()
        q8, _ = quantize_uint8(docs.data)
        impacts.data = q8.astype(np.float32)
        imp_dir = ctx.work_dir / f"lucene-impact-{r.name}"
        shutil.rmtree(imp_dir, ignore_errors=True)
        vocab = q_enc.vocabulary()
        lucene = LuceneImpactIndex.build(imp_dir, doc_ids, impacts, vocab)
        native = ImpactIndex.build(doc_ids, docs, quantize=lat.get("native_quantize", "uint8"))
        details["rows"][r.name]["latency_index"] = "query weights folded into the impacts" if fold else "as evaluated"
        if fold:   # the index timed must rank as well as the one evaluated
            run_ = lucene.search(q_enc.encode(qtexts), depth).to_run(qids)
            metrics[f"{r.name}_lucene_folded_ndcg@10"] = evaluate(ds.qrels, run_, ("ndcg@10",))["ndcg@10"]
        if r.kind == "siamese":   # queries need a model: search alone on precomputed vectors
            qm = q_enc.encode(qtexts).tocsr()
            searches = {"lucene": lambda i, k: lucene.search(qm[i], k), "native": lambda i, k: native.search(qm[i], k)}
        else:
            searches = {"lucene": lambda i, k: lucene.search(q_enc.encode([qtexts[i]]), k),
                        "native": lambda i, k: native.search(q_enc.encode([qtexts[i]]), k)}
            if fold:   # a bag of tokens: Lucene takes it as one string (the native index wants its vector)
                searches["lucene"] = lambda i, k: lucene.search_pretokenized(q_enc.pretokenized([qtexts[i]]), k)
        for k in ks:
            for engine, index_search in searches.items():
                st = latency_pair(lambda i, k=k, f=index_search: f(i, k),
                                  lambda i, k=k: bm25_search(i, k), len(qtexts), lat_rounds, lat_warmup, clock)
                metrics[f"{r.name}_{engine}_p50_us@k{k}"] = st["a_p50_us"]
                metrics[f"{r.name}_{engine}_bm25_p50_us@k{k}"] = st["b_p50_us"]   # BM25 in the same pair
                metrics[f"{r.name}_{engine}_ratio_p50@k{k}"] = st["ratio_p50"]
                metrics[f"{r.name}_{engine}_ratio_total@k{k}"] = st["ratio_total"]
        lucene.close()
        shutil.rmtree(imp_dir, ignore_errors=True)
        metrics[f"{r.name}_seconds"] = time.perf_counter() - t0
        if r.kind == "trained":
            trained.append(r)

    # the best trained row carries the bars
    best = max(trained, key=lambda r: metrics[f"{r.name}_ndcg@10"]) if trained else None
    metrics["trained_rows"] = len(trained)
    if best is not None:
        metrics["best_trained"] = best.name
        for key in ("ndcg@10", "ndcg@10_mean", "seeds", "recall@100", "flops", "doc_terms") + tuple(
                f"{e}_ratio_p50@k{k}" for e in ("lucene", "native") for k in ks):
            metrics[f"best_trained_{key}"] = metrics[f"{best.name}_{key}"]

    # document encoding: torch vs ONNX fp32 vs int8 on the start point and the best trained model
    enc_tags: list[tuple[str, str]] = []
    if (p.get("throughput") or {}).get("enabled", True):
        targets = []
        start = next((r for r in rows if r.kind == "idf"), None)
        if start is not None:
            targets.append(("start", start))
        if best is not None:
            targets.append(("best_trained", best))
        for tag, r in targets:
            doc_enc, q_enc, model_dir = row_encoders(r, texts, p)
            m, d = encoding_bench(tag, Path(model_dir), doc_enc, q_enc, dataset_dir, texts, p, cache, ctx.work_dir)
            metrics.update(m)
            details[f"encoding_{tag}"] = d
            enc_tags.append((tag, r.title))
    bm25.close()

    not_run = {}
    if best is None:
        why = "no trained model: " + "; ".join(f"{r.name}: {status[r.name]}" for r in rows if r.name in status)
        not_run = {c: why for c in BEST_CHECKS}
    details["not_trained"] = {r.name: details["rows"][r.name] for r in rows if r.name in status}
    details["table"] = ablation_table(rows, metrics, status)
    details["encoding_table"] = encoding_table(enc_tags, metrics)
    log.info("ablation table:\n%s\n\n%s", details["table"], details["encoding_table"])
    start_name = next((r.name for r in rows if r.kind == "idf"), None)
    headline = [f"{r.name}_{m}" for r in rows if r.name not in status for m in ("ndcg@10", "ndcg@10_mean")] + [
        "trained_rows", *(c for c in BEST_CHECKS if c in metrics),
        *(f"{start_name}_{e}_ratio_p50@k{k}" for e in ("lucene", "native") for k in ks),
        "start_torch_docs_per_s", "start_onnx_int8_docs_per_s", "start_onnx_int8_speedup",
        "start_onnx_int8_ndcg@10_delta"]
    return {"metrics": metrics, "headline": [h for h in headline if h in metrics] + list(not_run),
            "details": details, "not_run": not_run}
