"""What every ONNX encoder needs around the model: an onnxruntime session with thread settings
that suit a shared CPU server, and tokenisation into length-sorted, tightly padded batches.

Texts are tokenised once (the ``tokenizers`` library, truncated to ``max_length``), sorted by
length and padded per batch in numpy to the longest text of that batch, so a batch of short
queries never pays for one long document. ``max_tokens`` caps ``batch * seq`` as well, which
bounds the memory of graphs with a wide per-token output (a sparse encoder's vocabulary logits).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

THREADS_ENV = "EMBEDX_ORT_THREADS"


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share one core's arithmetic units,
    so a thread per logical CPU mostly adds contention to matrix products)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """``$EMBEDX_ORT_THREADS`` when set, else the number of physical cores."""
    value = os.environ.get(THREADS_ENV)
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return threads
    return physical_cores()


def session_options(threads: int | None = None, *, spin: bool = False):
    """Intra-op threads (default :func:`default_threads`), one inter-op thread (encoder graphs
    are chains, nothing runs side by side), full graph optimisation, sequential execution.

    ``spin=False`` stops idle worker threads from busy-waiting between calls: on a server that
    shares its cores with the index search and HTTP handling, spinning steals their CPU.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or default_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings go to stderr, not logging
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def create_session(model_path: str | os.PathLike, *, threads: int | None = None, spin: bool = False):
    """A CPU ``onnxruntime.InferenceSession`` for ``model_path`` with :func:`session_options`."""
    import onnxruntime as ort

    return ort.InferenceSession(os.fspath(model_path), session_options(threads, spin=spin),
                                providers=["CPUExecutionProvider"])


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id: its padding settings, else a ``[PAD]``/``<pad>`` token, else 0."""
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for name in ("[PAD]", "<pad>", "<|pad|>"):
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return int(tid)
    return 0


def token_names(tokenizer) -> list[str]:
    """Token strings by id (the vocabulary a sparse index records)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    names = [""] * tokenizer.get_vocab_size(with_added_tokens=True)
    for token, i in vocab.items():
        if 0 <= i < len(names):
            names[i] = token
    return names


class TokenBatcher:
    """Texts -> ``(positions, input_ids, attention_mask)`` int64 batches, longest texts first."""

    def __init__(self, tokenizer, max_length: int):
        if int(max_length) < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        self.pad_id = pad_token_id(tokenizer)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        texts = list(texts)
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts must be strings, got {type(bad).__name__}")
        return [enc.ids for enc in self.tokenizer.encode_batch(texts)]

    def pad(self, id_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pad to the longest list: ``(input_ids, attention_mask)``, both ``(n, longest)`` int64."""
        longest = max((len(ids) for ids in id_lists), default=0)
        input_ids = np.full((len(id_lists), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(id_lists), longest), dtype=np.int64)
        for row, ids in enumerate(id_lists):
            input_ids[row, :len(ids)] = ids
            mask[row, :len(ids)] = 1
        return input_ids, mask

    def batches(self, texts: Sequence[str], batch_size: int = 32,
                max_tokens: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Length-sorted batches of at most ``batch_size`` texts and ``max_tokens`` padded tokens
        (a single text always forms a batch); ``positions`` index into ``texts``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        id_lists = self.tokenize(texts)
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        order = np.argsort(-lengths, kind="stable")
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])  # sorted: the first text of a batch is its longest
            size = batch_size
            if max_tokens:
                size = max(1, min(batch_size, int(max_tokens) // max(longest, 1)))
            positions = order[start:start + size]
            input_ids, mask = self.pad([id_lists[i] for i in positions])
            yield positions, input_ids, mask
            start += size
