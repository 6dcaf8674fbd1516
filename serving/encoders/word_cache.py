"""Query tokenization with a per-word cache, for BERT-style (WordPiece) tokenizers.

Why: an inference-free query costs a tokenizer call and a table lookup, and from Python one
``tokenizers`` call on a short query takes 15-25 us, as much as a Lucene BM25 search's query
building. A BERT tokenizer lower-cases, splits on whitespace and punctuation, then runs
WordPiece on each word independently, so a word's ids never depend on its neighbours. For
plain ASCII text those first steps are one regular expression here, and each distinct word
is tokenized once and remembered.

Exact by construction and by test: the cache is used only when the tokenizer is a
lower-casing ``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` pipeline, and only for
texts that are printable ASCII and contain none of its added tokens (``[MASK]``...), which
it matches before normalising. Anything else goes to the tokenizer itself.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

# After lower-casing, BERT's pre-tokenizer keeps runs of letters and digits and makes every
# other printable ASCII character (all of them count as punctuation) a token of its own.
_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
# Anything outside printable ASCII and \t \n \r: control characters are dropped and
# non-ASCII text is accent-stripped and split differently, so the tokenizer handles it.
_NOT_PLAIN = re.compile(r"[^\x20-\x7e\t\n\r]")
DEFAULT_MAX_WORDS = 1 << 18


def supports_word_cache(tokenizer) -> bool:
    """Whether ``tokenizer`` (a ``tokenizers.Tokenizer``) is the pipeline the cache reproduces."""
    spec = json.loads(tokenizer.to_str())
    norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (norm.get("type") == "BertNormalizer" and norm.get("lowercase") is True
            and norm.get("clean_text") is True and pre.get("type") == "BertPreTokenizer"
            and model.get("type") == "WordPiece")


class WordCacheTokenizer:
    """``ids(text)``: the token ids ``tokenizer.encode(text, add_special_tokens=False)`` gives."""

    def __init__(self, tokenizer, max_words: int = DEFAULT_MAX_WORDS):
        if not supports_word_cache(tokenizer):
            raise ValueError("the word cache needs a lower-casing BERT WordPiece tokenizer")
        self.tokenizer = tokenizer
        self.max_words = int(max_words)
        self._words: dict[str, tuple[int, ...]] = {}
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self._added = tuple(a.lower() for a in added if a)
        self._plain_added = all(a.isascii() for a in self._added)

    def ids(self, text: str) -> list[int]:
        low = text.lower()
        if _NOT_PLAIN.search(text) is not None or not self._plain_added or any(a in low for a in self._added):
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        out: list[int] = []
        words = self._words
        for word in _WORDS.findall(low):
            piece = words.get(word)
            if piece is None:
                piece = tuple(self.tokenizer.encode(word, add_special_tokens=False).ids)
                if len(words) < self.max_words:
                    words[word] = piece
            out.extend(piece)
        return out

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.ids(t) for t in texts]
