"""Export torch encoders to ONNX folders that :mod:`serving.encoders.onnx` loads without torch.

An export traces the encoder with dynamic batch and sequence axes (``torch.onnx.export``, the
dynamo exporter), optionally quantises it to int8, writes ``model.onnx``, ``tokenizer.json``
and ``encoder.json``, loads the folder back through the runtime encoder and compares it with
the torch model on sample texts (:mod:`embedx.export.parity`). All of it happens in a hidden
sibling directory that is renamed into place only after parity passed: a failed export raises
and leaves nothing behind, and never touches an existing folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from indexing.fsutil import atomic_open, fsync_dir, fsync_folder
from serving.encoders.onnx import (FORMAT_VERSION, MODEL_FILE, TOKENIZER_FILE, OnnxDenseEncoder, OnnxSparseEncoder,
                                   encoder_hash)
from serving.encoders.runtime import TokenBatcher

from .graphs import DenseTokenGraph, SparseMaxGraph, eager_attention
from .parity import DEFAULT_THRESHOLDS, STATISTICS, ParityError, check, measure
from .quantize import quantize_int8
from .vocab_max import DEFAULT_CHUNK, rewrite_vocab_max

log = logging.getLogger(__name__)

INPUTS = ["input_ids", "attention_mask"]
DEFAULT_SAMPLES = 24
# int8 settings measured best per kind (see embedx.export.quantize): MiniLM loses ~7% cosine with
# one scale per weight tensor (mean cosine 0.934 vs 0.9935 per output channel); SPLADE-tiny's
# transformer keeps more of its top tokens with one scale per tensor (its vocabulary layer is
# quantised by embedx.export.vocab_max, one scale per vocabulary row).
DENSE_INT8 = {"per_channel": True}
SPARSE_INT8 = {"per_channel": False}


class ExportError(ValueError):
    """An export that cannot be done as asked (bad settings, an existing folder, a failed trace)."""


# ---------------------------------------------------------------- sample texts
def default_sample_texts(n: int = DEFAULT_SAMPLES) -> list[str]:
    """The packaged demo corpus's first ``n`` documents, an empty text, one word, and a text far
    longer than any ``max_length`` (exercises truncation)."""
    from embedx.data import demo_corpus_path, load_corpus
    from embedx.retrieval import doc_text

    docs = [doc_text(d) for d in load_corpus(demo_corpus_path()).values()]
    return docs[:max(0, n)] + ["", "sun", " ".join(docs)]


# ---------------------------------------------------------------- tracing
@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress and warns about optional packages on every call."""
    names = ["torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
             "onnx_ir", "onnxscript"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def trace_to_onnx(module: torch.nn.Module, path: Path, *, max_length: int, output: str,
                  opset: int | None = None) -> int:
    """Write ``module(input_ids, attention_mask)`` as ONNX with dynamic batch and sequence axes;
    returns the opset used."""
    import onnx

    module.eval()
    seq = min(8, max_length)
    example = (torch.full((2, seq), 1000, dtype=torch.long), torch.ones((2, seq), dtype=torch.long))
    example[1][1, seq // 2:] = 0  # a padded row: the traced graph must not assume full rows
    batch_dim = torch.export.Dim("batch")
    seq_dim = torch.export.Dim("seq", max=max_length)
    shapes = {name: {0: batch_dim, 1: seq_dim} for name in INPUTS}
    try:
        with torch.no_grad(), _quiet_exporter(), eager_attention(module):
            torch.onnx.export(module, example, os.fspath(path), input_names=INPUTS, output_names=[output],
                              dynamic_shapes=shapes, opset_version=opset, dynamo=True, external_data=False,
                              verbose=False)
    except Exception as exc:
        raise ExportError(f"tracing {type(module).__name__} to ONNX failed: {exc}") from exc
    proto = onnx.load(os.fspath(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------- the folder
def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` moves aside first and is
    deleted only once the new folder is in place (restored if the rename fails)."""
    fsync_folder(tmp)
    old = None
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        old = _sibling(out, "old")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict) -> None:
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _copy_tokenizer(tokenizer):
    """A ``tokenizers.Tokenizer`` copy of a HF fast tokenizer, a ``Tokenizer`` or a file path."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return Tokenizer.from_str(tokenizer.to_str())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return Tokenizer.from_str(backend.to_str())
    if isinstance(tokenizer, (str, os.PathLike)) and Path(tokenizer).exists():
        path = Path(tokenizer)
        return Tokenizer.from_file(str(path / TOKENIZER_FILE if path.is_dir() else path))
    raise ExportError(f"cannot use {type(tokenizer).__name__} as a tokenizer: export needs a fast "
                      "(tokenizer.json) tokenizer")


def _export(kind: str, graph: torch.nn.Module, reference, tokenizer, out, *, settings: dict, source: dict,
            int8: bool, quantization: dict | None, space_id: str | None, sample_texts: Sequence[str] | None,
            thresholds: dict | None, overwrite: bool, opset: int | None, rewrite=None) -> Path:
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ExportError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    precision = "int8" if int8 else "fp32"
    unknown = sorted(set(thresholds or {}) - set(STATISTICS[kind]))
    if unknown:
        raise ExportError(f"unknown parity thresholds {unknown} for a {kind} encoder; known: {list(STATISTICS[kind])}")
    limits = {**DEFAULT_THRESHOLDS[(kind, precision)], **(thresholds or {})}
    encoder_type = {"dense": "onnx-dense", "sparse": "onnx-sparse"}[kind]
    output = settings.pop("output")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        batcher = TokenBatcher(tokenizer, settings["max_length"])
        (tmp / TOKENIZER_FILE).write_text(tokenizer.to_str())
        model_path = tmp / MODEL_FILE
        rewritten = None
        if int8:
            fp32_path = tmp / "model.fp32.onnx"
            opset_used = trace_to_onnx(graph, fp32_path, max_length=batcher.max_length, output=output, opset=opset)
            rewritten = _rewrite(fp32_path, rewrite, int8=True)
            try:
                quant = quantize_int8(fp32_path, model_path, **(quantization or {}))
            except Exception as exc:
                raise ExportError(f"int8 quantisation failed: {exc}") from exc
            fp32_path.unlink()
        else:
            opset_used = trace_to_onnx(graph, model_path, max_length=batcher.max_length, output=output, opset=opset)
            rewritten = _rewrite(model_path, rewrite, int8=False)
            quant = None
        config = {"type": encoder_type, "kind": kind, "format_version": FORMAT_VERSION,
                  "model": MODEL_FILE, "tokenizer": TOKENIZER_FILE, "inputs": list(INPUTS), "output": output,
                  **settings, "quantization": quant, "opset": opset_used, "source": source}
        if rewrite is not None:
            config["vocab_max"] = rewritten
        config["hash"] = encoder_hash(model_path.read_bytes(), (tmp / TOKENIZER_FILE).read_text(), config)
        config["space_id"] = space_id or f"encoder:{config['hash']}"
        config["exporter"] = _versions()
        config["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        _write_json(tmp / "encoder.json", config)

        runtime_cls = OnnxDenseEncoder if kind == "dense" else OnnxSparseEncoder
        exported = runtime_cls.load(tmp)
        texts = list(sample_texts) if sample_texts is not None else default_sample_texts()
        if not texts:
            raise ExportError("parity needs at least one sample text")
        stats = measure(kind, reference, exported.run_batch, batcher, texts)
        failed = check(stats, limits)
        config["parity"] = {**stats, "precision": precision, "thresholds": limits, "passed": not failed}
        if failed:
            raise ParityError(f"{encoder_type} export of {source.get('model')} ({precision}) does not match the "
                              f"torch model: {'; '.join(failed)}. Nothing was written to {out}.")
        _write_json(tmp / "encoder.json", config)
        del exported  # the session holds the file open
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s (hash %s, parity %s)", encoder_type, out, config["hash"],
             {k: v for k, v in config["parity"].items() if k not in ("batch_shapes", "thresholds")})
    return out


def _rewrite(path: Path, rewrite, *, int8: bool) -> dict | None:
    """Apply ``rewrite(model_proto, int8)`` to the ONNX file at ``path``; its report, or ``None``
    when it did not apply (the file is then untouched)."""
    if rewrite is None:
        return None
    import onnx

    model = onnx.load(os.fspath(path))
    try:
        info = rewrite(model, int8)
    except Exception as exc:
        raise ExportError(f"rewriting the traced graph failed: {exc}") from exc
    if info is not None:
        onnx.save(model, os.fspath(path))
    return info


def _torch_fn(module: torch.nn.Module):
    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
    return run


def _load(loader, model, **kwargs):
    """A model by name or folder; a missing or unreadable one is an ExportError (a path that does
    not exist fails here rather than after a model hub lookup)."""
    text = os.fspath(model)
    if (Path(text).is_absolute() or text.startswith((".", "~"))) and not Path(text).expanduser().exists():
        raise ExportError(f"cannot load model {text!r}: no such folder")
    try:
        return loader(model, **kwargs)
    except Exception as exc:
        raise ExportError(f"cannot load model {model!r}: {exc}") from exc


# ---------------------------------------------------------------- public entry points
def export_dense(model="all-minilm-l6-v2", out=None, *, int8: bool = False, max_length: int | None = None,
                 pooling: str | None = None, normalize: bool | None = None, space_id: str | None = None,
                 sample_texts: Sequence[str] | None = None, thresholds: dict | None = None,
                 quantization: dict | None = None, overwrite: bool = False, opset: int | None = None) -> Path:
    """Export a dense text encoder (a :class:`~embedx.encoders.DenseTextEncoder`, a model folder
    or a name) to ``out``. Pooling and normalisation are recorded and run in numpy at serve time."""
    from embedx.encoders import DenseTextEncoder

    if out is None:
        raise ExportError("export needs an output folder")
    if isinstance(model, DenseTextEncoder):
        if any(v is not None for v in (max_length, pooling, normalize)):
            raise ExportError("max_length/pooling/normalize apply when loading by name; set them on the encoder")
        enc = model
    else:
        enc = _load(DenseTextEncoder.from_pretrained, model, pooling=pooling, normalize=normalize,
                    max_length=max_length)
    enc.eval()
    positions = int(getattr(enc.model.config, "max_position_embeddings", enc.max_length) or enc.max_length)
    if enc.max_length > positions:
        raise ExportError(f"max_length {enc.max_length} exceeds the model's {positions} positions")
    tokenizer = _copy_tokenizer(enc.tokenizer)
    settings = {**enc.settings(), "output": "token_embeddings"}
    source = {"model": enc.source or type(enc.model).__name__, "class": "embedx.encoders.DenseTextEncoder",
              "architecture": type(enc.model).__name__}
    quantization = {**DENSE_INT8, **(quantization or {})}
    return _export("dense", DenseTokenGraph(enc), _torch_fn(enc), tokenizer, out, settings=settings,
                   source=source, int8=int8, quantization=quantization, space_id=space_id,
                   sample_texts=sample_texts, thresholds=thresholds, overwrite=overwrite, opset=opset)


def export_sparse_doc(model="splade-tiny", out=None, *, int8: bool = False, max_length: int | None = None,
                      prune_ratio: float = 0.0, space_id: str | None = None, tokenizer=None,
                      sample_texts: Sequence[str] | None = None, thresholds: dict | None = None,
                      quantization: dict | None = None, overwrite: bool = False, opset: int | None = None,
                      vocab_chunk: int | None = DEFAULT_CHUNK) -> Path:
    """Export a :class:`~embedx.sparse.encoder.SparseDocEncoder` (or a masked-LM folder or name)
    to ``out``; the graph returns the ``(batch, vocab)`` weights, ``prune_ratio`` is applied by
    the runtime encoder.

    The vocabulary projection and its max over positions are rewritten into chunks of
    ``vocab_chunk`` vocabulary rows (:mod:`embedx.export.vocab_max`; with ``int8``, its own int8
    form, the rest of the graph goes through ``quantization``); ``None`` keeps the traced form."""
    from embedx.sparse.encoder import SparseDocEncoder

    if out is None:
        raise ExportError("export needs an output folder")
    if not 0.0 <= prune_ratio < 1.0:
        raise ExportError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    if vocab_chunk is not None and (isinstance(vocab_chunk, bool) or not isinstance(vocab_chunk, int)
                                    or vocab_chunk < 1):
        raise ExportError(f"vocab_chunk must be a positive integer or None, got {vocab_chunk!r}")
    enc = model if isinstance(model, SparseDocEncoder) else _load(SparseDocEncoder.from_pretrained, model)
    enc.eval()
    tokenizer = _copy_tokenizer(tokenizer if tokenizer is not None else getattr(enc, "tokenizer", None))
    positions = int(getattr(enc.mlm.config, "max_position_embeddings", 512) or 512)
    max_length = int(max_length or min(512, positions))
    if max_length > positions:
        raise ExportError(f"max_length {max_length} exceeds the model's {positions} positions")
    settings = {"dimension": enc.vocab_size, "max_length": max_length, "prune_ratio": float(prune_ratio),
                "output": "weights"}
    source = {"model": getattr(enc, "source", None) or type(enc.mlm).__name__,
              "class": "embedx.sparse.encoder.SparseDocEncoder", "architecture": type(enc.mlm).__name__}
    quantization = {**SPARSE_INT8, **(quantization or {})}
    return _export("sparse", SparseMaxGraph(enc), _torch_fn(enc), tokenizer, out, settings=settings,
                   source=source, int8=int8, quantization=quantization, space_id=space_id,
                   sample_texts=sample_texts, thresholds=thresholds, overwrite=overwrite, opset=opset,
                   rewrite=lambda proto, q: (None if vocab_chunk is None else
                                             rewrite_vocab_max(proto, int8=q, chunk=vocab_chunk)))


EXPORTERS = {"dense": export_dense, "sparse-doc": export_sparse_doc}
