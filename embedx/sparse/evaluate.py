"""Evaluate an inference-free sparse model on a BEIR split, in the native index and in Lucene.

The document encoder is a torch model folder (a training run's ``model/``, or any masked-LM
folder or short name) or any object whose ``encode(texts)`` returns a ``scipy.sparse`` matrix
(the ONNX encoder plugs in here); queries go through an IDF query encoder (the run's
``query_encoder/``, a given folder or object, else IDF computed from the corpus). Reported:

- NDCG@10 and Recall@100 per engine: ``native`` (float weights, exact), ``native-uint8`` and
  ``lucene`` (the same uint8 impacts in both, :mod:`indexing.quantize`);
- ``flops``: ``sum_t P(t in query) * P(t in document)`` over the query set and the corpus, the
  expected number of postings a query touches per document;
- mean document and query term counts, and the document-encoding throughput when encoded.

Document encodings are cached per model content hash (:mod:`embedx.sparse.cache`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import sparse

log = logging.getLogger(__name__)

ENGINES = ("native", "native-uint8", "lucene")


def flops_stats(queries: sparse.spmatrix, docs: sparse.spmatrix) -> dict[str, float]:
    """FLOPS (``sum_t P(t in q) * P(t in d)``) and mean term counts of a query set and a corpus."""
    q = sparse.csr_matrix(queries)
    d = sparse.csr_matrix(docs)
    q.eliminate_zeros()
    d.eliminate_zeros()
    p_q = np.bincount(q.indices, minlength=q.shape[1]) / max(q.shape[0], 1)
    p_d = np.bincount(d.indices, minlength=d.shape[1]) / max(d.shape[0], 1)
    return {"flops": float(p_q @ p_d), "doc_terms": float(np.diff(d.indptr).mean()) if d.shape[0] else 0.0,
            "query_terms": float(np.diff(q.indptr).mean()) if q.shape[0] else 0.0}


def resolve_model_dirs(path: str | Path) -> tuple[Path, Path | None]:
    """A training output folder -> (its ``model/``, its ``query_encoder/``); a model folder -> (it, None)."""
    from embedx.pretrained import resolve_model

    p = Path(resolve_model(path))
    if (p / "model" / "config.json").is_file():
        q = p / "query_encoder"
        return p / "model", q if q.is_dir() else None
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json) nor a training output (no model/)")
    return p, None


class TorchDocEncoder:
    """A torch :class:`SparseDocEncoder` folder behind the ``encode(texts) -> csr`` interface,
    with the content hash that keys the encoding cache."""

    def __init__(self, folder: str | Path, *, max_length: int = 512, batch_size: int = 32, progress: bool = True,
                 device: str = "cpu"):
        from .cache import folder_hash
        from .encoder import SparseDocEncoder

        self.folder = Path(folder)
        self.model = SparseDocEncoder.from_pretrained(self.folder).to(device)
        self.tokenizer = self.model.tokenizer
        self.max_length, self.batch_size, self.progress = max_length, batch_size, progress
        # the key the SPLADE teacher uses too, so preparation and evaluation share corpus encodings
        self.encoder_hash = f"splade-{folder_hash(self.folder)}-L{max_length}"

    def encode(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return self.model.encode(list(texts), batch_size=self.batch_size, max_length=self.max_length,
                                 progress=self.progress)


class PrecomputedDocs:
    """Document vectors encoded elsewhere (e.g. on a GPU machine) behind the ``encode`` interface:
    ``encode(texts)`` checks that it is asked for the corpus it holds, in its order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.ids, self.matrix, self.texts_hash = load_doc_vectors(self.path)
        self.encoder_hash = None   # already encoded: nothing to cache

    def encode(self, texts: Sequence[str]) -> sparse.csr_matrix:
        from .cache import texts_hash

        if len(texts) != self.matrix.shape[0] or (self.texts_hash and texts_hash(texts) != self.texts_hash):
            raise ValueError(f"{self.path} holds the encodings of another corpus ({self.matrix.shape[0]} documents)")
        return self.matrix


