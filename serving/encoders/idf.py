"""The inference-free query encoder: a tokenizer and an IDF table, no model at query time.

A query's vector has ``idf(t)`` for each unique non-special token ``t`` (Geng et al., 2024);
``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` over the corpus the documents came from, so
scoring a document is ``sum_t idf(t) * w_d(t)``. Tokens never seen in the corpus text get the
largest IDF: a learned document encoder can still expand into them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import sparse

from serving.encoders.base import ENCODER_FILE, EncoderError, read_encoder_config
from serving.encoders.word_cache import WordCacheTokenizer, supports_word_cache

IDF_FILE = "idf.json"
TOKENIZER_FILE = "tokenizer.json"


def bm25_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """``ln(1 + (N - df + 0.5) / (df + 0.5))``, the non-negative BM25 IDF."""
    df = np.asarray(df, dtype=np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)


def load_tokenizer(source):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file, a folder holding one, or itself."""
    from tokenizers import Tokenizer

    if isinstance(source, Tokenizer):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise EncoderError(f"no tokenizer at {source} (expected {TOKENIZER_FILE})")
    return Tokenizer.from_file(str(path))


def special_token_ids(tokenizer) -> np.ndarray:
    return np.array(sorted(i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special),
                    dtype=np.int64)


def _token_id_lists(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [enc.ids for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def _unique_in_order(ids: list[int]) -> np.ndarray:
    return np.fromiter(dict.fromkeys(ids), dtype=np.int64)


class IdfQueryEncoder:
    """Tokenizer + IDF table -> sparse query vectors (float32 CSR over the tokenizer's vocabulary)."""

    kind = "sparse"

    def __init__(self, tokenizer, idf: np.ndarray, *, space_id: str | None = None, n_docs: int | None = None):
        self.tokenizer = load_tokenizer(tokenizer)
        idf = np.asarray(idf, dtype=np.float32)
        vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if idf.ndim != 1 or idf.shape[0] != vocab_size:
            raise EncoderError(f"idf has shape {idf.shape}, the tokenizer's vocabulary has {vocab_size} ids")
        if not np.all(np.isfinite(idf)) or (idf < 0).any():
            raise EncoderError("idf values must be finite and non-negative")
        self.idf = idf.copy()
        self.idf[special_token_ids(self.tokenizer)] = 0.0
        # queries are tokenized word by word through a cache where that is exact (BERT WordPiece)
        self._words = WordCacheTokenizer(self.tokenizer) if supports_word_cache(self.tokenizer) else None
        self._token_words = None   # pretokenized(): word -> its weighted token strings, made on first use
        self.dimension = int(vocab_size)
        self.n_docs = n_docs
        self.encoder_hash = self._hash()
        self.space_id = space_id

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_corpus(cls, tokenizer, texts: Iterable[str], *, batch_size: int = 4096,
                    space_id: str | None = None, min_idf: float = 0.0) -> "IdfQueryEncoder":
        """Document frequencies of each token id over ``texts`` (one text per document).

        Tokens whose IDF is below ``min_idf`` get 0, so queries drop them (1.0 drops the
        tokens in more than ~37% of the documents: stopwords and punctuation).
        """
        if not 0 <= min_idf < float("inf"):
            raise EncoderError(f"min_idf must be finite and >= 0, got {min_idf}")
        tok = load_tokenizer(tokenizer)
        df = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
        n_docs, chunk = 0, []

        def count(chunk):
            for ids in _token_id_lists(tok, chunk):
                df[np.unique(np.asarray(ids, dtype=np.int64))] += 1

        for text in texts:
            if not isinstance(text, str):
                raise EncoderError(f"document texts must be strings, got {type(text).__name__}")
            chunk.append(text)
            if len(chunk) == batch_size:
                count(chunk)
                n_docs, chunk = n_docs + len(chunk), []
        if chunk:
            count(chunk)
            n_docs += len(chunk)
        if n_docs == 0:
            raise EncoderError("cannot compute IDF from an empty corpus")
        idf = bm25_idf(df, n_docs)
        idf[idf < min_idf] = 0.0
        return cls(tok, idf, space_id=space_id, n_docs=n_docs)

    # -- encoding ---------------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Unique token ids of each text that have a weight, in first-seen order."""
        lists = self._words.ids_batch(texts) if self._words is not None else _token_id_lists(self.tokenizer, texts)
        out = []
        for ids in lists:
            ids = _unique_in_order(ids)
            out.append(ids[self.idf[ids] > 0])
        return out

    def encode(self, texts: Sequence[str]) -> sparse.csr_matrix:
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        lists = [np.sort(ids) for ids in self.token_ids(texts)]
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(ids) for ids in lists])
        indices = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        data = self.idf[indices].astype(np.float32)
        out = sparse.csr_matrix((data, indices.astype(np.int32), indptr), shape=(len(lists), self.dimension))
        out.has_canonical_format = True   # sorted unique ids: spares the index a check per query
        return out

    def drop_frequent(self, texts: Iterable[str], min_idf: float) -> "IdfQueryEncoder":
        """A copy whose queries drop the tokens with IDF below ``min_idf`` over ``texts`` (the
        corpus), whatever this encoder's own weights are (binary, learned): query-time pruning."""
        corpus = IdfQueryEncoder.from_corpus(self.tokenizer, texts, min_idf=min_idf)
        table = np.where(corpus.idf > 0, self.idf, np.float32(0))
        return IdfQueryEncoder(self.tokenizer, table, space_id=self.space_id, n_docs=self.n_docs)

    def pretokenized(self, texts: Sequence[str]) -> list[str]:
        """Each text's weighted tokens as one space-separated string, in first-seen order.

        The query form of indexes that weigh every term 1 (``LuceneImpactIndex.search_pretokenized``):
        right only for an encoder whose weights are all 0 or 1, a binary one or one from
        :meth:`fold_into`; any other refuses.
        """
        if isinstance(texts, str):
            raise TypeError("pretokenized takes a sequence of texts, not one string")
        if self._token_words is None:
            if not np.isin(self.idf, (0.0, 1.0)).all():
                raise EncoderError("pretokenized queries weigh every token 1; this encoder's weights are not "
                                   "all 0 or 1 (fold them into the documents first: fold_into)")
            names = self.vocabulary()
            weighted = frozenset(np.flatnonzero(self.idf).tolist())
            if any(c.isspace() for i in weighted for c in names[i]):
                raise EncoderError("a weighted token contains whitespace; it cannot be written pretokenized")
            convert = lambda ids: tuple(names[t] for t in ids if t in weighted)   # noqa: E731
            # the word cache keeps each word's weighted token strings: a query then touches a
            # few cache entries, not the vocabulary-sized tables (it runs between Lucene searches,
            # with cold CPU caches, where every scattered lookup costs a miss)
            self._token_words = (WordCacheTokenizer(self.tokenizer, convert=convert) if self._words is not None
                                 else convert)
        words = self._token_words
        if isinstance(words, WordCacheTokenizer):
            return [" ".join(dict.fromkeys(words.ids(t))) for t in texts]
        return [" ".join(dict.fromkeys(words(ids))) for ids in _token_id_lists(self.tokenizer, texts)]

    def fold_into(self, docs) -> tuple["IdfQueryEncoder", sparse.csr_matrix]:
        """Move the query weights into the documents: ``(binary encoder, docs * weights)``.

        ``sum_t idf(t) * w_d(t)`` is ``sum_t 1 * (idf(t) * w_d(t))``, so an index built from the
        returned documents, searched with the returned encoder's all-ones queries, ranks
        exactly as this encoder on ``docs`` would (up to the index's own quantisation). Why:
        an all-ones query is a plain bag of tokens, which Lucene takes as one string.
        """
        docs = sparse.csr_matrix(docs, dtype=np.float32)
        if docs.shape[1] != self.dimension:
            raise EncoderError(f"docs have {docs.shape[1]} columns, the encoder's vocabulary {self.dimension}")
        folded = docs.multiply(self.idf[None, :]).tocsr().astype(np.float32)
        folded.eliminate_zeros()
        binary = IdfQueryEncoder(self.tokenizer, (self.idf > 0).astype(np.float32), n_docs=self.n_docs,
                                 space_id=None if self.space_id is None else f"{self.space_id}:folded")
        return binary, folded

    def vocabulary(self) -> list[str]:
        """Token strings by id (what a sparse index records as its vocabulary)."""
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        names = [""] * self.dimension
        for token, i in vocab.items():
            names[i] = token
        return names

    def describe(self) -> dict:
        return {"type": "idf", "kind": self.kind, "dimension": self.dimension, "space_id": self.space_id,
                "hash": self.encoder_hash, "n_docs": self.n_docs}

    # -- persistence ------------------------------------------------------------------------
    def _hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.tokenizer.to_str().encode())
        h.update(self.idf.tobytes())
        return h.hexdigest()[:16]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``encoder.json``, ``tokenizer.json`` and ``idf.json`` (token -> idf, the paper's format)."""
        from indexing.fsutil import atomic_open

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = self.vocabulary()
        table = {names[i]: float(v) for i, v in enumerate(self.idf) if v > 0 and names[i]}
        with atomic_open(folder / TOKENIZER_FILE, "w") as f:
            f.write(self.tokenizer.to_str())
        with atomic_open(folder / IDF_FILE, "w") as f:
            json.dump(table, f, ensure_ascii=False)
        with atomic_open(folder / ENCODER_FILE, "w") as f:
            json.dump(self.describe(), f, indent=2)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "IdfQueryEncoder":
        folder = Path(folder)
        config = read_encoder_config(folder)
        if config["type"] != "idf":
            raise EncoderError(f"{folder} holds a {config['type']!r} encoder, not 'idf'")
        tok = load_tokenizer(folder)
        try:
            table = json.loads((folder / IDF_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise EncoderError(f"{folder / IDF_FILE}: {exc}") from None
        vocab = tok.get_vocab(with_added_tokens=True)
        idf = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.float32)
        unknown = [t for t in table if t not in vocab]
        if unknown:
            raise EncoderError(f"{folder / IDF_FILE}: {len(unknown)} tokens not in the tokenizer, e.g. {unknown[:3]}")
        for token, value in table.items():
            idf[vocab[token]] = value
        enc = cls(tok, idf, space_id=config.get("space_id"), n_docs=config.get("n_docs"))
        if config.get("hash") not in (None, enc.encoder_hash):
            raise EncoderError(f"{folder}: encoder hash {config['hash']} does not match its files ({enc.encoder_hash})")
        return enc
