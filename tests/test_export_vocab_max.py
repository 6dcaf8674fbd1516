"""The sparse export's vocabulary-max rewrite (embedx.export.vocab_max): same maxima as the traced
``ReduceMax(MatMul(x, W), axis=1)`` in fp32, close in int8, and the int8 kernel never saturates."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from embedx.export.quantize import quantize_int8  # noqa: E402
from embedx.export.vocab_max import ACT_LEVELS, find_vocab_max, quantize_rows, rewrite_vocab_max  # noqa: E402
from serving.encoders.runtime import create_session  # noqa: E402

B, S, H, V = 3, 7, 16, 150


def _graph(opset: int, *, tied: bool = True, seed: int = 0):
    """x (B, S, H) -> max over positions of x @ W^T (W stored (V, H), tied to a Gather), plus
    ``g`` = a Gather of W so the weight must survive the rewrite."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((V, H)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["w", "ids"], ["g"])]
    if tied:
        nodes += [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
                  helper.make_node("MatMul", ["x", "wt"], ["l"])]
        inits = [numpy_helper.from_array(w, "w")]
    else:
        nodes += [helper.make_node("MatMul", ["x", "w_hv"], ["l"])]
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w.T.copy(), "w_hv")]
    if opset >= 18:
        nodes.append(helper.make_node("ReduceMax", ["l", "ax"], ["m"], keepdims=0))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    else:
        nodes.append(helper.make_node("ReduceMax", ["l"], ["m"], axes=[1], keepdims=0))
    nodes.append(helper.make_node("Relu", ["m"], ["y"]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", H]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", V]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, ["n", H])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model), w


def create_session_from(model):
    import onnxruntime as ort

    from serving.encoders.runtime import session_options

    return ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def _run(model, x, ids=np.array([0, 5])):
    return create_session_from(model).run(None, {"x": x, "ids": ids})


@pytest.mark.parametrize("opset,tied,chunk", [(20, True, 64), (17, True, 1000), (20, False, 7)])
def test_fp32_rewrite_gives_the_same_maxima(opset, tied, chunk):
    model, w = _graph(opset, tied=tied)
    x = np.random.default_rng(1).standard_normal((B, S, H)).astype(np.float32)
    before = _run(model, x)
    info = rewrite_vocab_max(model, chunk=chunk)
    assert info == {"vocab_max": "chunked-transposed", "chunk": chunk, "int8": False}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == -(-V // chunk) and find_vocab_max(model) is None
    assert "w" in {t.name for t in model.graph.initializer}  # the Gather still reads it
    onnx.checker.check_model(model)
    after = _run(model, x)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], np.maximum((x @ w.T).max(axis=1), 0), rtol=1e-5, atol=1e-5)


def test_int8_rewrite_is_close_and_uses_integer_products():
    model, w = _graph(20)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, S, H)).astype(np.float32)
    x[1, :, 3] *= 20  # an outlier feature in one document: its scale must not hurt the others
    exact = np.maximum((x @ w.T).max(axis=1), 0)
    assert rewrite_vocab_max(model, int8=True, chunk=64)["int8"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops
    y = _run(model, x)[0]
    assert y.shape == (B, V)
    for row in (0, 2):  # documents without the outlier keep ~1% error
        err = np.abs(y[row] - exact[row]).max() / exact[row].max()
        assert err < 0.03, err
    assert np.corrcoef(y[1], exact[1])[0, 1] > 0.99


def test_rewrite_leaves_other_graphs_alone():
    model, _ = _graph(20)
    model.graph.node[-2].attribute[0].i = 1  # keepdims=1: not the pattern
    before = model.SerializeToString()
    assert rewrite_vocab_max(model) is None and model.SerializeToString() == before
    with pytest.raises(ValueError, match="chunk"):
        rewrite_vocab_max(_graph(20)[0], chunk=0)


def test_uint8_by_int8_products_never_saturate():
    """The worst case of the int8 form: weights 255 and activations +-ACT_LEVELS in every pair.
    AVX2 without VNNI adds u8 x s8 pairs in int16 with saturation; 7-bit activations stay exact."""
    k, n = 64, 5
    a = np.full((4, k), 255, dtype=np.uint8)
    a[1] = 0
    a[2, ::2] = 1
    b = np.full((k, n), ACT_LEVELS, dtype=np.int8)
    b[:, 1] = -ACT_LEVELS
    b[::3, 2] = -ACT_LEVELS
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b", "za"], ["y"])], "g",
                              [helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [4, n])],
                              initializer=[numpy_helper.from_array(a, "a"),
                                           numpy_helper.from_array(np.uint8(128), "za")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    y = create_session_from(model).run(None, {"b": b})[0]
    np.testing.assert_array_equal(y, (a.astype(np.int64) - 128) @ b.astype(np.int64))


def test_quantize_rows():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], dtype=np.float32)
    codes, scale = quantize_rows(w)
    assert codes.dtype == np.uint8 and codes[0].tolist() == [192, 1, 160] and codes[1].tolist() == [128] * 3
    np.testing.assert_allclose((codes.astype(np.float32) - 128) * scale[:, None], w, atol=1 / 254)


def test_quantize_nothing_keeps_fp32(tmp_path):
    model, _ = _graph(20)
    onnx.save(model, tmp_path / "m.onnx")
    info = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", op_types=())
    assert info == {"method": "none", "op_types": []}
    assert [n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node] == [n.op_type for n in model.graph.node]
    create_session(tmp_path / "q.onnx", threads=1)


@pytest.mark.slow
def test_tiny_sparse_export_rewritten_equals_traced(tmp_path):
    from embedx.export import ExportError, export_sparse_doc
    from embedx.export.tiny import tiny_sparse_encoder
    from serving.encoders.onnx import OnnxSparseEncoder

    enc = tiny_sparse_encoder()
    texts = ["the sun is a star", "black hole", "a", "gravity " * 40]
    plain = export_sparse_doc(enc, tmp_path / "plain", max_length=32, vocab_chunk=None, sample_texts=texts)
    fast = export_sparse_doc(enc, tmp_path / "fast", max_length=32, vocab_chunk=64, sample_texts=texts)
    config = json.loads((fast / "encoder.json").read_text())
    assert config["vocab_max"]["chunk"] == 64 and json.loads((plain / "encoder.json").read_text())["vocab_max"] is None
    a, b = OnnxSparseEncoder.load(plain), OnnxSparseEncoder.load(fast)
    for batch_size in (1, 3):
        np.testing.assert_allclose(b.encode(texts, batch_size=batch_size).toarray(),
                                   a.encode(texts, batch_size=batch_size).toarray(), atol=1e-5)
    with pytest.raises(ExportError, match="vocab_chunk"):
        export_sparse_doc(enc, tmp_path / "bad", vocab_chunk=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast", "plain"]
