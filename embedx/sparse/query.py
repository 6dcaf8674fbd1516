"""The query side during training: no model, one weight per vocabulary token.

A query is the set of its unique non-special tokens (what
:meth:`serving.encoders.idf.IdfQueryEncoder.token_ids` returns); its vector puts a weight on
each of them. Three modes:

- ``idf``: the corpus BM25 IDF table (the paper's IDF-aware setting);
- ``binary``: 1 for every token (the "plain FLOPS" ablation: the ranking loss no longer
  tells frequent tokens from rare ones);
- ``learnable``: an ``nn.Parameter`` initialised from the IDF table, used through ReLU (as in
  the released code), trained with the document encoder.

:meth:`QueryWeights.to_query_encoder` turns the final weights into the
:class:`~serving.encoders.idf.IdfQueryEncoder` that serves queries, so search uses exactly
what training used.

``min_idf`` drops tokens whose corpus IDF is below it from every query, in training and in
search alike (the table holds 0 for them, as for special tokens). Tokens in more than about
37% of the documents have IDF < 1: stopwords and punctuation, whose long posting lists cost
search time and, on SciFact, no relevance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

QUERY_MODES = ("idf", "binary", "learnable")


class QueryWeights(nn.Module):
    def __init__(self, idf: np.ndarray | torch.Tensor, mode: str = "idf", min_idf: float = 0.0):
        super().__init__()
        if mode not in QUERY_MODES:
            raise ValueError(f"query mode must be one of {QUERY_MODES}, got {mode!r}")
        if not 0 <= min_idf < float("inf"):
            raise ValueError(f"min_idf must be finite and >= 0, got {min_idf}")
        idf = torch.as_tensor(np.asarray(idf, dtype=np.float32))
        if idf.dim() != 1:
            raise ValueError(f"idf must be a vector, got shape {tuple(idf.shape)}")
        self.mode = mode
        self.min_idf = float(min_idf)
        # specials have idf 0 and stay 0; so do tokens below min_idf
        self.register_buffer("kept", ((idf > 0) & (idf >= min_idf)).float(), persistent=False)
        if mode == "learnable":
            self.idf = nn.Parameter(idf.clone())
        elif mode == "binary":
            self.register_buffer("idf", self.kept.clone())
        else:
            self.register_buffer("idf", idf * self.kept)

    @property
    def vocab_size(self) -> int:
        return int(self.idf.shape[0])

    def weights(self) -> torch.Tensor:
        """The ``(V,)`` token weights a query gets (ReLU of the learnable table)."""
        return torch.relu(self.idf) * self.kept if self.mode == "learnable" else self.idf

    def forward(self, indicator: torch.Tensor) -> torch.Tensor:
        """``(n_q, V)`` 0/1 token indicators -> query vectors."""
        return indicator * self.weights()

    def indicator(self, token_ids: Sequence[np.ndarray]) -> torch.Tensor:
        """The ``(n_q, V)`` 0/1 matrix of each query's unique token ids."""
        device = self.idf.device
        rows = np.repeat(np.arange(len(token_ids)), [len(t) for t in token_ids])
        cols = np.concatenate([np.asarray(t, dtype=np.int64) for t in token_ids]) if len(token_ids) else np.zeros(0)
        out = torch.zeros(len(token_ids), self.vocab_size, device=device)
        out[torch.as_tensor(rows, device=device), torch.as_tensor(cols, dtype=torch.long, device=device)] = 1.0
        return out

    def encode(self, token_ids: Sequence[np.ndarray]) -> torch.Tensor:
        return self(self.indicator(token_ids))

    def to_query_encoder(self, tokenizer, *, space_id: str | None = None, n_docs: int | None = None):
        """The serving-side :class:`IdfQueryEncoder` holding these weights."""
        from serving.encoders.idf import IdfQueryEncoder

        table = self.weights().detach().float().cpu().numpy()
        return IdfQueryEncoder(tokenizer, table, space_id=space_id, n_docs=n_docs)


def idf_tokenizer(hf_tokenizer):
    """A clean copy (no padding, no truncation) of a fast tokenizer's ``tokenizers.Tokenizer``:
    what :class:`IdfQueryEncoder` tokenizes queries and counts document frequencies with."""
    from tokenizers import Tokenizer

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        if isinstance(hf_tokenizer, Tokenizer):
            backend = hf_tokenizer
        else:
            raise ValueError("the tokenizer is not a fast (tokenizers) tokenizer; IDF queries need one")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok
