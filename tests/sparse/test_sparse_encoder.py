"""Document-encoder maths on hand examples, the IDF formula and the three query modes."""

import math
from types import SimpleNamespace

import numpy as np
from scipy import sparse
import pytest
import torch
from torch import nn

from embedx.sparse.encoder import SparseDocEncoder
from embedx.sparse.query import QueryWeights, idf_tokenizer


class FixedLogits(nn.Module):
    """A stand-in masked-LM that returns given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.config = SimpleNamespace(vocab_size=self.logits.shape[-1])
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits)


def test_log1p_relu_max_with_mask_and_special_tokens_by_hand():
    logits = [[[1.0, -2.0, 3.0, 0.5],
               [0.5, 4.0, -1.0, 2.0],     # padding: must be ignored
               [-3.0, -1.0, 1.0, 1.5]]]
    enc = SparseDocEncoder(FixedLogits(logits), special_ids=[0], packed=False)
    w = enc(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 0, 1]]))
    # max over positions 0 and 2: (1, -1, 3, 1.5) -> relu -> log1p; token 0 is special -> 0
    expected = [0.0, 0.0, math.log(4.0), math.log(2.5)]
    assert w[0].tolist() == pytest.approx(expected)


def test_packed_path_equals_plain_masked_path(tiny_model):
    enc = SparseDocEncoder.from_pretrained(tiny_model).eval()
    batch = enc.tokenizer(["heart failure patients blood", "brain"], padding=True, return_tensors="pt")
    with torch.no_grad():
        packed = enc(batch["input_ids"], batch["attention_mask"])          # fused max-projection
        scattered = enc._forward_packed(batch["input_ids"], batch["attention_mask"])  # heads without a split
        enc.packed = False
        plain = enc(batch["input_ids"], batch["attention_mask"])
        logits = enc.mlm(**batch).logits
    assert torch.allclose(packed, plain, atol=1e-5) and torch.allclose(scattered, plain, atol=1e-5)
    # by hand: the second text has 3 real positions ([CLS] brain [SEP])
    manual = torch.log1p(torch.relu(logits[1, :3].max(dim=0).values))
    manual[enc.tokenizer.all_special_ids] = 0
    assert torch.allclose(plain[1], manual, atol=1e-6)
    assert (plain[:, enc.tokenizer.all_special_ids] == 0).all()


def test_training_path_matches_plain_path_in_values_and_gradients(tiny_model):
    """The fused max-projection (used whenever gradients are on) gives the masked form's weights
    and the same gradient on every parameter, including the tied output/input embeddings."""
    enc = SparseDocEncoder.from_pretrained(tiny_model).double()
    batch = enc.tokenizer(["heart failure patients blood pressure", "brain", "blood heart"],
                          padding=True, return_tensors="pt")
    probe = torch.randn(3, enc.vocab_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def grads(packed: bool):
        enc.zero_grad(set_to_none=True)
        enc.packed = packed
        w = enc(batch["input_ids"], batch["attention_mask"])
        ((w * probe).sum() + (w.mean(0) ** 2).sum()).backward()
        return w.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    assert enc._split_head() is not None
    fused_w, fused_g = grads(True)
    plain_w, plain_g = grads(False)
    assert torch.allclose(fused_w, plain_w, atol=1e-10)
    assert (fused_w > 0).sum() > 0 and fused_g.keys() == plain_g.keys()
    for name, g in plain_g.items():
        assert torch.allclose(fused_g[name], g, atol=1e-9), name


def test_save_pretrained_round_trip(tiny_model, tmp_path):
    enc = SparseDocEncoder.from_pretrained(tiny_model)
    enc.save_pretrained(tmp_path / "copy")
    again = SparseDocEncoder.from_pretrained(tmp_path / "copy")
    a = enc.encode(["sleep memory adults"])
    b = again.encode(["sleep memory adults"])
    assert (a != b).nnz == 0


def test_idf_formula_on_the_tiny_tokenizer(tiny_model):
    from serving.encoders.idf import IdfQueryEncoder

    enc = SparseDocEncoder.from_pretrained(tiny_model)
    tok = idf_tokenizer(enc.tokenizer)
    docs = ["heart failure", "heart brain", "brain sleep", "diet"]
    idf_enc = IdfQueryEncoder.from_corpus(tok, docs)
    vocab = tok.get_vocab()
    n = 4
    for word, df in (("heart", 2), ("diet", 1), ("virus", 0)):
        assert idf_enc.idf[vocab[word]] == pytest.approx(math.log(1 + (n - df + 0.5) / (df + 0.5)), rel=1e-6)
    # a query vector is idf over unique non-special tokens
    q = idf_enc.encode(["heart heart diet"]).toarray()[0]
    assert np.flatnonzero(q).tolist() == sorted([vocab["heart"], vocab["diet"]])


def test_query_modes():
    idf = np.array([0.0, 2.0, 0.5, 1.0], dtype=np.float32)   # token 0: special
    ids = [np.array([1, 2]), np.array([3])]
    idf_q = QueryWeights(idf, "idf").encode(ids)
    assert idf_q.tolist() == [[0, 2.0, 0.5, 0], [0, 0, 0, 1.0]]
    bin_q = QueryWeights(idf, "binary").encode(ids)
    assert bin_q.tolist() == [[0, 1, 1, 0], [0, 0, 0, 1]]
    learn = QueryWeights(idf, "learnable")
    assert isinstance(learn.idf, nn.Parameter)
    q = learn.encode(ids)
    assert torch.equal(q, idf_q)
    (q * torch.tensor([1.0, 1.0, 3.0, 0.0])).sum().backward()
    assert learn.idf.grad.tolist() == [0.0, 1.0, 3.0, 1.0 * 0.0]
    with pytest.raises(ValueError, match="query mode"):
        QueryWeights(idf, "tfidf")


def test_min_idf_drops_frequent_tokens_in_every_mode():
    idf = np.array([0.0, 2.0, 0.5, 1.0], dtype=np.float32)   # token 2 falls below min_idf 1.0
    ids = [np.array([1, 2]), np.array([3])]
    assert QueryWeights(idf, "idf", min_idf=1.0).encode(ids).tolist() == [[0, 2.0, 0, 0], [0, 0, 0, 1.0]]
    assert QueryWeights(idf, "binary", min_idf=1.0).encode(ids).tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]]
    learn = QueryWeights(idf, "learnable", min_idf=1.0)
    q = learn.encode(ids)
    assert q.tolist() == [[0, 2.0, 0, 0], [0, 0, 0, 1.0]]
    q.sum().backward()
    assert learn.idf.grad.tolist() == [0.0, 1.0, 0.0, 1.0]       # a dropped token learns nothing
    assert "kept" not in learn.state_dict()                     # derived: old checkpoints still load
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="min_idf"):
            QueryWeights(idf, "idf", min_idf=bad)


def test_min_idf_from_corpus(tiny_model):
    from serving.encoders.idf import IdfQueryEncoder

    tok = idf_tokenizer(SparseDocEncoder.from_pretrained(tiny_model).tokenizer)
    docs = ["heart failure", "heart brain", "heart diet", "brain"]
    full = IdfQueryEncoder.from_corpus(tok, docs)
    vocab = tok.get_vocab()
    assert 0 < full.idf[vocab["heart"]] < 1.0 < full.idf[vocab["diet"]]   # heart: in 3 of 4 documents
    pruned = IdfQueryEncoder.from_corpus(tok, docs, min_idf=1.0)
    assert pruned.idf[vocab["heart"]] == 0 and pruned.idf[vocab["diet"]] == full.idf[vocab["diet"]]
    binary = IdfQueryEncoder(tok, (full.idf > 0).astype(np.float32)).drop_frequent(docs, 1.0)   # any table
    assert binary.idf[vocab["heart"]] == 0 and binary.idf[vocab["diet"]] == 1.0
    q = pruned.encode(["heart diet"]).toarray()[0]
    assert np.flatnonzero(q).tolist() == [vocab["diet"]]


def test_folding_query_weights_into_documents_keeps_the_scores(tiny_model):
    from serving.encoders.base import EncoderError
    from serving.encoders.idf import IdfQueryEncoder

    tok = idf_tokenizer(SparseDocEncoder.from_pretrained(tiny_model).tokenizer)
    enc = IdfQueryEncoder.from_corpus(tok, ["heart failure", "heart brain", "diet", "brain diet heart"])
    docs = sparse.random(6, enc.dimension, density=0.5, random_state=1, format="csr", dtype=np.float32)
    queries = ["heart diet", "brain failure", "heart"]
    binary, folded = enc.fold_into(docs)
    q, qb = enc.encode(queries), binary.encode(queries)
    assert set(qb.data.tolist()) == {1.0} and np.array_equal(qb.indices, q.indices)
    np.testing.assert_allclose((qb @ folded.T).toarray(), (q @ docs.T).toarray(), rtol=1e-6)
    assert folded.nnz <= docs.nnz                      # tokens with weight 0 (specials) leave the documents
    with pytest.raises(EncoderError, match="columns"):
        enc.fold_into(docs[:, :5])
    # the folded encoder writes queries as strings of tokens; one with real weights refuses
    names = binary.vocabulary()
    assert binary.pretokenized(queries) == [" ".join(names[t] for t in ids) for ids in binary.token_ids(queries)]
    assert binary.pretokenized(["heart heart"]) == ["heart"]
    with pytest.raises(EncoderError, match="not all 0 or 1"):
        enc.pretokenized(queries)
    with pytest.raises(TypeError):
        binary.pretokenized("heart")


def test_query_weights_become_the_serving_encoder(tiny_model, tmp_path):
    from serving.encoders.base import load_encoder
    from serving.encoders.idf import IdfQueryEncoder

    tok = idf_tokenizer(SparseDocEncoder.from_pretrained(tiny_model).tokenizer)
    base = IdfQueryEncoder.from_corpus(tok, ["heart failure", "brain"])
    qw = QueryWeights(base.idf, "binary")
    saved = qw.to_query_encoder(tok, space_id="test").save(tmp_path / "q")
    loaded = load_encoder(saved)
    v = loaded.encode(["heart brain"]).toarray()[0]
    assert sorted(v[v > 0].tolist()) == [1.0, 1.0]
