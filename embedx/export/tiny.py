"""Tiny, seeded, randomly initialised encoders with a real WordPiece tokenizer: what tests of the
export, the runtime encoders and the server use when no pretrained model is installed, and a
way to try the export path in seconds. Their vectors mean nothing; their shapes and maths are real.
"""

from __future__ import annotations

import string

import torch

_WORDS = ("the a of and in is to for with on by from that are as at be this it its not or was which "
          "star sun light energy gravity black hole galaxy planet earth water cell protein gene "
          "search index query document vector sparse dense model retrieval encoder").split()
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer():
    """A lower-casing BERT-style WordPiece tokenizer (~150 tokens) that can spell any ASCII word."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    chars = string.ascii_lowercase + string.digits
    pieces = _SPECIAL + list(chars) + [f"##{c}" for c in chars] + list(string.punctuation) + _WORDS
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    for name in _SPECIAL:
        tok.add_special_tokens([name])
    return tok


def _bert_config(vocab_size: int, hidden: int, layers: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)


def tiny_dense_encoder(*, pooling: str = "mean", normalize: bool = True, max_length: int = 64,
                       hidden: int = 32, layers: int = 1, seed: int = 0):
    """A :class:`~embedx.encoders.DenseTextEncoder` over a random BERT (~20k parameters)."""
    from transformers import BertModel

    from embedx.encoders import DenseTextEncoder

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = BertModel(_bert_config(tok.get_vocab_size(), hidden, layers), add_pooling_layer=False).eval()
    return DenseTextEncoder(model, tok, pooling=pooling, normalize=normalize, max_length=max_length,
                            source=f"tiny-bert-{hidden}x{layers}-seed{seed}")


def tiny_sparse_encoder(*, hidden: int = 32, layers: int = 1, seed: int = 0):
    """A :class:`~embedx.sparse.encoder.SparseDocEncoder` over a random BERT masked-LM, with its
    ``tokenizer`` (a ``tokenizers.Tokenizer``) attached."""
    from transformers import BertForMaskedLM

    from embedx.sparse.encoder import SparseDocEncoder

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    mlm = BertForMaskedLM(_bert_config(tok.get_vocab_size(), hidden, layers)).eval()
    with torch.no_grad():  # a random output bias so weights are not all near zero
        mlm.get_output_embeddings().bias.normal_(0.0, 1.0)
    specials = [tok.token_to_id(t) for t in _SPECIAL]
    enc = SparseDocEncoder(mlm, specials).eval()
    enc.tokenizer = tok
    enc.source = f"tiny-bert-mlm-{hidden}x{layers}-seed{seed}"
    return enc
