"""The trainer on a tiny random model: it lowers the loss, resumes exactly, refuses bad configs,
and imports nothing of the index layer (it runs where FAISS, LMDB and Lucene are absent)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from embedx.sparse.config import SparseConfigError, load_config
from embedx.sparse.dataset import PreparedData, StageSampler


def _raw(tiny_prepared, tiny_beir, tiny_model, out=None, **stage_overrides):
    stage = {"data": "supervised", "steps": 6, "batch_size": 3, "negatives": 2, "lr": 2e-3, "warmup_steps": 2,
             "losses": {"infonce": 1.0, "kl": 1.0}, "lambda_d": 1e-2, "flops_T": 4}
    stage.update(stage_overrides)
    return {"seed": 3, "output_dir": str(out) if out else None,
            "data": {"prepared": str(tiny_prepared), "corpus": str(tiny_beir)},
            "model": {"path": str(tiny_model), "max_length": 24},
            "distill": {"teachers": ["dense", "sparse", "bm25"]},
            "trainer": {"progress": False, "log_every": 2, "checkpoint_every": 3, "keep_checkpoints": 10},
            "stages": {"pretrain": {**stage, "data": "unsupervised", "steps": 4, "losses": {"infonce": 1.0}},
                       "finetune": stage}}


def _weights(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_training_lowers_the_loss_on_a_fixed_batch(tiny_prepared, tiny_beir, tiny_model):
    from embedx.sparse.train import SparseTrainer

    raw = _raw(tiny_prepared, tiny_beir, tiny_model, steps=25, lr=3e-3)
    raw["stages"].pop("pretrain")
    trainer = SparseTrainer(load_config(raw=raw))
    split = trainer.data.splits["supervised"]
    batch = StageSampler(split, 6, 2, seed=0, teachers=["dense", "sparse", "bm25"]).next_batch()

    def fixed_loss():
        trainer.model.eval()
        with torch.no_grad():
            loss, parts = trainer._losses("finetune", batch, step=10_000)
        return parts["infonce"] + parts["kl"]

    before = fixed_loss()
    summary = trainer.run()
    after = fixed_loss()
    assert summary["finished"] and summary["global_step"] == 25
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_prepared, tiny_beir, tiny_model, tmp_path):
    from embedx.sparse.train import train_from_config

    full = load_config(raw=_raw(tiny_prepared, tiny_beir, tiny_model, tmp_path / "full"))
    train_from_config(config=full)
    cut = load_config(raw=_raw(tiny_prepared, tiny_beir, tiny_model, tmp_path / "cut"))
    first = train_from_config(config=cut, stop_at=2)            # mid pre-training
    assert not first["finished"] and first["global_step"] == 2
    second = train_from_config(config=cut, stop_at=4)           # exactly at the stage boundary
    assert second["global_step"] == 4 and not second["finished"]
    third = train_from_config(config=cut, stop_at=7)            # mid fine-tuning
    assert third["global_step"] == 7
    last = train_from_config(config=cut)
    assert last["finished"] and last["global_step"] == 10
    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "cut" / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    qa = json.loads((tmp_path / "full" / "query_encoder" / "idf.json").read_text())
    qb = json.loads((tmp_path / "cut" / "query_encoder" / "idf.json").read_text())
    assert qa == qb
    log_a = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds_per_step"} for r in rows]  # noqa: E731
    assert strip(log_a) == strip(log_b)


def test_learnable_idf_is_trained_and_saved(tiny_prepared, tiny_beir, tiny_model, tmp_path):
    from embedx.sparse.train import SparseTrainer
    from serving.encoders.idf import IdfQueryEncoder

    raw = _raw(tiny_prepared, tiny_beir, tiny_model, tmp_path / "run", steps=4)
    raw["stages"].pop("pretrain")
    raw["query"] = {"mode": "learnable", "lr": 0.05}
    trainer = SparseTrainer(load_config(raw=raw))
    start = trainer.model.query.idf.detach().clone()
    trainer.run()
    assert not torch.equal(start, trainer.model.query.idf.detach())
    saved = IdfQueryEncoder.load(tmp_path / "run" / "query_encoder")
    assert np.allclose(saved.idf[5:], torch.relu(trainer.model.query.idf.detach())[5:].numpy(), atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(extra=1), "unknown top-level key"),
    (lambda r: r["model"].update(dropout=0.1), "unknown key"),
    (lambda r: r.update(query={"mode": "tfidf"}), "query.mode"),
    (lambda r: r.update(query={"min_idf": -0.5}), "query.min_idf"),
    (lambda r: r["stages"]["finetune"].update(losses={"hinge": 1.0}), "unknown loss"),
    (lambda r: r["stages"]["finetune"].update(steps=0), "steps must be positive"),
    (lambda r: r["stages"]["finetune"].update(lr="fast"), "expected a number"),
    (lambda r: r["stages"]["finetune"].update(negatives=0, losses={"kl": 1.0}), "negatives must be >= 1"),
    (lambda r: r["distill"].update(teachers=["colbert"]), "unknown teacher"),
    (lambda r: r["distill"].update(teachers=[]), "need at least one teacher"),
    (lambda r: r.update(stages={}), "stages"),
    (lambda r: r["trainer"].update(device="tpu"), "trainer.device"),
    (lambda r: r["query"].update(lr=0.1) if "query" in r else r.update(query={"lr": 0.1}), "learnable"),
])
def test_config_errors_are_clear(tiny_prepared, tiny_beir, tiny_model, change, message):
    raw = _raw(tiny_prepared, tiny_beir, tiny_model)
    change(raw)
    with pytest.raises(SparseConfigError, match=message):
        load_config(raw=raw)


def test_config_errors_found_against_the_data(tiny_prepared, tiny_beir, tiny_model, tmp_path):
    from embedx.sparse.dataset import PreparedDataError
    from embedx.sparse.train import SparseTrainer

    raw = _raw(tiny_prepared, tiny_beir, tiny_model)
    raw["stages"]["finetune"]["data"] = "msmarco"
    with pytest.raises(SparseConfigError, match="no split 'msmarco'"):
        SparseTrainer(load_config(raw=raw))
    raw = _raw(tiny_prepared, tiny_beir, tiny_model)
    raw["data"]["prepared"] = str(tmp_path / "missing.npz")
    with pytest.raises(PreparedDataError, match="embedx sparse prepare"):
        SparseTrainer(load_config(raw=raw))


def test_overrides_and_yaml_file(tiny_prepared, tiny_beir, tiny_model, tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(tiny_prepared, tiny_beir, tiny_model), sort_keys=False))
    cfg = load_config(path, ["stages.finetune.steps=5", "query.mode=binary", "stages.finetune.lr=1e-4"])
    assert cfg.stages["finetune"].steps == 5 and cfg.query.mode == "binary"
    assert cfg.stages["finetune"].lr == 1e-4
    assert list(cfg.stages) == ["pretrain", "finetune"]
    # a stage set to null is switched off; switching off every stage is an error
    assert list(load_config(path, ["stages.pretrain=null"]).stages) == ["finetune"]
    with pytest.raises(SparseConfigError, match="not set to null"):
        load_config(path, ["stages.pretrain=null", "stages.finetune=null"])
    with pytest.raises(SparseConfigError, match="no config file"):
        load_config(tmp_path / "nope.yaml")


def test_sampler_is_seeded_and_its_state_round_trips(tiny_prepared):
    split = PreparedData.load(tiny_prepared).splits["unsupervised"]
    a = StageSampler(split, 5, 3, seed=1, teachers=["bm25"])
    b = StageSampler(split, 5, 3, seed=1, teachers=["bm25"])
    for _ in range(3):
        x, y = a.next_batch(), b.next_batch()
        assert np.array_equal(x.docs, y.docs)
    state = json.loads(json.dumps(a.state()))
    expected = [a.next_batch().docs for _ in range(4)]
    c = StageSampler(split, 5, 3, seed=99, teachers=["bm25"])
    c.load_state(state)
    assert all(np.array_equal(e, c.next_batch().docs) for e in expected)
    batch = a.next_batch()
    for i, q in enumerate(batch.queries):
        negs = batch.docs[i, 1:][batch.valid[i, 1:]]
        assert not set(negs) & set(split.positives(q).tolist())      # positives are never negatives
        assert len(set(negs)) == len(negs)
        assert np.isfinite(batch.teacher["bm25"][i][batch.valid[i]]).all()


@pytest.mark.slow
def test_train_module_imports_nothing_of_the_index_layer():
    code = ("import sys, embedx.sparse.train, embedx.sparse.cli\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'faiss', 'lmdb', 'ranx', 'pyserini', 'jnius', 'pandas', 'onnxruntime', 'sentence_transformers'})\n"
            "bad += [m for m in sys.modules if m in ('indexing.dense', 'indexing.sparse', 'indexing.lucene', "
            "'indexing.store', 'embedx.tables.trainer')]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_shipped_ablation_configs_load_and_differ_only_where_they_should():
    from pathlib import Path

    from embedx.sparse.config import config_to_dict

    folder = Path(__file__).resolve().parents[2] / "embedx" / "sparse" / "configs"
    cfgs = {p.stem: config_to_dict(load_config(p)) for p in sorted(folder.glob("scifact-*.yaml"))}
    assert set(cfgs) == {"scifact-plain-flops", "scifact-idf-flops", "scifact-idf-flops-distill"}
    plain, idf, distill = cfgs["scifact-plain-flops"], cfgs["scifact-idf-flops"], cfgs["scifact-idf-flops-distill"]
    assert (plain["query"]["mode"], idf["query"]["mode"], distill["query"]["mode"]) == ("binary", "idf", "idf")
    for c in cfgs.values():
        for s in c["stages"].values():
            s.pop("losses")
        c["query"].pop("mode")
        for k in ("name", "output_dir"):
            c.pop(k)
    assert plain == idf == distill          # same steps, seeds, FLOPS settings otherwise
