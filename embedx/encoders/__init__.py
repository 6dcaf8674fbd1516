"""Torch text encoders that ``embedx export`` turns into ONNX (the sparse document encoder lives
in :mod:`embedx.sparse.encoder`)."""

from embedx.encoders.dense import DenseTextEncoder, pool, read_sentence_transformers

__all__ = ["DenseTextEncoder", "pool", "read_sentence_transformers"]
