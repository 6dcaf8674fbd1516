"""Registry, YAML config with overrides, metrics, trainer (learning, early stopping, exact
resume) and train_from_config end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from embedx.tables import registry
from embedx.tables.base import Budget, CompressedTable, TableConfigError, tensor_bytes
from embedx.tables.config import (ConfigError, TrainerConfig, apply_overrides, config_to_dict, load_config,
                                  parse_value, resolve_per_field)
from embedx.tables.data import ArrayDataset, load_dataset, split_rows
from embedx.tables.data.criteo_synth import CriteoSynthetic, CriteoSynthOptions
from embedx.tables.data.dataset import array_splits
from embedx.tables.models import build_model
from embedx.tables.registry import build_table, get_method, resolve_budget
from embedx.tables.train import load_trained, train_from_config
from embedx.tables.trainer import Trainer, log_loss_from_logits, roc_auc, seed_everything

from .test_data import ML100K_RATINGS, write_ml100k


class TinyTable(CompressedTable):
    """A plain per-id table with two hyperparameters, one of them per field."""

    name = "tiny_test_table"

    def __init__(self, cardinalities, dim, budget=None, init_std: float = 0.1, scales: list[float] | None = None,
                 seed: int = 0):
        super().__init__(cardinalities, dim, budget)
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(self.total_ids, dim, generator=g) * init_std)
        self.scales = scales

    @classmethod
    def min_bytes(cls, cardinalities, dim, init_std: float = 0.1, **_):
        return sum(cardinalities) * dim * 4

    def embed(self, fields, ids):
        return self.weight[self.global_ids(fields, ids)]

    def memory_bytes(self):
        return tensor_bytes(self.weight)


@pytest.fixture(autouse=True)
def tiny_method(monkeypatch):
    monkeypatch.setitem(registry._registered, TinyTable.name, TinyTable)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TinyTable
    torch.set_num_threads(n)


# ---------------------------------------------------------------- registry
def test_registry_lookup_and_errors():
    assert get_method("tiny_test_table") is TinyTable
    assert "tiny_test_table" in registry.available_methods()
    with pytest.raises(TableConfigError, match="unknown table method 'nope'.*tiny_test_table"):
        get_method("nope")

    class Other(TinyTable):
        name = "tiny_test_table"

    with pytest.raises(TableConfigError, match="already registered"):
        registry.register(Other)

    class Nameless(TinyTable):
        name = ""

    with pytest.raises(TableConfigError, match="no registry name"):
        registry.register(Nameless)


def test_build_table_budget_forms_and_errors():
    cards, dim = [10, 20], 4
    full = 30 * 4 * 4
    assert resolve_budget(None, cards, dim).bytes == full
    assert resolve_budget(0.5, cards, dim).bytes == full // 2
    assert resolve_budget(1000, cards, dim).bytes == 1000
    assert resolve_budget(Budget(7), cards, dim).bytes == 7
    for bad in (True, -3, 0, "10x", 1.5):
        with pytest.raises(TableConfigError):
            resolve_budget(bad, cards, dim)
    t = build_table("tiny_test_table", cards, dim, 1.0, init_std=0.5, seed=3)
    assert t.budget.bytes == full and t.memory_bytes() == full and t.weight.std() > 0.3
    with pytest.raises(TableConfigError, match="no hyperparameter.*'bogus'.*init_std, scales, seed"):
        build_table("tiny_test_table", cards, dim, bogus=1)
    with pytest.raises(TableConfigError, match=f"at least {full:,} bytes"):
        build_table("tiny_test_table", cards, dim, 0.5)


def test_registered_methods_package_when_present():
    names = registry.available_methods()
    if "full" not in names:
        pytest.skip("embedx.tables.methods does not export 'full' yet")
    t = build_table("full", [10, 20], 4, 1.0)
    assert t.memory_bytes() == 30 * 4 * 4


# ---------------------------------------------------------------- config
BASE = {
    "seed": 1,
    "data": {"name": "ml100k", "root": "/nowhere", "cache": False},
    "model": {"name": "dcnv2", "cross_layers": 2, "deep": [16]},
    "table": {"method": "tiny_test_table", "dim": 8, "rate": 1.0, "init_std": 0.05},
    "trainer": {"epochs": 2, "batch_size": 64},
}


def test_config_parses_blocks_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    cfg = load_config(p, ["trainer.lr=1e-2", "model.deep=[32, 8]", "table.init_std=2e-1", "trainer.progress=false",
                          "model.low_rank=4", "trainer.grad_clip=null", "output_dir=/tmp/x"])
    assert cfg.trainer.lr == 0.01 and isinstance(cfg.trainer.lr, float)
    assert cfg.model.params == {"cross_layers": 2, "deep": [32, 8], "low_rank": 4}
    assert cfg.table.params == {"init_std": 0.2} and cfg.table.budget == 1.0
    assert cfg.trainer.progress is False and cfg.output_dir == "/tmp/x" and cfg.seed == 1
    assert cfg.data.options == {"root": "/nowhere", "cache": False}
    again = load_config(raw=config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert parse_value("1e-3") == 0.001 and parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc"
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=5"]) == {"a": {"b": 1, "c": {"d": 5}}}


@pytest.mark.parametrize("overrides,message", [
    (["bogus=1"], "unknown top-level key.*'bogus'"),
    (["trainer.lrr=0.1"], "trainer: unknown key.*'lrr'.*lr"),
    (["trainer.epochs=many"], "trainer.epochs: expected an integer"),
    (["trainer.optimizer=rmsprop"], "adam, adagrad or sgd"),
    (["model.depth=3"], r"model \(dcnv2\): unknown key.*'depth'"),
    (["model.name=xdeepfm"], "unknown model 'xdeepfm'"),
    (["model.deep=3"], "expected a list"),
    (["table.buckets=10"], "no hyperparameter.*'buckets'"),
    (["table.method=nope"], "unknown table method 'nope'"),
    (["table.bytes=1000"], "`rate` or as `bytes`, not both"),
    (["table.rate=1.5"], r"rate must be in \(0, 1\]"),
    (["table.rate=null", "table.bytes=-5"], "bytes must be positive"),
    (["data.negatives=3"], r"data \(ml100k\): unknown key.*'negatives'"),
    (["data.name=ml20m"], "unknown data set"),
    (["trainer.resume=true"], "resume needs output_dir"),
    (["table.per_field.init_std.user_id=1", "table.init_std=null"], "both inline and in per_field"),
    (["trainer.batch_size=0"], "batch_size must be positive"),
    (["a..b=1"], "key.sub=value"),
    (["trainer.epochs"], "key.sub=value"),
    (["seed.x=1"], "seed is not a block"),
])
def test_config_errors_are_clear(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw=BASE, overrides=overrides)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="needs a `table:` block"):
        load_config(raw={k: v for k, v in BASE.items() if k != "table"})


def test_per_field_resolution():
    names = ["user_id", "item_id", "genres"]
    out = resolve_per_field({"scales": {"item_id": 2.0, "default": 1.0}, "k": {"user_id": 1, "item_id": 2, "genres": 3}},
                            names)
    assert out == {"scales": [1.0, 2.0, 1.0], "k": [1, 2, 3]}
    with pytest.raises(ConfigError, match="'age' are not fields of the data; its fields are: user_id, item_id"):
        resolve_per_field({"scales": {"age": 1.0, "default": 1.0}}, names)
    with pytest.raises(ConfigError, match="no value for field.*user_id.*no `default`"):
        resolve_per_field({"scales": {"item_id": 2.0}}, names)


def test_shipped_configs_load():
    from pathlib import Path

    import embedx.tables

    folder = Path(embedx.tables.__file__).parent / "configs"
    files = sorted(folder.glob("*.yaml"))
    assert {"ml1m-dcnv2.yaml", "ml100k-dcnv2.yaml"} <= {f.name for f in files}
    for f in files:
        cfg = load_config(f, ["table.method=tiny_test_table"])
        assert cfg.table.dim == 16 and cfg.table.budget == 1.0


# ---------------------------------------------------------------- metrics
def test_auc_and_logloss_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    z = np.round(rng.normal(size=5000) + y, 1)  # rounding makes many ties
    assert roc_auc(y, z) == pytest.approx(roc_auc_score(y, z), abs=1e-12)
    p = 1 / (1 + np.exp(-z))
    assert log_loss_from_logits(y, z) == pytest.approx(log_loss(y, p), rel=1e-9)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75  # hand-computed: 3 of 4 pairs ordered
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert log_loss_from_logits([1.0], [800.0]) == pytest.approx(0.0) and math.isfinite(log_loss_from_logits([0], [800.0]))


# ---------------------------------------------------------------- trainer
def synth_splits(rows: int = 6000, seed: int = 0):
    """A learnable problem: few ids, strong first-order and pairwise signal, no noise."""
    gen = CriteoSynthetic(CriteoSynthOptions(cardinalities=[30, 20, 10, 6], chunk_rows=2048, calibration_rows=4096,
                                             zipf=0.3, first_order=2.0, interaction=2.0, noise=0.0, target_ctr=0.4,
                                             seed=seed))
    parts = list(gen.stream("train", rows).arrays(with_probabilities=True))
    ids = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    p_true = np.concatenate([p[3] for p in parts])
    data = ArrayDataset(gen.fields, ids, None, labels)
    splits = array_splits(data, split_rows(len(data), [0.6, 0.2, 0.2], seed), {})
    return splits, p_true


def make_model(splits, seed=0, dropout=0.0):
    seed_everything(seed)
    table = TinyTable(splits.cardinalities, 8, seed=seed)
    return build_model("dcnv2", table, 0, cross_layers=2, deep=[32], dropout=dropout)


def test_training_learns_a_learnable_problem():
    splits, p_true = synth_splits()
    bayes = roc_auc(splits.val.labels, p_true[splits.val.rows])
    trainer = Trainer(make_model(splits), TrainerConfig(epochs=4, batch_size=128, lr=0.01, progress=False,
                                                        patience=4))
    before = trainer.evaluate(splits.val)["auc"]
    out = trainer.fit(splits.train, splits.val)
    assert bayes > 0.85
    assert out["best_val_auc"] > 0.78 and out["best_val_auc"] > before + 0.2, (before, out["best_val_auc"], bayes)
    assert out["throughput"] > 0 and out["peak_rss_bytes"] > 10 * 2**20 and out["epochs"] == 4
    assert [h["epoch"] for h in out["history"]] == list(range(1, 5))


def test_early_stopping_and_best_weights(tmp_path):
    splits, _ = synth_splits(rows=2000)
    cfg = TrainerConfig(epochs=10, batch_size=256, lr=0.01, patience=2, min_delta=0.5, progress=False,
                        keep_checkpoints=5)
    model = make_model(splits)
    out = Trainer(model, cfg, output_dir=tmp_path).fit(splits.train, splits.val)
    # epoch 1 is the only "gain" (min_delta 0.5 is unreachable afterwards); 2 bad epochs stop it
    assert out["epochs"] == 3 and out["stopped_early"] and out["best_epoch"] == 1
    best = load_file(tmp_path / "best" / "model.safetensors")
    last = load_file(tmp_path / "checkpoints" / "epoch-0003" / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], best[k]) for k in best)  # best weights restored
    assert not all(torch.equal(state[k], last[k]) for k in last)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["epoch"] == 1


def test_capped_evaluation_reads_a_fixed_random_sample_not_a_prefix():
    splits, _ = synth_splits(rows=3000)
    val = splits.val
    order = np.argsort(-val.labels.astype(np.int64), kind="stable")  # an ordered split: every positive first
    ordered = type(val)(val.data, val.rows[order])
    assert ordered.labels[:200].min() == 1
    trainer = Trainer(make_model(splits), TrainerConfig(eval_batch_size=100, max_eval_batches=2, progress=False))
    out = trainer.evaluate(ordered)
    assert out["rows"] == 200 and 0 < out["auc"] < 1  # both classes seen
    assert trainer.evaluate(ordered) == out  # the same rows every time
    full = Trainer(make_model(splits), TrainerConfig(eval_batch_size=128, progress=False)).evaluate(ordered)
    assert full["rows"] == len(val)


def test_trainer_rejects_a_bad_device():
    splits, _ = synth_splits(rows=500)
    with pytest.raises(ConfigError, match="trainer.device"):
        Trainer(make_model(splits), TrainerConfig(device="abacus"))


def test_resume_continues_exactly(tmp_path):
    splits, _ = synth_splits(rows=2000)
    sig = {"fields": splits.field_names, "cardinalities": splits.cardinalities}

    def cfg(epochs, resume=False):
        return TrainerConfig(epochs=epochs, batch_size=200, lr=0.01, patience=10, progress=False, resume=resume,
                             keep_checkpoints=5)

    straight = Trainer(make_model(splits, dropout=0.3), cfg(3), seed=5, output_dir=tmp_path / "a", signature=sig)
    straight.fit(splits.train, splits.val)
    first = Trainer(make_model(splits, dropout=0.3), cfg(2), seed=5, output_dir=tmp_path / "b", signature=sig)
    first.fit(splits.train, splits.val)
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it
    np.random.seed(999)
    second = Trainer(make_model(splits, seed=77, dropout=0.3), cfg(3, resume=True), seed=5,
                     output_dir=tmp_path / "b", signature=sig)
    out = second.fit(splits.train, splits.val)
    assert out["epochs"] == 3
    a = load_file(tmp_path / "a" / "checkpoints" / "epoch-0003" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "epoch-0003" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "a" / "checkpoints" / "epoch-0003" / "state.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "checkpoints" / "epoch-0003" / "state.json").read_text())["history"]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    # a checkpoint of other data is refused
    other = Trainer(make_model(splits), cfg(4, resume=True), seed=5, output_dir=tmp_path / "b",
                    signature={**sig, "cardinalities": [1, 2, 3, 4]})
    with pytest.raises(ConfigError, match="different data or table.*cardinalities"):
        other.fit(splits.train, splits.val)


# ---------------------------------------------------------------- end to end
def test_train_from_config_end_to_end(tmp_path):
    root = write_ml100k(tmp_path / "ml", ML100K_RATINGS * 30)
    raw = {**BASE, "output_dir": str(tmp_path / "run"),
           "data": {"name": "ml100k", "root": str(root), "cache": False, "split": [0.6, 0.2, 0.2]},
           "model": {"name": "deepfm", "deep": [16]},
           "table": {"method": "tiny_test_table", "dim": 8, "rate": 1.0,
                     "per_field": {"scales": {"genres": 2.0, "default": 1.0}}},
           "trainer": {"epochs": 2, "batch_size": 64, "progress": False}}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(raw))
    result = train_from_config(p, ["trainer.lr=0.005"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("val_auc", "test_auc", "val_logloss", "test_logloss", "memory_bytes", "params", "throughput",
                "epochs", "peak_rss_bytes"):
        assert key in result and key in saved
    cards = result["data_info"]["fields"]
    assert result["memory_bytes"] == sum(cards.values()) * 8 * 4 == result["budget_bytes"]
    assert result["epochs"] == 2 and result["config"]["trainer"]["lr"] == 0.005
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "checkpoints" / "latest.json").is_file()
    # the saved run reloads without the data and reproduces the test AUC
    model, cfg = load_trained(tmp_path / "run")
    assert cfg.model.name == "deepfm"
    test = load_dataset("ml100k", root=str(root), cache=False, split=[0.6, 0.2, 0.2]).test
    with torch.no_grad():
        logits = torch.cat([model(b.ids) for b in test.batches(100)]).numpy()
    assert roc_auc(test.labels, logits) == pytest.approx(result["test_auc"], abs=1e-9)

    sub = train_from_config(p, ["data.fields=[user_id, item_id, genres]", "output_dir=null", "table.per_field={}"])
    assert list(sub["data_info"]["fields"]) == ["user_id", "item_id", "genres"]
    with pytest.raises(ConfigError, match="data.fields: unknown field.*'title'"):
        train_from_config(p, ["data.fields=[user_id, title]", "output_dir=null"])
    with pytest.raises(ConfigError, match="'occupations' are not fields of the data"):
        train_from_config(p, ["table.per_field.scales.occupations=3", "output_dir=null"])
