"""Teachers: retrievers that mine hard negatives and score each query's candidate list.

The paper's heterogeneous ensemble pairs a dense siamese model with a sparse siamese one;
here all-MiniLM-L6-v2 (cosine of mean-pooled, normalised embeddings) and SPLADE-tiny (the
same masked-LM encoder on queries and documents, dot product), with BM25 as an option.
Each teacher encodes texts (dense float32 rows or ``scipy.sparse`` rows), searches the
corpus through the index layer (:class:`indexing.dense.DenseIndex`,
:class:`indexing.sparse.ImpactIndex`) and scores given (query, document) pairs from the same
vectors. Encodings are cached per model content hash (:mod:`embedx.sparse.cache`).

Used at preparation time only: training reads the scores from the prepared file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import sparse

from .cache import cached_encoding, folder_hash

log = logging.getLogger(__name__)


class Teacher:
    """A retriever over one document collection: ``fit(docs)``, then ``encode_queries``,
    ``search`` and ``score`` against it."""

    name = "teacher"
    kind = "dense"   # or "sparse"

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache_dir = cache_dir
        self.doc_vectors: Any = None
        self._index = None

    # -- to implement ---------------------------------------------------------------------
    @property
    def key(self) -> str:
        """What the encodings depend on (model content hash and settings)."""
        raise NotImplementedError

    def _encode(self, texts: Sequence[str], role: str):
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], role: str):
        return cached_encoding(self.cache_dir, f"{self.key}-{role}", list(texts),
                               lambda t: self._encode(t, role))

    def fit(self, doc_ids: Sequence[str], doc_texts: Sequence[str]) -> "Teacher":
        self.doc_vectors = self.encode(doc_texts, "docs")
        self._ids = list(doc_ids)
        self._index = None
        return self

    def encode_queries(self, texts: Sequence[str]):
        return self.encode(texts, "queries")

    def _built_index(self):
        if self._index is None:
            if self.kind == "dense":
                from indexing.dense import DenseIndex
                self._index = DenseIndex(self.doc_vectors.shape[1], factory="Flat", metric="ip")
                self._index.add(self._ids, self.doc_vectors)
            else:
                from indexing.sparse import ImpactIndex
                self._index = ImpactIndex.build(self._ids, self.doc_vectors)
        return self._index

    def search(self, query_vectors, k: int) -> np.ndarray:
        """``(n_q, k)`` document rows, best first (-1 where a query has fewer hits)."""
        return self._built_index().search(query_vectors, k).rows.astype(np.int64)

    def score(self, query_vectors, rows: np.ndarray) -> np.ndarray:
        """Scores of query i with documents ``rows[i]`` (``(n_q, C)``, -1 = none -> NaN)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(rows.shape, np.nan, dtype=np.float32)
        safe = np.where(rows >= 0, rows, 0)
        if self.kind == "dense":
            q = np.asarray(query_vectors, dtype=np.float32)
            vals = np.einsum("qd,qcd->qc", q, self.doc_vectors[safe])
        else:
            q = sparse.csr_matrix(query_vectors, dtype=np.float32)
            docs_t = sparse.csr_matrix(self.doc_vectors, dtype=np.float32).T.tocsr()
            vals = np.empty(rows.shape, dtype=np.float32)
            for lo in range(0, rows.shape[0], 256):
                block = (q[lo:lo + 256] @ docs_t).toarray()
                vals[lo:lo + 256] = np.take_along_axis(block, safe[lo:lo + 256], axis=1)
        out[rows >= 0] = vals[rows >= 0]
        return out


class DenseTeacher(Teacher):
    """A dense siamese encoder (default all-MiniLM-L6-v2); cosine similarity."""

    name = "dense"
    kind = "dense"

    def __init__(self, model: str = "all-minilm-l6-v2", *, encoder=None, cache_dir=None, batch_size: int = 64,
                 progress: bool = True):
        super().__init__(cache_dir)
        self.model = model
        self._encoder = encoder
        self.batch_size = batch_size
        self.progress = progress

    @property
    def encoder(self):
        if self._encoder is None:
            from embedx.encoders.dense import DenseTextEncoder
            self._encoder = DenseTextEncoder.from_pretrained(self.model)
        return self._encoder

    @property
    def key(self) -> str:
        return f"dense-{_model_key(self.model, self._encoder)}"

    def _encode(self, texts, role):
        import inspect

        kwargs = {}
        params = inspect.signature(self.encoder.encode).parameters
        if "batch_size" in params:
            kwargs["batch_size"] = self.batch_size
        if "progress" in params:
            kwargs["progress"] = self.progress
        x = np.asarray(self.encoder.encode(list(texts), **kwargs), dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class SparseTeacher(Teacher):
    """A sparse siamese encoder (default SPLADE-tiny): the same masked-LM encoder for queries
    and documents, dot product."""

    name = "sparse"
    kind = "sparse"

    def __init__(self, model: str = "splade-tiny", *, encoder=None, cache_dir=None, max_length: int = 512,
                 batch_size: int = 32, progress: bool = True):
        super().__init__(cache_dir)
        self.model = model
        self._encoder = encoder
        self.max_length = max_length
        self.batch_size = batch_size
        self.progress = progress

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoder import SparseDocEncoder
            self._encoder = SparseDocEncoder.from_pretrained(self.model)
        return self._encoder

    @property
    def key(self) -> str:
        return f"splade-{_model_key(self.model, self._encoder)}-L{self.max_length}"

    def _encode(self, texts, role):
        return self.encoder.encode(list(texts), batch_size=self.batch_size, max_length=self.max_length,
                                   progress=self.progress)


class BM25Teacher(Teacher):
    """BM25 (k1, b) as impact weights (:mod:`embedx.lexical`), the native index's BM25."""

    name = "bm25"
    kind = "sparse"

    def __init__(self, k1: float = 0.9, b: float = 0.4, cache_dir=None):
        super().__init__(None)   # computed in seconds: never cached
        self.k1, self.b = k1, b
        self._weighting = None

    @property
    def key(self) -> str:
        return f"bm25-{self.k1}-{self.b}"

    def fit(self, doc_ids, doc_texts):
        from embedx.lexical import BM25Weighting

        self._weighting = BM25Weighting(k1=self.k1, b=self.b)
        self.doc_vectors = self._weighting.fit_transform(list(doc_texts))
        self._ids = list(doc_ids)
        self._index = None
        return self

    def encode_queries(self, texts):
        if self._weighting is None:
            raise RuntimeError("fit the BM25 teacher on the documents first")
        return self._weighting.queries(list(texts))


def _model_key(model: str, encoder) -> str:
    """The content hash of a model folder (or of an injected encoder that reports one)."""
    for attr in ("encoder_hash", "model_hash"):
        value = getattr(encoder, attr, None)
        if isinstance(value, str):
            return value
    source = getattr(encoder, "source", None)
    from embedx.pretrained import resolve_model

    path = Path(source or resolve_model(model))
    if not path.is_dir():
        raise FileNotFoundError(f"cannot find the model folder of {model!r} to key its cache")
    return folder_hash(path)


TEACHERS = {"dense": DenseTeacher, "sparse": SparseTeacher, "bm25": BM25Teacher}


def make_teacher(name: str, **kwargs) -> Teacher:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose from {', '.join(TEACHERS)}")
    return TEACHERS[name](**kwargs)
