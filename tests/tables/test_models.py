"""CTR models over a tiny table: shapes, gradient flow, and each model's interaction term
against a brute-force computation."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from embedx.tables.base import CompressedTable, tensor_bytes
from embedx.tables.config import ConfigError
from embedx.tables.models import DLRM, MODELS, CrossLayer, DCNv2, DeepFM, WideDeep, build_model

CARDS = [7, 5, 4]


class TinyTable(CompressedTable):
    """A plain per-id table, only for these tests."""

    name = "tiny_test_table"

    def __init__(self, cardinalities, dim, budget=None):
        super().__init__(cardinalities, dim, budget)
        self.weight = nn.Parameter(torch.randn(self.total_ids, dim, generator=torch.Generator().manual_seed(0)))

    def embed(self, fields, ids):
        return self.weight[self.global_ids(fields, ids)]

    def memory_bytes(self):
        return tensor_bytes(self.weight)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ids_2d(b=6):
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randint(0, c, (b,), generator=g) for c in CARDS], dim=1)


def ids_3d(b=6):
    ids = torch.full((b, len(CARDS), 3), -1, dtype=torch.long)
    ids[:, :, 0] = ids_2d(b)
    ids[:, 2, 1] = (ids[:, 2, 0] + 1) % CARDS[2]  # a two-id bag in the last field
    return ids


CASES = [(name, nd, layout) for name in sorted(MODELS) for nd in (0, 3) for layout in ("2d", "3d")]


@pytest.mark.parametrize("name,num_dense,layout", CASES)
def test_forward_backward_every_model(name, num_dense, layout):
    torch.manual_seed(0)
    table = TinyTable(CARDS, 8)
    params = {"dlrm": dict(bottom=[16], top=[16])}.get(name, {"deep": [16]})
    model = build_model(name, table, num_dense, **params)
    ids = ids_2d() if layout == "2d" else ids_3d()
    dense = torch.randn(6, num_dense) if num_dense else None
    out = model(ids, dense)
    assert out.shape == (6,) and torch.isfinite(out).all()
    nn.functional.binary_cross_entropy_with_logits(out, torch.ones(6)).backward()
    assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head_parameters())
    # only looked-up rows get gradient
    used = torch.zeros(table.total_ids, dtype=torch.bool)
    valid = ids >= 0
    fields = torch.arange(len(CARDS)).view(1, -1, *([1] * (ids.dim() - 2))).expand_as(ids)
    used[(ids + table.offsets[fields])[valid]] = True
    assert (table.weight.grad[~used] == 0).all()


def test_dense_features_are_checked():
    m = build_model("dcnv2", TinyTable(CARDS, 4), 3, deep=[8])
    with pytest.raises(ConfigError, match="expects dense"):
        m(ids_2d(), None)
    with pytest.raises(ConfigError, match="expects dense"):
        m(ids_2d(), torch.randn(6, 2))
    m0 = build_model("dcnv2", TinyTable(CARDS, 4), 0, deep=[8])
    with pytest.raises(ConfigError, match="without dense"):
        m0(ids_2d(), torch.randn(6, 2))


def test_build_model_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("xdeepfm", TinyTable(CARDS, 4))
    with pytest.raises(ConfigError, match="'depth'"):
        build_model("dcnv2", TinyTable(CARDS, 4), depth=3)
    with pytest.raises(ConfigError, match="structure"):
        build_model("dcnv2", TinyTable(CARDS, 4), structure="mixed")
    with pytest.raises(ConfigError, match="dim >= 2"):
        build_model("deepfm", TinyTable(CARDS, 1))
    with pytest.raises(ConfigError, match="CompressedTable"):
        DLRM(nn.Embedding(3, 4))


def test_dlrm_interactions_are_pairwise_dots():
    torch.manual_seed(0)
    table = TinyTable(CARDS, 4)
    model = DLRM(table, num_dense=2, bottom=[8], top=[8])
    seen = {}
    model.top.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    ids, dense = ids_2d(), torch.randn(6, 2)
    model(ids, dense)
    x = model.bottom(dense)
    vecs = [x] + [table(ids)[:, f] for f in range(len(CARDS))]
    dots = [(vecs[i] * vecs[j]).sum(1) for i, j in itertools.combinations(range(len(vecs)), 2)]
    expected = torch.cat([x, torch.stack(dots, 1)], 1)
    assert seen["x"].shape == (6, 4 + 6)
    assert torch.allclose(seen["x"], expected, atol=1e-5)
    with_self = DLRM(table, num_dense=0, top=[8], interaction_self=True)
    assert with_self.top[0].in_features == 6  # 3 fields: 3 pairs + 3 self-dots


def test_dcnv2_cross_layer_formula_and_low_rank():
    torch.manual_seed(0)
    layer = CrossLayer(6)
    nn.init.normal_(layer.w.bias)
    x0, x = torch.randn(4, 6), torch.randn(4, 6)
    expected = x0 * (x @ layer.w.weight.T + layer.w.bias) + x
    assert torch.allclose(layer(x0, x), expected, atol=1e-6)
    low = CrossLayer(6, rank=2)
    u, v = low.w.weight, low.v.weight  # (6, 2), (2, 6)
    assert torch.allclose(low(x0, x), x0 * ((x @ v.T) @ u.T + low.w.bias) + x, atol=1e-6)
    assert sum(p.numel() for p in low.parameters()) == 2 * 6 * 2 + 6
    table = TinyTable(CARDS, 4)
    stacked = DCNv2(table, cross_layers=2, deep=[16, 8])
    parallel = DCNv2(table, cross_layers=2, deep=[16, 8], structure="parallel")
    assert stacked.out.in_features == 8 and parallel.out.in_features == 12 + 8
    assert DCNv2(table, cross_layers=1, deep=[]).out.in_features == 12


def test_dcnv2_without_cross_layers_is_its_deep_part():
    torch.manual_seed(0)
    table = TinyTable(CARDS, 4)
    m = DCNv2(table, cross_layers=0, deep=[8])
    ids = ids_2d()
    assert torch.allclose(m(ids), m.out(m.deep(table(ids).flatten(1))).squeeze(-1))


def test_deepfm_fm_part_matches_brute_force():
    torch.manual_seed(0)
    table = TinyTable(CARDS, 5)
    model = DeepFM(table, num_dense=0, deep=[8])
    last = model.deep[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)  # silence the DNN: the output is y_FM alone
    with torch.no_grad():
        model.bias.fill_(0.3)
    ids = ids_2d()
    e = table(ids)
    w, v = e[..., 0], e[..., 1:]
    pairs = sum((v[:, i] * v[:, j]).sum(1) for i, j in itertools.combinations(range(len(CARDS)), 2))
    assert torch.allclose(model(ids), 0.3 + w.sum(1) + pairs, atol=1e-5)


def test_wide_deep_wide_part_is_linear_in_the_embeddings():
    torch.manual_seed(0)
    table = TinyTable(CARDS, 4)
    model = WideDeep(table, num_dense=2, deep=[8])
    nn.init.zeros_(model.deep[-1].weight)
    nn.init.zeros_(model.deep[-1].bias)
    ids, dense = ids_2d(), torch.randn(6, 2)
    x = torch.cat([table(ids).flatten(1), dense], 1)
    assert model.wide.in_features == 3 * 4 + 2
    assert torch.allclose(model(ids, dense), (x @ model.wide.weight.T + model.wide.bias).squeeze(-1), atol=1e-6)
