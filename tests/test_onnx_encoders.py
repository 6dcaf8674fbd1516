"""The torch-free runtime encoders (serving.encoders.onnx / runtime) on tiny exported models.

The tiny models are seeded random BERTs with a real WordPiece tokenizer (embedx.export.tiny), so
these tests need no installed model; the real models are exercised in test_export.py.
"""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from embedx.encoders import DenseTextEncoder, pool, read_sentence_transformers  # noqa: E402
from embedx.export import export_dense, export_sparse_doc  # noqa: E402
from embedx.export.tiny import tiny_dense_encoder, tiny_sparse_encoder, tiny_tokenizer  # noqa: E402
from serving.encoders import EncoderError, QueryEncoder, load_encoder  # noqa: E402
from serving.encoders.base import sparse_rows  # noqa: E402
from serving.encoders.onnx import OnnxDenseEncoder, OnnxSparseEncoder, encoder_hash, pool_tokens  # noqa: E402
from serving.encoders.runtime import (THREADS_ENV, TokenBatcher, create_session, default_threads,  # noqa: E402
                                     physical_cores)

TEXTS = ["The sun is a star.", "", "gravity", "Black holes bend light; 42 galaxies, 7 planets and a lot of water!",
         " ".join(["the energy of the sun"] * 40), "Search a sparse index with a dense query vector"]


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return export_dense(tiny_dense_encoder(max_length=48), tmp_path_factory.mktemp("enc") / "dense")


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory):
    return export_sparse_doc(tiny_sparse_encoder(), tmp_path_factory.mktemp("enc") / "sparse", max_length=48)


def _config(folder):
    return json.loads((folder / "encoder.json").read_text())


def _rewrite(folder, **changes):
    """Edit encoder.json and re-sign it (a hand-made variant of an export)."""
    config = {**_config(folder), **changes}
    config["hash"] = encoder_hash((folder / "model.onnx").read_bytes(), (folder / "tokenizer.json").read_text(), config)
    (folder / "encoder.json").write_text(json.dumps(config))
    return config


# ---------------------------------------------------------------- loading
def test_load_encoder_returns_the_class_the_folder_names(dense_dir, sparse_dir):
    dense, sparse = load_encoder(dense_dir), load_encoder(sparse_dir)
    assert isinstance(dense, OnnxDenseEncoder) and isinstance(sparse, OnnxSparseEncoder)
    assert isinstance(dense, QueryEncoder) and isinstance(sparse, QueryEncoder)
    assert (dense.kind, dense.dimension) == ("dense", 32)
    assert (sparse.kind, sparse.dimension) == ("sparse", tiny_tokenizer().get_vocab_size())
    for enc, folder in ((dense, dense_dir), (sparse, sparse_dir)):
        config = _config(folder)
        assert enc.encoder_hash == config["hash"] and enc.space_id == f"encoder:{config['hash']}"
        info = enc.describe()
        assert info["hash"] == enc.encoder_hash and info["type"] == config["type"] and info["parity"]["passed"]
    assert dense.describe()["pooling"] == "mean" and dense.describe()["normalize"] is True
    assert len(sparse.vocabulary()) == sparse.dimension and sparse.vocabulary()[2] == "[CLS]"


def test_class_load_refuses_the_other_type(dense_dir, sparse_dir):
    with pytest.raises(EncoderError, match="not 'onnx-sparse'"):
        OnnxSparseEncoder.load(dense_dir)
    with pytest.raises(EncoderError, match="not 'onnx-dense'"):
        OnnxDenseEncoder.load(sparse_dir)


# ---------------------------------------------------------------- equality with torch
def test_dense_equals_torch_for_any_batch_size_and_length(dense_dir):
    torch_enc = tiny_dense_encoder(max_length=48)
    ref = torch_enc.encode(TEXTS, batch_size=2)
    enc = load_encoder(dense_dir)
    for batch_size in (1, 3, 64):  # batches of 1 to all, lengths 2 to the 48-token limit
        out = enc.encode(TEXTS, batch_size=batch_size)
        assert out.dtype == np.float32 and out.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    # order follows the input, whatever the length sort did
    np.testing.assert_allclose(enc.encode(TEXTS[::-1]), ref[::-1], atol=1e-5)


