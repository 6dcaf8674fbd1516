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
from itertools import chain
from typing import Callable, Sequence

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
    """``ids(text)``: the token ids ``tokenizer.encode(text, add_special_tokens=False)`` gives.

    ``convert`` (ids -> tuple) is applied to each word's ids before they are cached, so a
    caller can keep what it needs per token (a weighted token's string, say) and spare
    every query the per-token lookups; ``ids`` then returns the converted items.
    """

    def __init__(self, tokenizer, max_words: int = DEFAULT_MAX_WORDS,
                 convert: Callable[[list[int]], tuple] = tuple):
        if not supports_word_cache(tokenizer):
            raise ValueError("the word cache needs a lower-casing BERT WordPiece tokenizer")
        self.tokenizer = tokenizer
        self.max_words = int(max_words)
        self.convert = convert
        self._words: dict[str, tuple] = {}
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        lowered = [a.lower() for a in added if a]
        # the tokenizer matches added tokens before splitting: a text holding one bypasses the
        # cache; a non-ASCII one could match after normalising, so then nothing is cached
        self._cacheable = all(a.isascii() for a in lowered)
        self._added = re.compile("|".join(map(re.escape, lowered))) if lowered else None

    def ids(self, text: str) -> list:
        low = text.lower()
        if (not self._cacheable or _NOT_PLAIN.search(text) is not None
                or (self._added is not None and self._added.search(low) is not None)):
            return list(self.convert(self.tokenizer.encode(text, add_special_tokens=False).ids))
        found = _WORDS.findall(low)
        pieces = list(map(self._words.get, found))   # C-level loop: this runs once per query
        if None in pieces:
            for i, word in enumerate(found):
                if pieces[i] is None:
                    pieces[i] = self._word(word)
        return list(chain.from_iterable(pieces))

    def _word(self, word: str) -> tuple:
        piece = self.convert(self.tokenizer.encode(word, add_special_tokens=False).ids)
        if len(self._words) < self.max_words:
            self._words[word] = piece
        return piece

    def ids_batch(self, texts: Sequence[str]) -> list[list]:
        return [self.ids(t) for t in texts]
