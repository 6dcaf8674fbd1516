"""The torch dense text encoder: a Hugging Face transformer, pooling, optional L2 normalisation.

Loads any model folder or hub name. A sentence-transformers folder (``modules.json``) says how
to pool (``1_Pooling/config.json``), whether to normalise (a ``Normalize`` module) and the
maximum length (``sentence_bert_config.json``); a plain transformer folder pools by mean without
normalisation unless told otherwise. Tokenisation goes through the same ``tokenizers`` code as
the ONNX runtime encoder (:class:`serving.encoders.runtime.TokenBatcher`), so an export is
compared with the torch model on identical token ids.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from embedx.pretrained import resolve_model
from serving.encoders.onnx import POOLING_MODES
from serving.encoders.runtime import TokenBatcher

log = logging.getLogger(__name__)

_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``(n, seq, d)`` token embeddings -> ``(n, d)`` over non-padding positions (same maths as
    :func:`serving.encoders.onnx.pool_tokens`)."""
    if mode == "cls":
        return hidden[:, 0]
    keep = mask.unsqueeze(-1).bool()
    if mode == "mean":
        total = hidden.masked_fill(~keep, 0.0).sum(dim=1)
        return total / keep.sum(dim=1).clamp(min=1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(~keep, float("-inf")).amax(dim=1)
    raise ValueError(f"unknown pooling {mode!r}; known: {list(POOLING_MODES)}")


def _read_json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


def _pooling_mode(config: dict, path: Path) -> str:
    modes = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
    if isinstance(config.get("pooling_mode"), str):  # newer sentence-transformers write the name
        chosen = [config["pooling_mode"]]
    else:
        chosen = [mode for mode, key in modes.items() if config.get(key)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in modes.values()]
    if len(chosen) != 1 or others or chosen[0] not in POOLING_MODES:
        raise ValueError(f"{path}: unsupported pooling {chosen + others}; "
                         f"supported: exactly one of {list(POOLING_MODES)}")
    return chosen[0]


def read_sentence_transformers(folder: str | os.PathLike) -> dict:
    """Settings from a sentence-transformers layout: ``{"model_dir", "pooling", "normalize",
    "max_length"}`` (absent keys when the folder does not say); ``{}`` for a plain model folder."""
    folder = Path(folder)
    modules = _read_json(folder / "modules.json")
    if modules is None:
        return {}
    settings: dict = {"normalize": False, "model_dir": folder}
    for module in modules:
        kind, sub = module.get("type", ""), folder / module.get("path", "")
        if kind == _ST_TRANSFORMER:
            settings["model_dir"] = sub
            st_config = _read_json(sub / "sentence_bert_config.json") or {}
            if st_config.get("max_seq_length"):
                settings["max_length"] = int(st_config["max_seq_length"])
        elif kind == _ST_POOLING:
            settings["pooling"] = _pooling_mode(_read_json(sub / "config.json") or {}, sub / "config.json")
        elif kind == _ST_NORMALIZE:
            settings["normalize"] = True
        else:
            raise ValueError(f"{folder}: sentence-transformers module {kind!r} is not supported "
                             "(supported: Transformer, Pooling, Normalize)")
    return settings


def load_fast_tokenizer(folder: str | os.PathLike):
    """A ``tokenizers.Tokenizer``: the folder's ``tokenizer.json``, else the Hugging Face fast
    tokenizer's backend (converted from vocabulary files)."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"{folder}: needs a fast tokenizer (tokenizer.json) for export and serving")
    return Tokenizer.from_str(hf.backend_tokenizer.to_str())


class DenseTextEncoder(nn.Module):
    """Token ids -> pooled (and optionally normalised) embeddings; ``encode(texts)`` -> numpy."""

    def __init__(self, model: nn.Module, tokenizer, *, pooling: str = "mean", normalize: bool = False,
                 max_length: int = 512, source: str | None = None):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; known: {list(POOLING_MODES)}")
        self.model = model
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.tokenizer = tokenizer
        self.batcher = TokenBatcher(tokenizer, max_length)
        self.max_length = self.batcher.max_length
        self.source = source
        self.dimension = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "all-minilm-l6-v2", *, pooling: str | None = None,
                        normalize: bool | None = None, max_length: int | None = None) -> "DenseTextEncoder":
        """A local folder, a short name (``all-minilm-l6-v2``) or a hub name; explicit arguments
        override what a sentence-transformers folder says."""
        from transformers import AutoModel

        path = resolve_model(name_or_path)
        folder = Path(path)
        if not folder.is_dir() and (folder.is_absolute() or path.startswith((".", "~"))):
            raise FileNotFoundError(f"no model folder at {path}")
        if not folder.is_dir():  # a hub name: fetch the whole folder, modules.json included
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path))
        st = read_sentence_transformers(folder)
        model_dir = st.get("model_dir", folder)
        model = AutoModel.from_pretrained(model_dir)
        model.eval()
        if max_length is None:
            max_length = st.get("max_length") or min(512, int(getattr(model.config, "max_position_embeddings", 512)))
        return cls(model, load_fast_tokenizer(model_dir),
                   pooling=pooling or st.get("pooling", "mean"),
                   normalize=st.get("normalize", False) if normalize is None else normalize,
                   max_length=max_length, source=str(path))

    def token_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(batch, seq)`` ids and mask -> ``(batch, seq, hidden)`` last hidden states."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = pool(self.token_embeddings(input_ids, attention_mask), attention_mask, self.pooling)
        return nn.functional.normalize(out, dim=-1) if self.normalize else out

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32, *, progress: bool = False) -> np.ndarray:
        """Texts -> float32 ``(n, dimension)``; batches sorted by length to cut padding."""
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        batches = self.batcher.batches(texts, batch_size)
        for positions, ids, mask in tqdm(batches, disable=not progress, desc="encode", unit="batch"):
            out[positions] = self(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        self.train(was_training)
        return out

    def settings(self) -> dict:
        """What an export records about post-processing."""
        return {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length,
                "dimension": self.dimension}