def test_sparse_equals_torch_sparse_doc_encoder(sparse_dir):
    torch_enc = tiny_sparse_encoder()
    batcher = TokenBatcher(tiny_tokenizer(), 48)
    ids, mask = batcher.pad(batcher.tokenize(TEXTS))
    with torch.no_grad():  # the packed torch path, the one SparseDocEncoder.encode uses
        ref = sparse_rows(torch_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    enc = load_encoder(sparse_dir)
    for batch_size in (1, 4, 64):
        out = enc.encode(TEXTS, batch_size=batch_size)
        assert out.shape == ref.shape and out.dtype == np.float32
        np.testing.assert_allclose(out.toarray(), ref.toarray(), atol=1e-5)
    # by hand: weights are log1p(relu(max logit)) >= 0 and special tokens carry none
    dense = enc.encode(["gravity", "the sun"]).toarray()
    assert (dense >= 0).all() and dense[:, :5].sum() == 0
    assert set(np.flatnonzero(dense[0])) != set(np.flatnonzero(dense[1]))


def test_sparse_max_tokens_batches_do_not_change_results(sparse_dir):
    enc = load_encoder(sparse_dir)
    a = enc.encode(TEXTS, batch_size=64, max_tokens=10_000).toarray()
    b = enc.encode(TEXTS, batch_size=64, max_tokens=48).toarray()  # one text per batch
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_sparse_prune_ratio_is_applied_at_runtime(sparse_dir, tmp_path):
    folder = tmp_path / "pruned"
    shutil.copytree(sparse_dir, folder)
    _rewrite(folder, prune_ratio=0.5)
    full = load_encoder(sparse_dir).encode(TEXTS).toarray()
    pruned = load_encoder(folder).encode(TEXTS).toarray()
    floor = full.max(axis=1, keepdims=True) * 0.5
    np.testing.assert_array_equal(pruned, np.where(full >= floor, full, 0.0))
    assert (pruned > 0).sum() < (full > 0).sum()


def test_empty_and_bad_inputs(dense_dir, sparse_dir):
    dense, sparse = load_encoder(dense_dir), load_encoder(sparse_dir)
    assert dense.encode([]).shape == (0, 32)
    assert sparse.encode([]).shape == (0, sparse.dimension)
    for enc in (dense, sparse):
        with pytest.raises(TypeError):
            enc.encode("one string")
        with pytest.raises(TypeError):
            enc.encode(["fine", 3])


# ---------------------------------------------------------------- hashes and bad folders
def test_hash_is_stable_and_covers_what_changes_outputs(dense_dir, sparse_dir):
    for folder in (dense_dir, sparse_dir):
        config = _config(folder)
        model, tok = (folder / "model.onnx").read_bytes(), (folder / "tokenizer.json").read_text()
        assert encoder_hash(model, tok, config) == config["hash"]
        # labels and measurements are not part of it
        assert encoder_hash(model, tok, {**config, "space_id": "x", "parity": {}, "created": "y"}) == config["hash"]
        changed = {"max_length": 16, "dimension": 7}
        changed.update({"pooling": "cls", "normalize": False} if config["kind"] == "dense" else {"prune_ratio": 0.3})
        for key, value in changed.items():
            assert encoder_hash(model, tok, {**config, key: value}) != config["hash"], key
        assert encoder_hash(model + b"\0", tok, config) != config["hash"]
        assert encoder_hash(model, tok.replace("[UNK]", "[UNKNOWN]"), config) != config["hash"]


def test_reexport_gives_the_same_hash(sparse_dir, tmp_path):
    again = export_sparse_doc(tiny_sparse_encoder(), tmp_path / "again", max_length=48)
    assert _config(again)["hash"] == _config(sparse_dir)["hash"]


@pytest.mark.parametrize("damage, match", [
    ("no-config", "no encoder.json"),
    ("bad-json", "cannot read encoder config"),
    ("unknown-type", "unknown encoder type"),
    ("no-model", "missing model.onnx"),
    ("no-tokenizer", "missing tokenizer.json"),
    ("changed-model", "does not match its files"),
    ("changed-setting", "does not match its files"),
    ("garbage-model", "cannot load the encoder"),
    ("bad-pooling", "pooling must be one of"),
    ("future-version", "format_version"),
    ("missing-key", "lacks"),
])
def test_bad_folders_raise_encoder_error(dense_dir, tmp_path, damage, match):
    folder = tmp_path / "enc"
    shutil.copytree(dense_dir, folder)
    config = _config(folder)
    if damage == "no-config":
        (folder / "encoder.json").unlink()
    elif damage == "bad-json":
        (folder / "encoder.json").write_text("{not json")
    elif damage == "unknown-type":
        (folder / "encoder.json").write_text(json.dumps({**config, "type": "onnx-mystery"}))
    elif damage == "no-model":
        (folder / "model.onnx").unlink()
    elif damage == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "changed-model":
        with open(folder / "model.onnx", "ab") as f:
            f.write(b"\0")
    elif damage == "changed-setting":
        (folder / "encoder.json").write_text(json.dumps({**config, "max_length": 8}))
    elif damage == "garbage-model":
        (folder / "model.onnx").write_bytes(b"not an onnx graph")
        _rewrite(folder)
    elif damage == "bad-pooling":
        _rewrite(folder, pooling="median")
    elif damage == "future-version":
        _rewrite(folder, format_version=99)
    elif damage == "missing-key":
        (folder / "encoder.json").write_text(json.dumps({k: v for k, v in config.items() if k != "dimension"}))
    with pytest.raises(EncoderError, match=match):
        load_encoder(folder)


def test_missing_folder_raises_encoder_error(tmp_path):
    with pytest.raises(EncoderError):
        load_encoder(tmp_path / "nowhere")


# ---------------------------------------------------------------- runtime pieces
def test_token_batcher_sorts_caps_and_pads():
    batcher = TokenBatcher(tiny_tokenizer(), 12)
    texts = ["a", "the sun is a star", "", "gravity bends light of every star in the galaxy and more", "water"]
    lists = batcher.tokenize(texts)
    assert max(len(ids) for ids in lists) == 12  # truncated to max_length, [SEP] kept last
    assert all(ids[0] == 2 and ids[-1] == 3 for ids in lists)
    seen, longest_prev = [], None
    for positions, ids, mask in batcher.batches(texts, batch_size=4, max_tokens=24):
        assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
        assert ids.shape[0] * ids.shape[1] <= 24 or ids.shape[0] == 1
        lengths = mask.sum(axis=1)
        assert lengths[0] == ids.shape[1] and list(lengths) == sorted(lengths, reverse=True)
        assert (ids[mask == 0] == batcher.pad_id).all()
        for row, pos in enumerate(positions):
            assert list(ids[row, :lengths[row]]) == lists[pos]
        assert longest_prev is None or lengths[0] <= longest_prev
        longest_prev = lengths[0]
        seen.extend(positions.tolist())
    assert sorted(seen) == list(range(len(texts)))
    with pytest.raises(ValueError):
        TokenBatcher(tiny_tokenizer(), 1)


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_numpy_pooling_equals_torch_pooling(mode):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(4, 7, 5)).astype(np.float32)
    mask = np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0], [1] * 5 + [0, 0]], dtype=np.int64)
    ref = pool(torch.from_numpy(hidden), torch.from_numpy(mask), mode).numpy()
    np.testing.assert_allclose(pool_tokens(hidden, mask, mode), ref, atol=1e-6)
    if mode == "mean":  # by hand
        np.testing.assert_allclose(ref[1], hidden[1, :3].mean(axis=0), atol=1e-6)
    if mode == "max":
        np.testing.assert_allclose(ref[2], hidden[2, 0], atol=0)


