"""Rewrite a sparse graph's vocabulary projection and max over positions into a cache-friendly form.

The traced graph computes ``ReduceMax(MatMul(x, W), axis=1)``: ``(batch, seq, vocab)`` logits,
then a max over the middle axis. Both halves are slow in onnxruntime on a CPU: the logits (250 MB
for 2,048 tokens) go to memory and back, and ``ReduceMax`` over a middle axis runs at ~5 GB/s,
a quarter of its speed over the last axis (measured, onnxruntime 1.32, 1 thread). The rewrite
computes the same maxima as ``W_c @ x^T`` for vocabulary chunks ``W_c`` of a few hundred rows:

- each chunk's logits are ``(chunk, batch * seq)``, small enough to stay in cache, and their max
  over positions is a reduction over the last axis (``Reshape`` to ``(chunk, batch, seq)``);
- the chunk maxima are concatenated to ``(vocab, batch)`` and transposed to ``(batch, vocab)``.

For int8 the chunks are ``MatMulInteger(W_q, x_q)`` with the weights as the uint8 operand and the
activations as the int8 one, which is onnxruntime's fast u8 x s8 kernel; the max is taken over
int32 sums and scaled afterwards, which is exact because every scale is positive and constant
along the positions:

- weights: one scale per vocabulary row (``max |w_row| / 127``), zero point 128;
- activations: one scale per document (``max |x_doc| / 63``), symmetric. Seven bits keep every
  pair of products inside int16 (``2 * 255 * 63 < 32768``): AVX2 without VNNI adds pairs with
  saturation (``vpmaddubsw``), which would otherwise corrupt the sums of large activations.

Padding needs no handling here: the traced graph already gives padded positions a real
position's hidden state, so they never change a maximum.

Measured on SPLADE-tiny, SciFact documents, 1 thread (2-core AVX2 server, thread CPU time):
fp32 1.2-1.3x and int8 1.4-1.7x faster than the traced graph (more when other processes load
the memory bus); against fp32, int8 keeps 94.8% of each document's top-20 tokens (was 94.0%)
with weight correlation 0.993 (was 0.992). Chunks of 128 to 512 rows ran equally fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREFIX = "vocab_max"
DEFAULT_CHUNK = 256
ACT_LEVELS = 63      # int8 activations in [-63, 63]: no int16 saturation against uint8 weights
WEIGHT_LEVELS = 127  # uint8 weights in [1, 255] around zero point 128


@dataclass
class _Match:
    matmul: object          # the projection MatMul node
    reduce: object          # the ReduceMax over positions
    transpose: object       # Transpose(initializer) feeding the MatMul, or None
    weight_name: str        # initializer holding the weight
    weight_is_vh: bool      # stored as (vocab, hidden) (torch Linear layout) rather than (hidden, vocab)


def _const_ints(graph, name: str):
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t).astype(np.int64).ravel().tolist()
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t).astype(np.int64).ravel().tolist()
    return None


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _consumers(graph, name: str) -> int:
    return sum(list(n.input).count(name) for n in graph.node) + sum(o.name == name for o in graph.output)


def _shape(model, name: str):
    """The recorded shape of tensor ``name`` (dims as ints or symbols), or ``None``."""
    graph = model.graph
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.name == name and info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else d.dim_param
                    for d in info.type.tensor_type.shape.dim]
    return None


def _rank(model, name: str) -> int | None:
    shape = _shape(model, name)
    if shape is None:
        import onnx

        inferred = onnx.shape_inference.infer_shapes(model)
        shape = _shape(inferred, name)
    return None if shape is None else len(shape)


def _last_dim(model, name: str) -> int | None:
    shape = _shape(model, name)
    return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None


def find_vocab_max(model, min_vocab: int = 2) -> _Match | None:
    """The ``ReduceMax(MatMul(x, W), axes=[1], keepdims=0)`` with ``W`` a constant
    ``(hidden, vocab)`` weight (an initializer or the transpose of one); ``None`` if absent."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for red in graph.node:
        if red.op_type != "ReduceMax" or _attr(red, "keepdims", 1) != 0:
            continue
        axes = _attr(red, "axes") if len(red.input) < 2 else _const_ints(graph, red.input[1])
        mm = producers.get(red.input[0])
        if axes is None or list(axes) not in ([1], [-2]) or mm is None or mm.op_type != "MatMul":
            continue
        source, transpose = mm.input[1], None
        if source in inits:
            dims, is_vh = list(inits[source].dims), False
        else:
            transpose = producers.get(source)
            if (transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits
                    or list(_attr(transpose, "perm", [1, 0])) != [1, 0]):
                continue
            source, dims, is_vh = transpose.input[0], list(inits[transpose.input[0]].dims), True
        hidden = dims[1] if is_vh else dims[0]
        if (len(dims) != 2 or (dims[0] if is_vh else dims[1]) < min_vocab
                or _consumers(graph, mm.output[0]) != 1 or _rank(model, mm.input[0]) != 3):
            continue
        if _last_dim(model, mm.input[0]) not in (None, hidden):
            continue
        return _Match(mm, red, transpose, source, is_vh)
    return None


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(vocab, hidden)`` float weights -> uint8 codes (zero point 128) and one scale per row."""
    weight = np.asarray(weight, dtype=np.float32)
    scale = np.abs(weight).max(axis=1) / WEIGHT_LEVELS
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(weight / scale[:, None]), -WEIGHT_LEVELS, WEIGHT_LEVELS) + 128
    return codes.astype(np.uint8), scale


def rewrite_vocab_max(model, *, int8: bool = False, chunk: int = DEFAULT_CHUNK) -> dict | None:
    """Replace the graph's projection + max (:func:`find_vocab_max`) in place by the chunked,
    transposed form; returns what was done (for ``encoder.json``), ``None`` when the graph has
    no such pattern (it is left as it was)."""
    from onnx import TensorProto, helper, numpy_helper

    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    match = find_vocab_max(model)
    if match is None:
        return None
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weight = numpy_helper.to_array(inits[match.weight_name])
    weight_vh = weight if match.weight_is_vh else weight.T
    vocab, hidden = weight_vh.shape
    x, out = match.matmul.input[0], match.reduce.output[0]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return None  # Slice/Reshape/Round forms used below need opset 13

    def name(s: str) -> str:
        return f"{PREFIX}/{s}"

    new_inits, nodes, made = [], [], set()

    def const(s: str, value) -> str:
        if name(s) not in made:
            made.add(name(s))
            new_inits.append(numpy_helper.from_array(np.asarray(value), name(s)))
        return name(s)

    def node(op: str, inputs, output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, list(inputs), [output], name=name(output.rsplit("/", 1)[-1]), **attrs))
        return output

    def reduce_max(data: str, axes: list[int], output: str, keepdims: int) -> str:
        if opset >= 18:  # axes became an input in opset 18
            return node("ReduceMax", [data, const("axes_" + "_".join(map(str, axes)), axes)], output, keepdims=keepdims)
        return node("ReduceMax", [data], output, axes=axes, keepdims=keepdims)

    # (batch, seq, hidden) -> (hidden, batch, seq); the chunk logits reshape to (chunk, batch, seq)
    xt3 = node("Transpose", [x], name("x_hbs"), perm=[2, 0, 1])
    batch_seq = node("Slice", [node("Shape", [x], name("x_shape")), const("zero", [0]), const("two", [2])],
                     name("batch_seq"))
    logits_shape = node("Concat", [const("minus_one", [-1]), batch_seq], name("logits_shape"), axis=0)
    flat = const("flat_shape", [hidden, -1])
    if int8:
        codes, row_scale = quantize_rows(weight_vh)
        absmax = reduce_max(node("Abs", [xt3], name("x_abs")), [0, 2], name("x_absmax"), 1)  # (1, batch, 1)
        doc_scale = node("Max", [node("Div", [absmax, const("act_levels", np.float32(ACT_LEVELS))],
                                      name("x_scale_raw")), const("tiny", np.float32(1e-30))], name("x_scale"))
        xq = node("Cast", [node("Round", [node("Div", [xt3, doc_scale], name("x_div"))], name("x_round"))],
                  name("x_q3"), to=TensorProto.INT8)
        operand = node("Reshape", [xq, flat], name("x_q"))
        zero_point = const("weight_zero_point", np.uint8(128))
    else:
        operand = node("Reshape", [xt3, flat], name("x_t"))
    maxima = []
    for k, start in enumerate(range(0, vocab, chunk)):
        stop = min(vocab, start + chunk)
        if int8:
            w = const(f"w{k}", codes[start:stop])
            logits = node("MatMulInteger", [w, operand, zero_point], name(f"logits{k}"))
        else:  # a Slice of the shared weight: constant-folded at load, the file keeps one copy
            w = node("Slice", [match.weight_name, const(f"start{k}", [start]), const(f"stop{k}", [stop]),
                               const("axis0", [0])] if match.weight_is_vh else
                     [match.weight_name, const(f"start{k}", [start]), const(f"stop{k}", [stop]), const("axis1", [1])],
                     name(f"w{k}"))
            if not match.weight_is_vh:
                w = node("Transpose", [w], name(f"w{k}_t"), perm=[1, 0])
            logits = node("MatMul", [w, operand], name(f"logits{k}"))
        per_doc = node("Reshape", [logits, logits_shape], name(f"logits{k}_bs"))
        maxima.append(reduce_max(per_doc, [2], name(f"max{k}"), 0))                     # (chunk, batch)
    stacked = node("Concat", maxima, name("max_vb"), axis=0)                            # (vocab, batch)
    if int8:
        scaled = node("Mul", [node("Cast", [stacked], name("max_float"), to=TensorProto.FLOAT),
                              const("row_scale", row_scale.reshape(-1, 1))], name("max_rows"))
        stacked = node("Mul", [scaled, node("Reshape", [doc_scale, const("one_row", [1, -1])],
                                            name("doc_scale"))], name("max_scaled"))
    node("Transpose", [stacked], out, perm=[1, 0])

    # the new nodes go where the MatMul was (after x, before any user of the max); the
    # Transpose of a tied weight goes too unless something else reads it
    old = [match.matmul, match.reduce]
    if match.transpose is not None and _consumers(graph, match.transpose.output[0]) == 1:
        old.append(match.transpose)
    spliced = []
    for n in graph.node:
        if n is match.matmul:
            spliced.extend(nodes)
        elif not any(n is o for o in old):
            spliced.append(n)
    del graph.node[:]
    graph.node.extend(spliced)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    if match.weight_name not in used:
        graph.initializer.remove(inits[match.weight_name])
    return {"vocab_max": "chunked-transposed", "chunk": int(chunk), "int8": bool(int8),
            **({"weights": "uint8 per vocabulary row", "activations": f"int8 per document, +-{ACT_LEVELS}"}
               if int8 else {})}
