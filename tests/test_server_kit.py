"""Shared pieces of the server tests (no tests here): a deterministic dense test encoder and
small bundles built from the demo corpus.

``HashEncoder`` is a hashing bag of words: each lowercase word adds +-1 to one of ``dim``
coordinates chosen by a salted blake2b hash, then the vector is L2-normalised. Different
salts are different "model versions", with different representation spaces.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path

import numpy as np

from embedx.data import demo_corpus_path, load_beir
from embedx.retrieval import build_lexical_bundle, doc_text
from indexing.bundle import write_bundle
from indexing.dense import DenseIndex
from serving.config import parse_config
from serving.encoders.base import ENCODER_FILE, read_encoder_config, register_encoder_type

_WORD = re.compile(r"\w+")


class HashEncoder:
    kind = "dense"
    calls: list[int] = []          # texts per encode call, across instances (batching tests read it)
    _calls_lock = threading.Lock()

    def __init__(self, dim: int = 32, salt: str = "v1", space_id: str | None = None, delay_s: float = 0.0):
        self.dimension = int(dim)
        self.salt = salt
        self.space_id = space_id
        self.delay_s = float(delay_s)
        self.encoder_hash = hashlib.sha256(f"hash-bow:{dim}:{salt}".encode()).hexdigest()[:16]

    def encode(self, texts):
        with HashEncoder._calls_lock:
            HashEncoder.calls.append(len(texts))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(f"{self.salt}:{word}".encode(), digest_size=8).digest(), "little")
                out[row, h % self.dimension] += 1.0 if (h >> 32) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def describe(self) -> dict:
        return {"type": "test-hash", "kind": self.kind, "dimension": self.dimension, "salt": self.salt,
                "space_id": self.space_id, "hash": self.encoder_hash, "delay_s": self.delay_s}

    def save(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ENCODER_FILE).write_text(json.dumps(self.describe()))
        return folder

    @classmethod
    def load(cls, folder) -> "HashEncoder":
        c = read_encoder_config(folder)
        return cls(c["dimension"], c["salt"], c.get("space_id"), c.get("delay_s", 0.0))


register_encoder_type("test-hash", f"{HashEncoder.__module__}:HashEncoder")


def demo_corpus() -> dict:
    return load_beir(demo_corpus_path(), split="test").corpus


def demo_queries() -> list[str]:
    return list(load_beir(demo_corpus_path(), split="test").queries.values())


def build_dense_bundle(corpus: dict, path: Path, encoder: HashEncoder, space_id: str | None = None) -> Path:
    ids = list(corpus)
    index = DenseIndex(encoder.dimension, "Flat", "ip")
    index.add(ids, encoder.encode([doc_text(corpus[i]) for i in ids]))
    docs = {i: {"title": corpus[i].get("title", ""), "text": corpus[i].get("text", "")} for i in ids}
    return write_bundle(path, index, docs, encoder={"name": "test-hash", "hash": encoder.encoder_hash},
                        space_id=space_id)


def build_idf_bundle(corpus: dict, path: Path, encoder_folder: Path) -> Path:
    """An inference-free sparse pair: documents as token counts over a small word-level tokenizer,
    queries through ``IdfQueryEncoder`` (tokenizer + IDF), both in the space ``test:idf``."""
    from scipy import sparse
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from indexing.sparse import ImpactIndex
    from serving.encoders.idf import IdfQueryEncoder

    ids = list(corpus)
    texts = [doc_text(corpus[i]).lower() for i in ids]
    words = sorted({w for t in texts for w in _WORD.findall(t)})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    encoder = IdfQueryEncoder.from_corpus(tok, texts, space_id="test:idf")
    encoder.save(encoder_folder)
    rows = [np.bincount(tok.encode(t).ids, minlength=encoder.dimension) for t in texts]
    docs = sparse.csr_matrix(np.asarray(rows, dtype=np.float32))
    index = ImpactIndex.build(ids, docs, vocab=encoder.vocabulary())
    return write_bundle(path, index, {i: {"title": corpus[i].get("title", "")} for i in ids},
                        encoder={"name": "token-counts", "hash": None}, space_id="test:idf")


def build_workspace(root: Path) -> Path:
    """bm25/ (lexical), dense-v1/ + enc-v1/ and dense-v2/ + enc-v2/ (another space), enc-slow/,
    enc-narrow/ (16-wide), idf/ + enc-idf/ (a sparse bundle with an encoder folder)."""
    corpus = demo_corpus()
    build_lexical_bundle(corpus, root / "bm25")
    try:
        import tokenizers  # noqa: F401 - the IDF query encoder needs it
    except ImportError:
        pass
    else:
        build_idf_bundle(corpus, root / "idf", root / "enc-idf")
    for salt in ("v1", "v2"):
        enc = HashEncoder(32, salt)
        enc.save(root / f"enc-{salt}")
        build_dense_bundle(corpus, root / f"dense-{salt}", enc)
    HashEncoder(32, "v1", delay_s=0.5).save(root / "enc-slow")
    HashEncoder(16, "v1").save(root / "enc-narrow")
    return root


_WORKSPACE: list[Path] = []


def shared_workspace(tmp_path_factory) -> Path:
    """The workspace, built once per test process (the ``workspace`` fixture of ``tests/conftest.py``)."""
    if not _WORKSPACE:
        _WORKSPACE.append(build_workspace(tmp_path_factory.mktemp("serve")))
    return _WORKSPACE[0]


def config_for(root: Path, **overrides):
    """A hybrid ``demo`` collection over the workspace; ``overrides`` replace top-level keys."""
    data = {"collections": {"demo": {"sparse": {"bundle": "bm25", "encoder": "bundle"},
                                     "dense": {"bundle": "dense-v1", "encoder": "enc-v1"},
                                     "default_mode": "hybrid", "fusion": {"method": "rrf", "k": 60, "depth": 20}}},
            "batching": {"max_batch": 16, "max_wait_ms": 2}}
    data.update(overrides)
    return parse_config(data, root)
