"""int8 dynamic quantisation of an exported graph (onnxruntime.quantization.quantize_dynamic).

Weights of ``MatMul`` nodes become int8; activations are quantised per call. Measured on this
2-core AVX2 server (no VNNI), against the fp32 graph on SciFact documents:

- all-MiniLM-L6-v2: one scale per output channel (``per_channel=True``) keeps mean cosine
  0.9935; one scale per tensor drops it to 0.934, ``reduce_range`` to 0.76, uint8 weights 0.974.
- SPLADE-tiny: one scale per tensor keeps 95% of each document's top-20 tokens (weight
  correlation 0.993) and is the fastest; per-channel and ``reduce_range`` were no better.
  Its vocabulary projection (90% of the cost) is not quantised here: the sparse exporter first
  rewrites it into its own int8 form (:mod:`embedx.export.vocab_max`), so this module only sees
  the transformer's MatMuls.

The exporter picks these per kind. ``Gather`` (embedding tables) would only shrink the file,
and the graphs have no fused ``Attention`` op to quantise (onnxruntime's transformer optimizer
does not recognise the dynamo exporter's attention; fusing it with the legacy exporter was not
faster once int8).

The quantiser only sees weights that are initializers: a ``MatMul`` whose weight is a
``Transpose`` of an initializer (a tied output layer reusing the input embeddings) would stay
fp32 and keep ~90% of a sparse encoder's cost, so :func:`materialize_transposed_weights` first
gives such products their own transposed copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

DEFAULT_OP_TYPES = ("MatMul",)


def materialize_transposed_weights(model) -> int:
    """Replace ``MatMul(x, Transpose(W))`` with ``W`` an initializer by ``MatMul(x, W.T)`` with
    a new initializer; returns the number rewritten. Edits ``model`` (an ``onnx.ModelProto``)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    rewritten, dropped = 0, []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        source = producers.get(node.input[1])
        if source is None or source.op_type != "Transpose" or source.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[source.input[0]])
        if weight.ndim != 2 or perm not in (None, [1, 0]):
            continue
        name = f"{source.input[0]}__transposed"
        if name not in inits:
            inits[name] = numpy_helper.from_array(weight.T.copy(), name)
            graph.initializer.append(inits[name])
        node.input[1] = name
        consumers[source.output[0]] -= 1
        if consumers[source.output[0]] == 0:
            dropped.append(source)
        rewritten += 1
    for node in dropped:
        graph.node.remove(node)
    return rewritten


@contextlib.contextmanager
def _quiet_quantizer():
    """quantize_dynamic logs an advisory warning and per-tensor notes on the root logger."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, *, op_types=DEFAULT_OP_TYPES,
                  per_channel: bool = False, reduce_range: bool = False, weight_type: str = "int8") -> dict:
    """Write the int8 version of ``src`` to ``dst``; returns the settings (for ``encoder.json``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if weight_type not in types:
        raise ValueError(f"weight_type must be one of {sorted(types)}, got {weight_type!r}")
    model = onnx.load(os.fspath(src))
    if not op_types:  # nothing to quantise (quantize_dynamic would read an empty list as "all")
        onnx.save(model, os.fspath(dst))
        return {"method": "none", "op_types": []}
    untied = materialize_transposed_weights(model)
    with _quiet_quantizer():
        quantize_dynamic(model, Path(dst), op_types_to_quantize=list(op_types), per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=types[weight_type],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"method": "dynamic", "weight_type": weight_type, "op_types": list(op_types),
            "per_channel": per_channel, "reduce_range": reduce_range, "untied_weights": untied}
