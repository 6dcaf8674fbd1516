"""Encoders exported by ``embedx export``: an ONNX graph, a ``tokenizer.json`` and ``encoder.json``.

``onnx-dense``: the graph returns token embeddings ``(batch, seq, hidden)``; pooling (mean, cls
or max over non-padding positions) and L2 normalisation run here in numpy, as ``encoder.json``
says. ``onnx-sparse``: the graph returns the max-pooled ``(batch, vocab)`` term weights, so only
pruning (``prune_ratio``) and the conversion to ``csr_matrix`` run here. Document encoding and
SPLADE-style siamese query encoding use the same class.

Loading recomputes the encoder hash (sha256 over the graph, the tokenizer and the settings that
change outputs) and refuses a folder whose files no longer match it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from serving.encoders.base import EncoderError, read_encoder_config, sparse_rows
from serving.encoders.runtime import TokenBatcher, create_session, token_names

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
POOLING_MODES = ("mean", "cls", "max")

# encoder.json keys that change what an encoder outputs, hence part of its hash
HASHED_SETTINGS = {
    "onnx-dense": ("type", "dimension", "max_length", "pooling", "normalize", "inputs", "output"),
    "onnx-sparse": ("type", "dimension", "max_length", "prune_ratio", "inputs", "output"),
}


def encoder_hash(model_bytes: bytes, tokenizer_json: str, settings: dict) -> str:
    """sha256 over the ONNX bytes, the tokenizer and the output-changing settings (16 hex digits)."""
    kind = settings.get("type")
    if kind not in HASHED_SETTINGS:
        raise EncoderError(f"unknown ONNX encoder type {kind!r}")
    chosen = {key: settings.get(key) for key in HASHED_SETTINGS[kind]}
    h = hashlib.sha256()
    for part in (model_bytes, tokenizer_json.encode(), json.dumps(chosen, sort_keys=True).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def pool_tokens(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """``(n, seq, d)`` token embeddings -> ``(n, d)`` over the positions where ``mask`` is 1."""
    if mode == "cls":
        return hidden[:, 0]
    keep = mask.astype(bool)[:, :, None]
    if mode == "mean":
        total = np.where(keep, hidden, 0.0).sum(axis=1)
        return total / np.maximum(keep.sum(axis=1), 1)
    if mode == "max":
        return np.where(keep, hidden, -np.inf).max(axis=1)
    raise EncoderError(f"unknown pooling {mode!r}; known: {list(POOLING_MODES)}")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


class _OnnxEncoder:
    """Shared loading, batching and description; subclasses turn one batch's graph output into vectors."""

    TYPE = ""
    kind = ""
    default_batch_size = 32
    default_max_tokens: int | None = None

    def __init__(self, folder: str | os.PathLike, config: dict, *, threads: int | None = None):
        from serving.encoders.idf import load_tokenizer

        self.folder = Path(folder)
        self.config = config
        self.tokenizer = load_tokenizer(self.folder / config.get("tokenizer", TOKENIZER_FILE))
        self.batcher = TokenBatcher(self.tokenizer, int(config["max_length"]))
        self.session = create_session(self.folder / config.get("model", MODEL_FILE), threads=threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = config.get("output") or self.session.get_outputs()[0].name
        self.dimension = int(config["dimension"])
        self.max_length = self.batcher.max_length
        self.encoder_hash = str(config["hash"])
        self.space_id = config.get("space_id")
        self.threads = self.session.get_session_options().intra_op_num_threads

    @classmethod
    def load(cls, folder: str | os.PathLike, *, threads: int | None = None, verify: bool = True):
        """Open an exported folder; ``verify`` recomputes the hash from the files (milliseconds)."""
        folder = Path(folder)
        config = read_encoder_config(folder)
        if config["type"] != cls.TYPE:
            raise EncoderError(f"{folder} holds a {config['type']!r} encoder, not {cls.TYPE!r}")
        version = config.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise EncoderError(f"{folder}: encoder format_version {version!r} is not one this code reads "
                               f"(<= {FORMAT_VERSION}); upgrade embedx")
        missing = [k for k in ("max_length", "dimension", "hash") if k not in config]
        if missing:
            raise EncoderError(f"{folder}: encoder.json lacks {missing}")
        model = folder / config.get("model", MODEL_FILE)
        tok = folder / config.get("tokenizer", TOKENIZER_FILE)
        for path in (model, tok):
            if not path.is_file():
                raise EncoderError(f"{folder}: missing {path.name}")
        if verify:
            actual = encoder_hash(model.read_bytes(), tok.read_text(), config)
            if actual != config["hash"]:
                raise EncoderError(f"{folder}: encoder hash {config['hash']} does not match its files ({actual})")
        try:
            return cls(folder, config, threads=threads)
        except EncoderError:
            raise
        except Exception as exc:  # onnxruntime or tokenizers refusing a damaged file
            raise EncoderError(f"{folder}: cannot load the encoder: {exc}") from None

    def run_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One padded batch through the graph and the numpy post-processing."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        out = self.session.run([self.output], {k: feeds[k] for k in self.inputs})[0]
        return self._postprocess(out, attention_mask)

    def _postprocess(self, out: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_array(self, texts: Sequence[str], *, batch_size: int | None = None,
                     max_tokens: int | None = None) -> np.ndarray:
        """``(n, dimension)`` float32 rows in the order of ``texts``."""
        batch_size = batch_size or self.default_batch_size
        max_tokens = max_tokens or self.default_max_tokens
        out = None
        for positions, ids, mask in self.batcher.batches(texts, batch_size, max_tokens):
            rows = self.run_batch(ids, mask)
            if out is None:
                out = np.empty((len(texts), rows.shape[1]), dtype=np.float32)
            out[positions] = rows
        return out if out is not None else np.zeros((0, self.dimension), dtype=np.float32)

    def describe(self) -> dict:
        keep = ("type", "kind", "dimension", "max_length", "pooling", "normalize", "prune_ratio",
                "quantization", "opset", "source", "parity", "hash", "space_id")
        info = {k: self.config[k] for k in keep if k in self.config}
        info["threads"] = self.threads
        return info


class OnnxDenseEncoder(_OnnxEncoder):
    """Texts -> float32 ``(n, dimension)`` embeddings (pooled, optionally L2-normalised)."""

    TYPE = "onnx-dense"
    kind = "dense"
    default_max_tokens = 16384

    def __init__(self, folder, config, *, threads=None):
        pooling = config.get("pooling")
        if pooling not in POOLING_MODES:
            raise EncoderError(f"{folder}: pooling must be one of {list(POOLING_MODES)}, got {pooling!r}")
        super().__init__(folder, config, threads=threads)
        self.pooling = pooling
        self.normalize = bool(config.get("normalize", False))

    def _postprocess(self, hidden, mask):
        pooled = pool_tokens(hidden, mask, self.pooling)
        if self.normalize:
            pooled = l2_normalize(pooled)
        return pooled.astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        return self.encode_array(texts, batch_size=batch_size)


class OnnxSparseEncoder(_OnnxEncoder):
    """Texts -> ``csr_matrix`` ``(n, vocab)`` of non-negative term weights."""

    TYPE = "onnx-sparse"
    kind = "sparse"
    default_batch_size = 32
    # Bounds batch * seq. Graphs traced as-is hold (batch * seq) x vocab float32 logits (2048
    # tokens x 30k ~ 250 MB); exports whose projection was rewritten (encoder.json "vocab_max")
    # hold a few hundred vocabulary rows at a time and ran equally fast from 512 to 2048 tokens.
    default_max_tokens = 2048

    def __init__(self, folder, config, *, threads=None):
        super().__init__(folder, config, threads=threads)
        self.prune_ratio = float(config.get("prune_ratio", 0.0) or 0.0)
        if not 0.0 <= self.prune_ratio < 1.0:
            raise EncoderError(f"{folder}: prune_ratio must be in [0, 1), got {self.prune_ratio}")

    def _postprocess(self, weights, mask):
        return np.asarray(weights, dtype=np.float32)

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, max_tokens: int | None = None):
        from scipy import sparse

        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        batch_size = batch_size or self.default_batch_size
        max_tokens = max_tokens or self.default_max_tokens
        parts, order = [], []
        for positions, ids, mask in self.batcher.batches(texts, batch_size, max_tokens):
            parts.append(sparse_rows(self.run_batch(ids, mask), prune_ratio=self.prune_ratio))
            order.append(positions)
        if not parts:
            return sparse.csr_matrix((0, self.dimension), dtype=np.float32)
        stacked = sparse.vstack(parts, format="csr")
        inverse = np.empty(len(texts), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(texts))
        return stacked[inverse].astype(np.float32)

    def vocabulary(self) -> list[str]:
        """Token strings by id, for the sparse index's vocabulary."""
        return token_names(self.tokenizer)
