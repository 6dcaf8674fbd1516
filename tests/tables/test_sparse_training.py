"""Sparse row gradients for large tables: every row-gathered method gives the same gradient
sparse as dense, row-wise Adagrad against a hand computation, the trainer with a dense and a
sparse optimizer side by side, and checkpoint/resume with both."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedx.tables.base import Budget, TableConfigError
from embedx.tables.config import ConfigError, TrainerConfig, load_config
from embedx.tables.methods import METHODS
from embedx.tables.models import build_model
from embedx.tables.optim import OptimizerSet, RowWiseAdagrad
from embedx.tables.registry import build_table
from embedx.tables.trainer import Trainer, seed_everything

from .test_framework import BASE, synth_splits
from .test_methods import CARDS, CASES, DIM, IDS, random_ids

SPARSE = {"full", "hash", "hash_shared", "qr", "mde", "int8", "int16", "alpt", "unified"}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def grads(method, rate, hp, sparse):
    table = METHODS[method](CARDS, DIM, Budget.from_rate(rate, CARDS, DIM), seed=0, **hp).train()
    if sparse:
        table.set_sparse_gradients(True)
    out = table(random_ids(CARDS, 128))
    (out * torch.linspace(-1, 1, DIM)).sum().backward()
    return table, {n: p.grad for n, p in table.named_parameters()}


@pytest.mark.parametrize("method,rate,hp", CASES, ids=IDS)
def test_sparse_gradients_equal_dense_ones(method, rate, hp):
    if method not in SPARSE:
        with pytest.raises(TableConfigError, match="sparse gradients"):
            METHODS[method](CARDS, DIM, Budget.from_rate(rate, CARDS, DIM), **hp).set_sparse_gradients(True)
        return
    table, sparse = grads(method, rate, hp, True)
    _, dense = grads(method, rate, hp, False)
    names = {n for n, p in table.named_parameters() if any(p is q for q in table.sparse_parameters())}
    assert names, "a sparse method names its row-gathered parameters"
    for name, g in sparse.items():
        if g is None:  # e.g. an empty block of plain fields
            assert dense[name] is None or not dense[name].any()
            continue
        assert g.is_sparse == (name in names), name
        torch.testing.assert_close(g.to_dense(), dense[name], rtol=1e-5, atol=1e-7)


def test_rowwise_adagrad_matches_a_hand_computation_and_dense_equals_sparse():
    w0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([1, 3, 1])
    upd = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))

    def run(sparse):
        w = torch.nn.Parameter(w0.clone())
        opt = RowWiseAdagrad([w], lr=0.1, eps=1e-8)
        for _ in range(2):
            opt.zero_grad()
            (torch.nn.functional.embedding(rows, w, sparse=sparse) * upd).sum().backward()
            opt.step()
        return w.detach(), opt.state[w]["sum"]

    ws, acc_s = run(True)
    wd, acc_d = run(False)
    g = torch.zeros(5, 3).index_add_(0, rows, upd)  # the per-step gradient (same both steps)
    acc = torch.zeros(5)
    expected = w0.clone()
    for _ in range(2):
        acc += g.pow(2).mean(1)
        expected -= 0.1 * g / (acc.sqrt() + 1e-8)[:, None]
    torch.testing.assert_close(ws, expected)
    torch.testing.assert_close(wd, expected)
    torch.testing.assert_close(acc_s, acc)
    torch.testing.assert_close(acc_d, acc)
    assert torch.equal(ws[[0, 2, 4]], w0[[0, 2, 4]])  # untouched rows keep their values
    with pytest.raises(ValueError):
        RowWiseAdagrad([torch.nn.Parameter(w0.clone())], lr=0.0)


def make_model(splits, seed=0):
    seed_everything(seed)
    table = build_table("full", splits.cardinalities, 8, seed=seed)
    return build_model("dcnv2", table, 0, cross_layers=1, deep=[16])


@pytest.mark.parametrize("table_optimizer,name", [("sparse_adam", "Adam+SparseAdam"),
                                                  ("rowwise_adagrad", "Adam+RowWiseAdagrad")])
def test_trainer_with_a_sparse_table_optimizer_learns_and_resumes_exactly(tmp_path, table_optimizer, name):
    splits, _ = synth_splits(rows=2000)
    sig = {"fields": splits.field_names}

    def cfg(epochs, resume=False):
        return TrainerConfig(epochs=epochs, batch_size=200, lr=0.01, table_lr=0.05, patience=10, progress=False,
                             resume=resume, table_optimizer=table_optimizer)

    straight = Trainer(make_model(splits), cfg(3), seed=5, output_dir=tmp_path / "a", signature=sig)
    assert isinstance(straight.optimizer, OptimizerSet) and straight.optimizer.name == name
    assert straight.model.table.sparse_grad
    before = straight.evaluate(splits.val)["auc"]
    out = straight.fit(splits.train, splits.val)
    assert out["best_val_auc"] > before + 0.1
    first = Trainer(make_model(splits), cfg(2), seed=5, output_dir=tmp_path / "b", signature=sig)
    first.fit(splits.train, splits.val)
    state = json.loads((tmp_path / "b" / "checkpoints" / "epoch-0002" / "state.json").read_text())
    assert state["optimizer"]["class"] == name
    torch.manual_seed(999)
    second = Trainer(make_model(splits, seed=77), cfg(3, resume=True), seed=5, output_dir=tmp_path / "b",
                     signature=sig)
    second.fit(splits.train, splits.val)
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint written with one optimizer setup is not resumed with another
    dense = Trainer(make_model(splits), TrainerConfig(epochs=3, progress=False, resume=True), seed=5,
                    output_dir=tmp_path / "b", signature=sig)
    with pytest.raises(ConfigError, match="checkpoint optimizer"):
        dense.fit(splits.train, splits.val)


def test_optimizer_set_state_dict_round_trip():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 2)), torch.nn.Parameter(torch.randn(6, 2))
    opt = OptimizerSet([torch.optim.Adam([a], lr=0.1), RowWiseAdagrad([b], lr=0.1)])
    (a.sum() + b.pow(2).sum()).backward()
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1] and [g["optimizer"] for g in sd["param_groups"]] == [0, 1]
    other = OptimizerSet([torch.optim.Adam([a], lr=0.5), RowWiseAdagrad([b], lr=0.5)])
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.1 and torch.equal(other.optimizers[1].state[b]["sum"],
                                                              opt.optimizers[1].state[b]["sum"])
    with pytest.raises(ValueError):
        OptimizerSet([torch.optim.Adam([a])]).load_state_dict(sd)


@pytest.mark.parametrize("overrides,message", [
    (["table.method=full", "trainer.table_optimizer=lazy_adam"], "table_optimizer must be null or one of"),
    (["table.method=full", "trainer.table_optimizer=sparse_adam", "trainer.grad_clip=1.0"], "grad_clip"),
])
def test_table_optimizer_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw=BASE, overrides=overrides)


def test_a_method_without_row_gathers_is_refused_clearly():
    splits, _ = synth_splits(rows=500)
    seed_everything(0)
    table = build_table("tt_rec", splits.cardinalities, 8, 0.5)
    model = build_model("dcnv2", table, 0, cross_layers=1, deep=[8])
    with pytest.raises(ConfigError, match="table_optimizer=sparse_adam.*tt_rec.*cannot train with sparse"):
        Trainer(model, TrainerConfig(table_optimizer="sparse_adam", progress=False))
    assert not np.isnan(Trainer(model, TrainerConfig(progress=False)).evaluate(splits.val)["auc"])