def test_session_thread_settings(dense_dir, monkeypatch):
    assert physical_cores() >= 1
    monkeypatch.setenv(THREADS_ENV, "1")
    assert default_threads() == 1
    assert load_encoder(dense_dir).threads == 1
    session = create_session(dense_dir / "model.onnx", threads=2)
    assert session.get_session_options().intra_op_num_threads == 2
    assert session.get_session_options().inter_op_num_threads == 1
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        default_threads()


# ---------------------------------------------------------------- the torch dense encoder's config reading
def _st_folder(tmp_path, pooling_config, extra_modules=()):
    (tmp_path / "1_Pooling").mkdir(parents=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               *extra_modules]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    return tmp_path


def test_read_sentence_transformers_layout(tmp_path):
    folder = _st_folder(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    assert read_sentence_transformers(folder) == {"model_dir": folder, "pooling": "cls", "normalize": False,
                                                  "max_length": 32}
    assert read_sentence_transformers(tmp_path / "1_Pooling") == {}  # not a sentence-transformers folder


def test_read_sentence_transformers_normalize_and_unsupported(tmp_path):
    norm = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    a = _st_folder(tmp_path / "a", {"pooling_mode_max_tokens": True}, [norm])
    assert read_sentence_transformers(a)["normalize"] is True and read_sentence_transformers(a)["pooling"] == "max"
    b = _st_folder(tmp_path / "b", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True})
    with pytest.raises(ValueError, match="unsupported pooling"):
        read_sentence_transformers(b)
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    c = _st_folder(tmp_path / "c", {"pooling_mode_mean_tokens": True}, [dense])
    with pytest.raises(ValueError, match="not supported"):
        read_sentence_transformers(c)


def test_dense_encoder_rejects_unknown_pooling():
    enc = tiny_dense_encoder()
    with pytest.raises(ValueError, match="unknown pooling"):
        DenseTextEncoder(enc.model, tiny_tokenizer(), pooling="median")


def test_loading_and_encoding_never_import_torch(dense_dir, sparse_dir):
    import subprocess
    import sys

    code = ("import sys\nfrom serving.encoders import load_encoder\n"
            f"load_encoder({str(dense_dir)!r}).encode(['the sun'])\n"
            f"load_encoder({str(sparse_dir)!r}).encode(['the sun'])\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