def save_doc_vectors(path: str | Path, ids: Sequence[str], matrix, texts: Sequence[str] | None = None) -> Path:
    """One ``.npz`` (no pickle): CSR arrays, the document ids and the hash of the encoded texts."""
    from indexing.fsutil import atomic_open

    from .cache import texts_hash

    m = sparse.csr_matrix(matrix, dtype=np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.asarray(m.shape),
                            ids=np.asarray(list(ids), dtype=str),
                            texts_hash=np.asarray(texts_hash(texts) if texts is not None else ""))
    return path


def load_doc_vectors(path: str | Path) -> tuple[list[str], sparse.csr_matrix, str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            m = sparse.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            return z["ids"].tolist(), m, str(z["texts_hash"])
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a document-vector file ({e})") from None


def encode_corpus(model: str | Path, corpus_dir: str | Path, out: str | Path, *, max_length: int = 512,
                  batch_size: int = 64, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Encode a corpus (title and text) with a torch document encoder into :func:`save_doc_vectors`'s
    file; runs wherever torch does (no index layer), e.g. next to training on a GPU."""
    import torch

    from embedx.data import load_corpus
    from embedx.retrieval import doc_text

    from .encoder import SparseDocEncoder

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir, _ = resolve_model_dirs(model)
    enc = SparseDocEncoder.from_pretrained(model_dir).to(device)
    corpus = load_corpus(corpus_dir)
    ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in ids]
    t0 = time.perf_counter()
    m = enc.encode(texts, batch_size=batch_size, max_length=max_length, progress=progress)
    seconds = time.perf_counter() - t0
    save_doc_vectors(out, ids, m, texts)
    return {"out": str(out), "documents": len(ids), "seconds": seconds, "docs_per_s": len(ids) / seconds,
            "device": device, "doc_terms": float(m.getnnz(axis=1).mean())}


def evaluate_sparse(model, dataset_dir: str | Path, *, split: str = "test", query_encoder=None,
                    engines: Sequence[str] = ("native", "lucene"), cache_dir: str | Path | None = None,
                    max_length: int = 512, batch_size: int = 32, depth: int = 100, progress: bool = True,
                    work_dir: str | Path | None = None, prune_ratio: float = 0.0,
                    min_idf: float = 0.0) -> dict[str, Any]:
    """Encode the corpus, index it, search the split's judged queries, score them.

    ``model``: a path (training output, model folder or short name), a ``.npz`` of document
    vectors from :func:`encode_corpus`, or an encoder object.
    ``query_encoder``: a folder, an object with ``encode(texts) -> csr``, or None (the run's own,
    else IDF over this corpus with the model's tokenizer). ``cache_dir=None`` uses the default
    cache; ``False`` turns caching off. ``min_idf`` drops query tokens whose IDF over this
    corpus is below it (query-time pruning, on top of whatever the query encoder drops).
    """
    from embedx.data import load_beir
    from embedx.eval import evaluate
    from embedx.retrieval import doc_text
    from serving.encoders.base import sparse_rows

    from .cache import cached_encoding, default_cache_dir

    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise ValueError(f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)}")
    ds = load_beir(dataset_dir, split=split)
    doc_ids = list(ds.corpus)
    texts = [doc_text(ds.corpus[d]) for d in doc_ids]
    qids = list(ds.judged_queries())
    query_texts = [ds.queries[q] for q in qids]

    if isinstance(model, (str, Path)) and str(model).endswith(".npz"):
        encoder, label = PrecomputedDocs(model), str(model)
        if encoder.ids != doc_ids:
            raise ValueError(f"{model}: its document ids are not this corpus's (in order)")
    elif isinstance(model, (str, Path)):
        model_dir, run_query_dir = resolve_model_dirs(model)
        encoder = TorchDocEncoder(model_dir, max_length=max_length, batch_size=batch_size, progress=progress)
        if query_encoder is None and run_query_dir is not None:
            query_encoder = run_query_dir
        label = str(model)
    else:
        encoder, label = model, type(model).__name__
    query_encoder = _query_encoder(query_encoder, encoder, texts)
    if min_idf:
        if not hasattr(query_encoder, "drop_frequent"):
            raise ValueError("min_idf needs an IDF query encoder (tokenizer + table)")
        query_encoder = query_encoder.drop_frequent(texts, min_idf)

    key = getattr(encoder, "encoder_hash", None)
    cache = None if cache_dir is False or not isinstance(key, str) else \
        (default_cache_dir() / "encodings" if cache_dir is None else Path(cache_dir))
    t0 = time.perf_counter()
    docs = cached_encoding(cache, f"{key}-docs", texts, lambda t: sparse.csr_matrix(encoder.encode(list(t))))
    encode_s = time.perf_counter() - t0
    docs = sparse.csr_matrix(docs, dtype=np.float32)
    if prune_ratio:
        docs = sparse.vstack([sparse_rows(docs[i:i + 512].toarray(), prune_ratio=prune_ratio)
                              for i in range(0, docs.shape[0], 512)]).tocsr()
    queries = sparse.csr_matrix(query_encoder.encode(query_texts), dtype=np.float32)
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query vectors have {queries.shape[1]} dimensions, documents {docs.shape[1]}: "
                         f"the query encoder does not belong to this document encoder")

    out: dict[str, Any] = {"model": label, "dataset": str(dataset_dir), "split": split, "queries": len(qids),
                           "documents": len(doc_ids), **flops_stats(queries, docs)}
    if encode_s > 1.0:   # a cache hit takes milliseconds and says nothing about speed
        out["encode_docs_per_s"] = len(doc_ids) / encode_s
    vocab = query_encoder.vocabulary() if hasattr(query_encoder, "vocabulary") else None
    metrics = ("ndcg@10", "recall@100")
    for engine in engines:
        t1 = time.perf_counter()
        run = _search(engine, doc_ids, docs, queries, vocab, depth, work_dir).to_run(qids)
        scores = evaluate(ds.qrels, run, metrics)
        for m, v in scores.items():
            out[f"{engine}_{m}"] = v
        out[f"{engine}_seconds"] = time.perf_counter() - t1
    return out


def _query_encoder(query_encoder, doc_encoder, corpus_texts: Sequence[str]):
    from serving.encoders.base import load_encoder
    from serving.encoders.idf import IdfQueryEncoder

    if query_encoder is None:
        tokenizer = getattr(doc_encoder, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("give a query encoder: the document encoder has no tokenizer to compute IDF with")
        from .query import idf_tokenizer
        return IdfQueryEncoder.from_corpus(idf_tokenizer(tokenizer), corpus_texts)
    if isinstance(query_encoder, (str, Path)):
        return load_encoder(query_encoder)
    return query_encoder


def _search(engine: str, doc_ids, docs, queries, vocab, depth: int, work_dir):
    from indexing.quantize import quantize_uint8
    from indexing.sparse import ImpactIndex

    if engine == "native":
        return ImpactIndex.build(doc_ids, docs).search(queries, depth)
    if engine == "native-uint8":
        return ImpactIndex.build(doc_ids, docs, quantize="uint8").search(queries, depth)
    from indexing.lucene import LuceneImpactIndex

    if vocab is None:
        raise ValueError("the lucene engine needs term strings: a query encoder with vocabulary()")
    impacts = docs.copy()
    impacts.data, _ = quantize_uint8(docs.data)
    impacts.data = impacts.data.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="embedx-sparse-eval-", dir=work_dir) as tmp:
        index = LuceneImpactIndex.build(Path(tmp) / "lucene", doc_ids, impacts, vocab)
        try:
            return index.search(queries, depth)
        finally:
            index.close()
