"""Tiny, download-free fixtures for the sparse trainer: a word-level tokenizer, a random
BERT masked-LM built from a config, a 12-document BEIR folder and its prepared training file."""

from __future__ import annotations

import numpy as np
import pytest

TOPICS = {
    "heart": ("cardiac arrest outcomes", "heart failure patients blood pressure cardiac outcomes improve"),
    "brain": ("neural development in infants", "brain white matter infants neural development imaging"),
    "virus": ("viral replication in cells", "virus replication cells protein infection host"),
    "cancer": ("tumor growth and therapy", "cancer tumor growth therapy cells drug response"),
    "sleep": ("sleep and memory", "sleep memory consolidation adults study night"),
    "diet": ("diet and obesity risk", "diet obesity risk sugar intake adults study"),
}


def tiny_dataset() -> tuple[dict, dict, dict, dict]:
    """12 documents (two per topic), 6 train and 6 test queries."""
    corpus, queries, train, test = {}, {}, {}, {}
    for i, (topic, (title, text)) in enumerate(TOPICS.items()):
        words = text.split()
        corpus[f"d{i}a"] = {"title": title, "text": text}
        corpus[f"d{i}b"] = {"title": f"summary of {topic}", "text": " ".join(reversed(words)) + " review evidence"}
        queries[f"q{i}"] = f"{words[0]} {words[2]}"
        queries[f"t{i}"] = f"{words[1]} {topic}"
        train[f"q{i}"] = {f"d{i}a": 1}
        test[f"t{i}"] = {f"d{i}a": 1, f"d{i}b": 1}
    return corpus, queries, train, test


def make_tiny_model(folder, words, seed: int = 0):
    """A word-level fast tokenizer and a random 1-layer BertForMaskedLM saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(special + sorted(set(words) - set(special)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two that
    spin against other processes. Restored afterwards so other tests keep torch's default."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory):
    from embedx.data.beir import write_corpus, write_qrels, write_queries

    root = tmp_path_factory.mktemp("tiny-beir")
    corpus, queries, train, test = tiny_dataset()
    write_corpus(root, corpus)
    write_queries(root, queries)
    write_qrels(root, train, split="train")
    write_qrels(root, test, split="test")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    corpus, queries, _, _ = tiny_dataset()
    words = [w for d in corpus.values() for w in (d["title"] + " " + d["text"]).lower().split()]
    words += [w for q in queries.values() for w in q.lower().split()]
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), words)


class HashDense:
    """A deterministic bag-of-words dense 'teacher' (no model): each word a fixed random vector."""

    encoder_hash = "hashdense-v1"

    def encode(self, texts):
        out = []
        for t in texts:
            v = np.zeros(16, dtype=np.float32)
            for w in t.lower().split():
                v += np.random.default_rng(_stable(w)).standard_normal(16)
            out.append(v)
        return np.asarray(out, dtype=np.float32)


def _stable(word: str) -> int:
    import hashlib
    return int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")


@pytest.fixture(scope="session")
def tiny_prepared(tiny_beir, tiny_model, tmp_path_factory):
    """The prepared file of the tiny data set, mined and scored by BM25, a hashing dense teacher
    and the tiny masked-LM as the sparse teacher."""
    from embedx.sparse.encoder import SparseDocEncoder
    from embedx.sparse.prepare import prepare
    from embedx.sparse.teachers import DenseTeacher, SparseTeacher

    out = tmp_path_factory.mktemp("prepared") / "train.npz"
    cache = tmp_path_factory.mktemp("cache")
    teachers = {"dense": DenseTeacher(encoder=HashDense(), cache_dir=cache, progress=False),
                "sparse": SparseTeacher(encoder=SparseDocEncoder.from_pretrained(tiny_model), cache_dir=cache,
                                        max_length=64, progress=False)}
    prepare(tiny_beir, out, teachers=("bm25", "dense", "sparse"), top_k=4, cache_dir=cache, progress=False,
            teacher_objects=teachers)
    return out
