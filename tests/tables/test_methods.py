"""Every table method: shape, budget, gradient flow, determinism, bad input, and the formula
each one implements, checked against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedx.tables.base import Budget, TableConfigError, TableInputError
from embedx.tables.hashing import hash_buckets as torch_hash
from embedx.tables.methods import (METHODS, ALPTTable, HashTable, Int8Table, Int16Table, MDETable, QRTable,
                                   RobeTable, TTRecTable)
from indexing.hashing import hash_buckets as np_hash

DIM = 16
CARDS = [3, 7, 50, 300, 1000, 20000]
CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
          5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]

# (method, compression rate, hyperparameters): every method and the variants worth testing
CASES = [
    ("full", 1.0, {}),
    ("hash", 0.1, {}),
    ("hash", 0.1, {"size_exponent": 0.0}),
    ("hash_shared", 0.1, {}),
    ("qr", 0.1, {}),
    ("qr", 0.1, {"op": "add"}),
    ("qr", 0.1, {"op": "concat"}),
    ("tt_rec", 0.05, {}),
    ("dhe", 0.1, {"num_hashes": 16, "hidden_layers": 2}),
    ("dhe", 0.1, {"num_hashes": 16, "hidden_layers": 2, "distribution": "gaussian", "activation": "relu"}),
    ("robe", 0.1, {}),
    ("robe", 0.1, {"chunk_size": 5, "signed": False}),
    ("mde", 0.3, {}),
    ("int8", 0.25, {}),
    ("int16", 0.5, {}),
    ("alpt", 0.3125, {}),
    ("alpt", 0.5625, {"bits": 16}),
    ("unified", 0.1, {}),
    ("unified", 0.1, {"chunks": [1, 2, 4, 2, 1, 4], "num_tables": 2}),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in hp.items()) or 'default'}" for m, _, hp in CASES]


def build(method, rate, hp, cards=CARDS, seed=0):
    return METHODS[method](cards, DIM, Budget.from_rate(rate, cards, DIM), seed=seed, **hp)


def random_ids(cards, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c, (batch,), generator=g) for c in cards], dim=1)


def test_every_method_is_registered_under_its_name():
    assert sorted(METHODS) == sorted(["full", "hash", "hash_shared", "qr", "tt_rec", "dhe", "robe", "mde",
                                      "int8", "int16", "alpt", "unified"])
    assert all(cls.name == name for name, cls in METHODS.items())


# ----------------------------------------------------------------------------- shape
@pytest.mark.parametrize("method,rate,hp", CASES, ids=IDS)
def test_shape_and_multi_hot_mean_pooling(method, rate, hp):
    table = build(method, rate, hp).eval()
    ids = random_ids(CARDS, 32)
    with torch.no_grad():
        out = table(ids)
        assert out.shape == (32, len(CARDS), DIM) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        bag = torch.stack([ids, random_ids(CARDS, 32, seed=1), torch.full_like(ids, -1)], dim=2)
        bag[0, :, 1] = -1  # a bag with a single id
        pooled = table(bag)
        second = table(bag[:, :, 1].clamp(min=0))
    assert pooled.shape == (32, len(CARDS), DIM)
    expected = (out + second) / 2
    expected[0] = out[0]
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- budget
FIXED_FLOOR = {"full", "int8", "int16", "alpt"}  # no compression beyond their bit width


@pytest.mark.parametrize("rate", [0.1, 0.01, 0.001], ids=["10x", "100x", "1000x"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_budget_within_2_percent_or_floor_on_criteo(method, rate):
    cls = METHODS[method]
    budget = Budget.from_rate(rate, CRITEO, DIM)
    floor = cls.min_bytes(CRITEO, DIM)
    must_fit = method not in FIXED_FLOOR and not (method == "mde" and rate < 0.1)
    assert (budget.bytes >= floor) == must_fit, f"{method} floor {floor:,} vs budget {budget.bytes:,}"
    if must_fit:
        with torch.device("meta"):  # sized and counted without allocating gigabytes
            table = cls(CRITEO, DIM, budget)
        assert 0.98 * budget.bytes <= table.memory_bytes() <= budget.bytes
    else:
        with pytest.raises(TableConfigError, match=f"{floor:,}"):
            with torch.device("meta"):
                cls(CRITEO, DIM, budget)


@pytest.mark.parametrize("method,rate", [("full", 1.0), ("int8", 0.25), ("int16", 0.5), ("alpt", 0.3125)])
def test_fixed_ratio_methods_fill_their_own_ratio_exactly(method, rate):
    with torch.device("meta"):
        table = METHODS[method](CRITEO, DIM, Budget.from_rate(rate, CRITEO, DIM))
    assert table.memory_bytes() == Budget.from_rate(rate, CRITEO, DIM).bytes == METHODS[method].min_bytes(CRITEO, DIM)


def test_memory_bytes_match_hand_counts():
    n = sum(CARDS)
    assert build("full", 1.0, {}).memory_bytes() == n * DIM * 4
    t = build("hash", 0.1, {})
    assert t.memory_bytes() == sum(t.rows) * DIM * 4 + len(CARDS) * 16
    t = build("hash_shared", 0.1, {})
    assert t.memory_bytes() == t.num_rows * DIM * 4 + 16
    t = build("robe", 0.1, {})
    assert t.memory_bytes() == t.size * 4 + 2 * 16
    t = build("qr", 0.1, {})
    dense = sum(c for c, m in zip(CARDS, t.remainders) if m == 0)
    assert t.memory_bytes() == (sum(t.remainders) + sum(t.quotients) + dense) * DIM * 4
    t = build("int8", 0.25, {})
    assert (t.memory_bytes(), t.training_memory_bytes()) == (n * DIM, n * DIM * 4)
    t = build("int16", 0.5, {})
    assert (t.memory_bytes(), t.training_memory_bytes()) == (n * DIM * 2, n * DIM * 4)
    t = build("alpt", 0.3125, {})
    assert (t.memory_bytes(), t.training_memory_bytes()) == (n * (DIM + 4), n * (DIM * 4 + 4))
    t = build("dhe", 0.1, {"num_hashes": 32})
    h, k = t.width, 32
    assert t.memory_bytes() == 4 * ((k + 1) * h + 4 * (h + 1) * h + (h + 1) * DIM + 5 * 4 * h) + 16 * k
    t = build("mde", 0.3, {})
    assert t.memory_bytes() == 4 * sum(c * d + (d * DIM if d < DIM else 0) for c, d in zip(CARDS, t.dims))


@pytest.mark.parametrize("method,rate,hp", CASES, ids=IDS)
def test_below_floor_names_the_minimum(method, rate, hp):
    floor = METHODS[method].min_bytes(CARDS, DIM, **hp)
    with pytest.raises(TableConfigError, match=f"{floor:,} bytes"):
        METHODS[method](CARDS, DIM, Budget(floor - 1), **hp)
    METHODS[method](CARDS, DIM, Budget(floor), **hp)  # the floor itself is buildable


@pytest.mark.parametrize("method,hp", [
    ("qr", {"op": "divide"}), ("unified", {"chunks": 3}), ("unified", {"chunks": [1, 2]}),
    ("unified", {"num_tables": 0}), ("robe", {"chunk_size": 17}), ("robe", {"chunk_size": 0}),
    ("dhe", {"num_hashes": 33, "distribution": "gaussian"}), ("dhe", {"activation": "tanh"}),
    ("dhe", {"num_buckets": 2**32}), ("alpt", {"bits": 4}), ("int8", {"scale": 0.0}),
    ("alpt", {"init_step": -1.0}), ("mde", {"popularity": [0.1] * 5 + [-1.0]}), ("mde", {"alpha": -1}),
])
def test_bad_hyperparameters_are_refused(method, hp):
    with pytest.raises(TableConfigError):
        METHODS[method](CARDS, DIM, Budget.full(CARDS, DIM), **hp)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("method,rate,hp", CASES, ids=IDS)
def test_gradients_reach_every_parameter(method, rate, hp):
    table = build(method, rate, hp).train()
    ids = random_ids(CARDS, 256)
    out = table(ids)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    for name, p in table.named_parameters():
        if p.numel():  # an empty block (no plain fields) has nothing to learn
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("method,rate,hp", CASES, ids=IDS)
def test_same_seed_same_table_and_outputs(method, rate, hp):
    a, b, c = build(method, rate, hp, seed=3), build(method, rate, hp, seed=3), build(method, rate, hp, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    ids = random_ids(CARDS, 64)
    torch.testing.assert_close(a.train()(ids), b.train()(ids), rtol=0, atol=0)  # stochastic rounding too
    torch.testing.assert_close(a.eval()(ids), b.eval()(ids), rtol=0, atol=0)


def test_construction_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for method, rate, hp in CASES:
        build(method, rate, hp)
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- bad ids
@pytest.mark.parametrize("method", sorted(METHODS))
def test_bad_ids_raise_table_input_error(method):
    rate = {"full": 1.0, "int8": 0.25, "int16": 0.5, "alpt": 0.3125, "mde": 0.3}.get(method, 0.1)
    hp = {"num_hashes": 32} if method == "dhe" else {}
    table = build(method, rate, hp)
    ids = random_ids(CARDS, 4)
    bad = [ids.clone(), ids.clone(), ids.float(), ids[:, :-1], ids.numpy(), ids.to(torch.int16)]
    bad[0][1, 5] = CARDS[5]
    bad[1][2, 0] = -1
    for x in bad:
        with pytest.raises(TableInputError):
            table(x)
    bag = ids[:, :, None].repeat(1, 1, 2)
    bag[0, 0, 0] = -2
    with pytest.raises(TableInputError):
        table(bag)
    assert table(ids.to(torch.int32)).shape == (4, len(CARDS), DIM)


# ----------------------------------------------------------------------------- the formulas
def test_full_is_a_plain_lookup():
    t = build("full", 1.0, {})
    ids = random_ids(CARDS, 16)
    offsets = np.concatenate([[0], np.cumsum(CARDS)[:-1]])
    expected = t.weight.detach()[torch.from_numpy(ids.numpy() + offsets)]
    torch.testing.assert_close(t(ids).detach(), expected, rtol=0, atol=0)


def test_hash_allocates_rows_by_cardinality_and_collides_within_a_field():
    t = build("hash", 0.1, {})
    rows = np.array(t.rows)
    assert rows.sum() == (t.budget.bytes - 16 * len(CARDS)) // (4 * DIM)
    assert np.all(rows <= CARDS) and np.all(rows >= 1) and np.all(np.diff(rows) >= 0)
    # field 5: ids hashing to the same bucket share a row; the bucket is the numpy formula's
    f, x = 5, np.arange(CARDS[5])
    buckets = np_hash(x, t.hash_ab[f, 0].item(), t.hash_ab[f, 1].item(), rows[f])
    same = np.flatnonzero(buckets == buckets[0])[:2]
    assert len(same) == 2
    ids = torch.zeros((2, len(CARDS)), dtype=torch.long)
    ids[:, f] = torch.from_numpy(same)
    out = t(ids).detach()
    torch.testing.assert_close(out[0, f], out[1, f], rtol=0, atol=0)
    torch.testing.assert_close(out[0, f], t.weight.detach()[sum(t.rows[:f]) + buckets[0]], rtol=0, atol=0)


def test_hash_equal_shares_keep_small_fields_whole():
    t = build("hash", 0.02, {"size_exponent": 0.0})
    total = (t.budget.bytes - 16 * len(CARDS)) // (4 * DIM)
    assert sum(t.rows) == total and list(t.rows[:3]) == CARDS[:3]  # small fields collision-free
    assert max(t.rows[3:]) - min(t.rows[3:]) <= 1 and max(t.rows[3:]) < CARDS[3]  # the rest split equally
    proportional = build("hash", 0.02, {})
    assert proportional.rows[0] == 1 and proportional.rows[5] > t.rows[5]
    with pytest.raises(TableConfigError):
        build("hash", 0.1, {"size_exponent": 2})


def test_hash_with_the_full_budget_is_collision_free():
    # the full table plus the per-field hash constants, which are counted too
    t = HashTable(CARDS, DIM, Budget(Budget.full(CARDS, DIM).bytes + 16 * len(CARDS)))
    assert list(t.rows) == CARDS
    ids = random_ids(CARDS, 64)
    offsets = np.concatenate([[0], np.cumsum(CARDS)[:-1]])
    torch.testing.assert_close(t(ids), t.weight[torch.from_numpy(ids.numpy() + offsets)], rtol=0, atol=0)


def test_shared_hash_uses_one_table_for_all_fields():
    t = build("hash_shared", 0.1, {})
    ids = random_ids(CARDS, 8)
    g = ids.numpy() + np.concatenate([[0], np.cumsum(CARDS)[:-1]])
    rows = np_hash(g, t.hash_ab[0, 0].item(), t.hash_ab[0, 1].item(), t.num_rows)
    torch.testing.assert_close(t(ids), t.weight[torch.from_numpy(rows)], rtol=0, atol=0)


@pytest.mark.parametrize("op", ["mult", "add", "concat"])
def test_qr_composes_quotient_and_remainder_rows(op):
    t = build("qr", 0.1, {"op": op})
    f = 5
    m, c = t.remainders[f], CARDS[f]
    assert m >= math.ceil(math.sqrt(c)) and t.quotients[f] == math.ceil(c / m)
    x = np.arange(c)
    assert len(set(zip(x // m, x % m))) == c  # complementary partitions: a unique pair per id
    ids = torch.zeros((c, len(CARDS)), dtype=torch.long)
    ids[:, f] = torch.from_numpy(x)
    out = t(ids).detach()[:, f]
    q = t.quotient.detach()[sum(t.quotients[:f]) + x // m]
    r = t.remainder.detach()[sum(t.remainders[:f]) + x % m]
    expected = {"mult": q * r, "add": q + r, "concat": torch.cat([q, r], dim=1)}[op]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert t.remainders[0] == 0 or op == "concat"  # a 3-id field is cheaper kept plain


def test_qr_odd_dim_concat_and_all_fields_compressed():
    t = QRTable([100, 400], 7, Budget.from_rate(0.5, [100, 400], 7), op="concat")
    assert t.quotient.shape[1] == 3 and t.remainder.shape[1] == 4
    ids = random_ids([100, 400], 10)
    assert t(ids).shape == (10, 2, 7)


def test_tt_rec_rows_are_the_tensor_train_contraction():
    t = build("tt_rec", 0.05, {})
    f = 5
    assert t.ranks[f] > 0
    n1, n2, n3 = t.row_factors[f]
    assert n1 * n2 * n3 >= CARDS[f]
    g1, g2, g3 = (t.params[f"core{k}_{f}"].detach() for k in range(3))
    full = torch.einsum("iajr,krls,psqb->ikpjlq", g1, g2, g3).reshape(n1 * n2 * n3, DIM)
    ids = torch.zeros((CARDS[f], len(CARDS)), dtype=torch.long)
    ids[:, f] = torch.arange(CARDS[f])
    torch.testing.assert_close(t(ids).detach()[:, f], full[:CARDS[f]], rtol=1e-5, atol=1e-7)


def test_tt_rec_sampled_gaussian_init_matches_target_std():
    t = TTRecTable([200000], DIM, Budget.from_rate(0.01, [200000], DIM), init_std=0.05)
    ids = torch.arange(0, 200000, 7)[:, None]
    assert 0.035 < t(ids).std().item() < 0.065


def test_dhe_encoding_and_width():
    t = build("dhe", 0.1, {"num_hashes": 32})
    enc = t.encode(torch.arange(5000))
    assert enc.shape == (5000, 32) and enc.min() >= -1 and enc.max() <= 1
    assert abs(enc.mean().item()) < 0.02 and abs(enc.var().item() - 1 / 3) < 0.02  # U[-1, 1]
    g = build("dhe", 0.1, {"num_hashes": 32, "distribution": "gaussian"}).encode(torch.arange(5000))
    assert abs(g.mean().item()) < 0.02 and abs(g.std().item() - 1) < 0.02
    wider = build("dhe", 0.3, {"num_hashes": 32})
    assert wider.width > t.width  # a larger budget buys a wider network
    assert all(not isinstance(m, torch.nn.Embedding) for m in t.modules())  # no table at all


def test_robe_reads_circular_chunks_with_signs():
    t = RobeTable(CARDS, DIM, Budget.from_rate(0.001, CARDS, DIM), chunk_size=4)
    arr = t.array.detach().numpy()
    ids = random_ids(CARDS, 6)
    out = t(ids).detach().numpy()
    offsets = np.concatenate([[0], np.cumsum(CARDS)[:-1]])
    a, b = t.hash_ab[0].tolist()
    sa, sb = t.sign_ab[0].tolist()
    for i in range(6):
        for f in range(len(CARDS)):
            g = int(ids[i, f]) + offsets[f]
            for e in range(DIM):
                j, k = divmod(e, 4)
                start = int(np_hash(np.array([g * 4 + j]), a, b, t.size)[0])
                sign = 1 - 2 * int(np_hash(np.array([g * DIM + e]), sa, sb, 2)[0])
                assert out[i, f, e] == sign * arr[(start + k) % t.size]


def test_mde_dimensions_follow_the_power_law():
    t = build("mde", 0.3, {})
    assert list(t.dims) == sorted(t.dims, reverse=True)  # smaller (more popular) fields are wider
    assert t.dims[0] == DIM and t.dims[-1] < DIM
    assert "proj_0" not in t.params and t.params[f"proj_{len(CARDS) - 1}"].shape == (t.dims[-1], DIM)
    small = build("mde", 0.15, {})
    assert sum(small.dims) < sum(t.dims)
    # popularity overrides cardinality: make the largest field the most popular
    pop = [1e-6] * (len(CARDS) - 1) + [1.0]
    p = MDETable(CARDS, DIM, Budget.from_rate(0.3, CARDS, DIM), popularity=pop)
    assert p.dims[-1] == max(p.dims)


def test_unified_multiplexes_all_fields_into_one_table():
    t = build("unified", 0.1, {})
    assert len(t.weights) == 1
    weight = next(iter(t.weights.values())).detach()
    ids = random_ids(CARDS, 8)
    out = t(ids).detach()
    for f in range(len(CARDS)):
        a, b = t.hash_w16[f].tolist()
        rows = np_hash(ids[:, f].numpy(), a, b, weight.shape[0])
        torch.testing.assert_close(out[:, f], weight[torch.from_numpy(rows)], rtol=0, atol=0)


def test_unified_chunks_concatenate_per_chunk_hashes_round_robin():
    chunks = [1, 2, 4, 2, 1, 4]
    t = build("unified", 0.1, {"chunks": chunks, "num_tables": 2})
    ids = random_ids(CARDS, 8)
    out = t(ids).detach()
    for g in t.groups:
        w, c, rows = g["width"], g["chunks"], g["table_rows"]
        weight = t.weights[f"w{w}"].detach()
        consts = getattr(t, f"hash_w{w}")
        for i, f in enumerate(g["fields"]):
            assert chunks[f] == c and w * c == DIM
            for j in range(c):
                pair = i * c + j
                table = pair % len(rows)  # round-robin over the group's tables
                a, b = consts[pair].tolist()
                r = np_hash(ids[:, f].numpy(), a, b, rows[table]) + sum(rows[:table])
                torch.testing.assert_close(out[:, f, j * w:(j + 1) * w], weight[torch.from_numpy(r)])


def test_int8_rounds_to_the_scale_grid_and_is_unbiased_in_training():
    t = Int8Table([5], 4, Budget.full([5], 4), scale=0.01, init_std=0.3)
    w = t.weight.detach()
    ids = torch.arange(5)[:, None]
    with torch.no_grad():
        ev = t.eval()(ids)[:, 0]
    codes = ev / 0.01
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    inside = w.abs() < 1.27
    assert torch.all((ev - w).abs()[inside] <= 0.005 + 1e-6)
    assert torch.all(ev.abs() <= 1.28 + 1e-6)  # clipped to the int8 range
    t.train()
    with torch.no_grad():
        mean = torch.stack([t(ids)[:, 0] for _ in range(2000)]).mean(0)
    torch.testing.assert_close(mean[inside], w[inside], rtol=0, atol=0.0015)  # E[SR(w)] = w


def test_int16_uses_its_range_for_256x_finer_steps_than_int8():
    cards = [50, 300]
    w8, w16 = Int8Table(cards, 8, Budget.full(cards, 8), seed=1), Int16Table(cards, 8, Budget.full(cards, 8), seed=1)
    assert torch.equal(w8.weight, w16.weight) and w16.scale == w8.scale / 256 == pytest.approx(0.01 / 256)
    assert w8.qmin * w8.scale == w16.qmin * w16.scale == pytest.approx(-1.28)  # the same clipping range
    ids = random_ids(cards, 256)
    with torch.no_grad():
        full, e8, e16 = w8.weight[ids + w8.offsets], w8.eval()(ids), w16.eval()(ids)
    assert not torch.equal(e8, e16)
    err8, err16 = (e8 - full).abs().max(), (e16 - full).abs().max()
    assert err8 <= 0.005 + 1e-7 and err16 <= 0.005 / 256 + 1e-7 and err16 < err8 / 100
    assert Int16Table(cards, 8, Budget.full(cards, 8), scale=0.01).scale == pytest.approx(0.01)  # configurable
    exported = w16.export()
    assert exported.config["scale"] == w16.scale and exported.arrays["codes"].dtype == np.int16


def test_alpt_stores_low_precision_rows_and_learns_the_step_by_lsq():
    t = ALPTTable([4], 8, Budget.full([4], 8), init_step=0.02, init_std=0.1)
    t.train()
    ids = torch.tensor([[1], [3], [1]])
    before = t.weight.detach().clone()
    out = t(ids)
    out.sum().backward()
    step = t.step.detach()
    # the rows read are written back on their step grid; the others are untouched
    for r in (1, 3):
        code = t.weight.detach()[r] / step[r]
        torch.testing.assert_close(code, code.round(), rtol=0, atol=1e-4)
        torch.testing.assert_close(out[ids[:, 0] == r][0, 0].detach(), t.weight.detach()[r], rtol=0, atol=1e-7)
    torch.testing.assert_close(t.weight.detach()[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    # LSQ: d w_hat / d step = code - w / step inside the range, times g = 1/sqrt(dim * 127)
    g = 1 / math.sqrt(8 * 127)
    for r, count in ((1, 2), (3, 1)):
        v = before[r] / step[r]
        code = (t.weight.detach()[r] / step[r]).round()
        expected = count * g * (code - v).sum()
        torch.testing.assert_close(t.step.grad[r, 0], expected, rtol=1e-4, atol=1e-7)
    assert t.step.grad[[0, 2]].abs().sum() == 0
    assert torch.all(t.weight.grad[1] == 2) and torch.all(t.weight.grad[3] == 1)  # straight-through


def test_hash_twins_agree_bit_for_bit():
    rng = np.random.default_rng(0)
    keys = np.concatenate([rng.integers(0, 2**63 - 1, 20000), np.arange(1000),
                           [0, 2**63 - 1, -1, -(2**63)]]).astype(np.int64)
    from indexing.hashing import hash_constants
    consts = hash_constants(7, 4)
    assert np.all(consts[:, 0] & 1)  # a is odd
    assert np.array_equal(consts, hash_constants(7, 4)) and not np.array_equal(consts, hash_constants(8, 4))
    for (a, b), m in zip(consts, [2, 1000, 2**31, 12345]):
        expected = np_hash(keys, a, b, m)
        got = torch_hash(torch.from_numpy(keys), torch.tensor(a), torch.tensor(b), m).numpy()
        assert np.array_equal(expected, got)
        assert expected.min() >= 0 and expected.max() < m
    counts = np.bincount(np_hash(np.arange(100000), consts[0, 0], consts[0, 1], 10), minlength=10)
    assert counts.min() > 9500 and counts.max() < 10500  # roughly uniform on consecutive ids
