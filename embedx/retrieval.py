"""Build lexical index bundles from a corpus and answer text queries against any bundle.

The glue between data, weighting and the index layer that the CLI, the demo and the
benchmarks share, so none of them repeats it. A bundle records how its queries are encoded
(``extra.query_encoder`` in the manifest); :func:`encode_queries` follows that record.
"""

from __future__ import annotations

import logging
import tempfile
import weakref
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from indexing.errors import InvalidInputError
from indexing.results import SearchResults

from .lexical import Analyzer, BM25Weighting, Vocabulary, term_counts

log = logging.getLogger(__name__)

LEXICAL_KINDS = ("sparse", "lucene-impact", "lucene-bm25")


def doc_text(doc: Mapping) -> str:
    """Title and text in one field, as Pyserini's BEIR "flat" indexes do."""
    title = doc.get("title") or ""
    return f"{title} {doc.get('text', '')}".strip()


def build_lexical_bundle(corpus: Mapping[str, Mapping], out: str | Path, *, kind: str = "sparse",
                         k1: float = 0.9, b: float = 0.4, quantize: str | None = "uint8",
                         store_fields: Sequence[str] = ("title", "text")) -> Path:
    """Index ``corpus`` (id -> {"title", "text"}) as a BM25 bundle of the given kind.

    ``sparse`` and ``lucene-impact`` hold BM25 as impact weights (see :mod:`embedx.lexical`);
    ``lucene-bm25`` is Lucene's own BM25 over its analyzer.
    """
    from indexing.bundle import write_bundle

    if kind not in LEXICAL_KINDS:
        raise InvalidInputError(f"unknown lexical bundle kind {kind!r}; choose from {LEXICAL_KINDS}")
    if not corpus:
        raise InvalidInputError("the corpus is empty")
    ids = list(corpus)
    docs = ((i, {f: corpus[i].get(f, "") for f in store_fields}) for i in ids) if store_fields else None
    with tempfile.TemporaryDirectory(prefix="embedx-build-") as tmp:
        if kind == "lucene-bm25":
            from indexing.lucene import LuceneBM25Index
            index = LuceneBM25Index.build(Path(tmp) / "lucene",
                                          ((i, corpus[i].get("title", ""), corpus[i].get("text", "")) for i in ids))
            extra = {"query_encoder": {"type": "text"}, "bm25": {"k1": k1, "b": b}}
        else:
            weighting = BM25Weighting(k1=k1, b=b)
            weights = weighting.fit_transform([doc_text(corpus[i]) for i in ids])
            extra = {"query_encoder": {"type": "analyzer-counts", "stopwords": sorted(weighting.analyzer.stopwords),
                                       "max_token_length": weighting.analyzer.max_token_length},
                     "weighting": {"type": "bm25", "k1": k1, "b": b}}
            if kind == "sparse":
                from indexing.sparse import ImpactIndex
                index = ImpactIndex.build(ids, weights, quantize=quantize, vocab=weighting.vocab.terms)
            else:
                from indexing.lucene import LuceneImpactIndex
                from indexing.quantize import quantize_uint8
                impacts = weights.copy()
                impacts.data, scale = quantize_uint8(weights.data)
                extra["scale"] = scale
                index = LuceneImpactIndex.build(Path(tmp) / "lucene", ids, impacts, weighting.vocab.terms)
        return write_bundle(out, index, docs, encoder={"name": extra["query_encoder"]["type"], "hash": None},
                            extra=extra)


_LEXICAL_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _lexical_encoder(index, enc: Mapping) -> tuple[Analyzer, Vocabulary]:
    """The analyzer and term -> id map of a lexical index, built once per loaded index: building
    the map costs milliseconds per call on a SciFact-sized vocabulary, more than the search."""
    cached = _LEXICAL_ENCODERS.get(index)
    if cached is None:
        analyzer = Analyzer(frozenset(enc.get("stopwords", ())), enc.get("max_token_length", 64))
        cached = _LEXICAL_ENCODERS[index] = (analyzer, Vocabulary(list(index.vocab)))
    return cached


def encode_queries(bundle, texts: Sequence[str]):
    """Turn query texts into what the bundle's index searches with, per its manifest."""
    texts = list(texts)
    if not texts:
        raise InvalidInputError("no queries given")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidInputError(f"query {i} is empty")
    enc = (bundle.manifest.get("extra") or {}).get("query_encoder") or {}
    kind = enc.get("type")
    if kind == "text":
        return texts
    if kind == "analyzer-counts":
        analyzer, vocab = _lexical_encoder(bundle.index, enc)
        return term_counts([analyzer(t) for t in texts], vocab)
    raise InvalidInputError(
        f"bundle {bundle.path} has no text query encoder (query_encoder={enc or None}); search it with vectors")


def search_texts(bundle, texts: Sequence[str], k: int) -> SearchResults:
    """Search a bundle with query texts."""
    return bundle.search(encode_queries(bundle, texts), k)


def load_vectors(path: str | Path):
    """Load query or document vectors: ``.npy`` (dense float) or ``.npz`` (scipy.sparse)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        import scipy.sparse as sp
        return sp.load_npz(path)
    raise InvalidInputError(f"{path}: vectors must be a .npy (dense) or .npz (scipy.sparse) file")
