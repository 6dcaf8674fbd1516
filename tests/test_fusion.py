"""Hybrid fusion: reciprocal rank and normalised linear, against hand computations."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest

from indexing.errors import InvalidInputError
from indexing.fusion import fuse_results, linear_fusion, reciprocal_rank_fusion
from indexing.results import SearchResults

L1 = [("a", 10.0), ("b", 6.0), ("c", 2.0)]
L2 = [("b", 0.9), ("d", 0.5), ("a", 0.1)]


def _ids(fused):
    return [d for d, _ in fused]


# ---------------------------------------------------------------------------- RRF
def test_rrf_hand_computed():
    fused = reciprocal_rank_fusion([L1, L2], k=60)
    expected = {"a": 1 / 61 + 1 / 63, "b": 1 / 62 + 1 / 61, "c": 1 / 63, "d": 1 / 62}
    assert _ids(fused) == ["b", "a", "d", "c"]
    for d, s in fused:
        assert s == pytest.approx(expected[d], abs=1e-15)


def test_rrf_weights_change_the_order():
    fused = reciprocal_rank_fusion([L1, L2], k=60, weights=[2, 1])
    expected = {"a": 2 / 61 + 1 / 63, "b": 2 / 62 + 1 / 61, "c": 2 / 63, "d": 1 / 62}
    assert _ids(fused) == ["a", "b", "c", "d"]
    assert dict(fused) == pytest.approx(expected)
    assert reciprocal_rank_fusion([L1, L2], k=60, weights=[0, 1]) [:1] == [("b", pytest.approx(1 / 61))]


def test_rrf_small_k_and_bare_ids():
    by_pairs = reciprocal_rank_fusion([L1, L2], k=0)
    by_ids = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], k=0)
    assert by_pairs == by_ids
    assert dict(by_ids) == pytest.approx({"a": 1 + 1 / 3, "b": 1 / 2 + 1, "c": 1 / 3, "d": 1 / 2})
    assert _ids(by_ids) == ["b", "a", "d", "c"]


def test_rrf_k_is_required_and_checked():
    with pytest.raises(TypeError):
        reciprocal_rank_fusion([L1, L2])           # no hidden default
    for bad in (-1, float("nan"), float("inf"), True, "60", None):
        with pytest.raises(InvalidInputError, match="k must be"):
            reciprocal_rank_fusion([L1, L2], k=bad)
    assert reciprocal_rank_fusion([L1], k=60.0) == reciprocal_rank_fusion([L1], k=60)


def test_rrf_ties_break_by_first_appearance():
    assert reciprocal_rank_fusion([["x"], ["y"]], k=60) == [("x", 1 / 61), ("y", 1 / 61)]
    assert _ids(reciprocal_rank_fusion([["y"], ["x"]], k=60)) == ["y", "x"]
    assert _ids(reciprocal_rank_fusion([["p", "q"], ["q", "p"]], k=60)) == ["p", "q"]
    # rank 1 of every list comes before rank 2 of any list
    assert _ids(reciprocal_rank_fusion([["m", "z"], ["a", "n"]], k=60)) == ["m", "a", "z", "n"]


def test_rrf_three_way_tie_is_exact():
    """Same ranks in a different order: bit-identical scores, so the tie rule decides, not float noise."""
    lists = [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for k in (60, 1, 0.3, 7.77):
        fused = reciprocal_rank_fusion(lists, k=k, weights=[0.1, 0.7, 0.2])
        lists_w = reciprocal_rank_fusion(lists, k=k)
        assert _ids(lists_w) == ["a", "b", "c"]
        assert len({s for _, s in lists_w}) == 1
        assert len({s for _, s in fused}) == 3     # with weights they differ


def test_rrf_limit_and_empty_lists():
    assert _ids(reciprocal_rank_fusion([L1, L2], k=60, limit=2)) == ["b", "a"]
    assert reciprocal_rank_fusion([[], []], k=60) == []
    assert reciprocal_rank_fusion([L1, []], k=60) == [("a", 1 / 61), ("b", 1 / 62), ("c", 1 / 63)]
    for bad in (0, -3, 1.5, True):
        with pytest.raises(InvalidInputError, match="limit"):
            reciprocal_rank_fusion([L1], k=60, limit=bad)


@pytest.mark.parametrize("lists, kwargs, message", [
    ([], {}, "nothing to fuse"),
    ("ab", {}, "sequence of ranked lists"),
    ([["a", "b", "a"]], {}, "ranks id 'a' more than once"),
    ([[("a", 1.0), ("a", 0.5)]], {}, "more than once"),
    ([[("a", 1.0, 2)]], {}, r"\(id, score\) pairs"),
    ([[("", 1.0)]], {}, "non-empty string"),
    ([[""]], {}, "non-empty strings"),
    ([L1, L2], {"weights": [1.0]}, "got 1 weights for 2 lists"),
    ([L1, L2], {"weights": [1.0, -1.0]}, ">= 0"),
    ([L1, L2], {"weights": [1.0, float("nan")]}, "finite"),
])
def test_rrf_bad_input(lists, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        reciprocal_rank_fusion(lists, k=60, **kwargs)


def _reference_rrf(lists, k, weights):
    """Plain-Python RRF with the documented tie rule, for comparison."""
    score, first = {}, {}
    for li, lst in enumerate(lists):
        for r, d in enumerate(lst, 1):
            score[d] = score.get(d, 0.0) + weights[li] / (k + r)
            first[d] = min(first.get(d, (math.inf,)), (r, li))
    return sorted(score.items(), key=lambda x: (-x[1], first[x[0]]))


def test_rrf_matches_a_plain_python_reference():
    rng = random.Random(7)
    pool = [f"d{i}" for i in range(200)]
    for _ in range(30):
        lists = [rng.sample(pool, rng.randint(0, 60)) for _ in range(rng.randint(1, 4))]
        weights = [rng.uniform(0.1, 2) for _ in lists]
        k = rng.choice([0, 1, 10, 60])
        got = reciprocal_rank_fusion(lists, k=k, weights=weights)
        want = _reference_rrf(lists, k, weights)
        assert _ids(got) == _ids(want)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-12)


# ---------------------------------------------------------------------------- linear
def test_linear_minmax_hand_computed():
    fused = linear_fusion([L1, L2], alpha=0.7)
    # L1 -> a 1, b .5, c 0 ; L2 -> b 1, d .5, a 0 ; missing -> 0
    assert _ids(fused) == ["a", "b", "d", "c"]
    assert dict(fused) == pytest.approx({"a": 0.7, "b": 0.7 * 0.5 + 0.3, "d": 0.3 * 0.5, "c": 0.0})


def test_linear_zscore_hand_computed():
    fused = linear_fusion([L1, L2], alpha=0.5, norm="zscore")
    z = math.sqrt(1.5)        # |z| of the ends of three evenly spaced scores
    # L1 -> a +z, b 0, c -z ; L2 -> b +z, d 0, a -z ; missing -> the list's minimum, -z
    assert _ids(fused) == ["b", "a", "d", "c"]
    assert dict(fused) == pytest.approx({"b": 0.5 * z, "a": 0.0, "d": -0.5 * z, "c": -z}, abs=1e-12)


def test_linear_alpha_extremes():
    only_first = linear_fusion([L1, L2], alpha=1.0)
    # c (rank 3 of list 0) and d (rank 2 of list 1) tie at 0: d appears first
    assert only_first == [("a", 1.0), ("b", 0.5), ("d", 0.0), ("c", 0.0)]
    only_second = linear_fusion([L1, L2], alpha=0)
    assert _ids(only_second)[:3] == ["b", "d", "a"]


def test_linear_constant_scores_do_not_divide_by_zero():
    flat = [("a", 5.0), ("b", 5.0)]
    other = [("b", 1.0), ("c", 3.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for norm in ("minmax", "zscore"):
            fused = linear_fusion([flat, other], alpha=0.5, norm=norm)
            assert all(math.isfinite(s) for _, s in fused)
        assert linear_fusion([flat, other], alpha=0.5) == [("c", 0.5), ("a", 0.0), ("b", 0.0)]
        assert linear_fusion([flat], weights=[1.0], norm="zscore") == [("a", 0.0), ("b", 0.0)]
        assert linear_fusion([[("x", 2.0)], []], alpha=0.5) == [("x", 0.0)]


def test_linear_weights_for_three_lists():
    l3 = [("c", 100.0), ("e", 50.0), ("a", 0.0)]
    fused = linear_fusion([L1, L2, l3], weights=[1, 2, 3])
    # minmax: L1 a1 b.5 c0 ; L2 b1 d.5 a0 ; L3 c1 e.5 a0 ; missing 0
    expected = {"a": 1.0, "b": 0.5 + 2.0, "c": 3.0, "d": 1.0, "e": 1.5}
    assert dict(fused) == pytest.approx(expected)
    assert _ids(fused) == ["c", "b", "e", "a", "d"]     # a and d tie at 1.0: a appears first
    by_weights, by_alpha = linear_fusion([L1, L2], weights=[0.7, 0.3]), linear_fusion([L1, L2], alpha=0.7)
    assert _ids(by_weights) == _ids(by_alpha) and dict(by_weights) == pytest.approx(dict(by_alpha))


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": -0.1}, r"alpha must be a number in \[0, 1\]"),
    ({"alpha": 1.01}, r"alpha must be a number in \[0, 1\]"),
    ({"alpha": float("nan")}, r"alpha must be"),
    ({"alpha": True}, r"alpha must be"),
    ({}, "exactly one of alpha"),
    ({"alpha": 0.5, "weights": [1, 1]}, "exactly one of alpha"),
    ({"alpha": 0.5, "norm": "l2"}, "norm must be one of"),
    ({"weights": [1]}, "got 1 weights for 2 lists"),
])
def test_linear_bad_arguments(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        linear_fusion([L1, L2], **kwargs)


def test_linear_bad_lists():
    with pytest.raises(InvalidInputError, match="exactly two lists"):
        linear_fusion([L1, L2, L1], alpha=0.5)
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        linear_fusion([[("a", float("-inf"))], L2], alpha=0.5)
    with pytest.raises(InvalidInputError, match="scores must be numbers"):
        linear_fusion([[("a", "high")], L2], alpha=0.5)
    with pytest.raises(InvalidInputError, match=r"\(id, score\) pairs"):
        linear_fusion([["a", "b"], L2], alpha=0.5)


def _reference_linear(lists, weights, norm):
    normed = []
    for lst in lists:
        s = np.array([x for _, x in lst], dtype=float)
        if norm == "minmax":
            n = (s - s.min()) / (s.max() - s.min()) if s.size and s.max() > s.min() else np.zeros_like(s)
        else:
            n = (s - s.mean()) / s.std() if s.size and s.std() > 0 else np.zeros_like(s)
        normed.append(({d: v for (d, _), v in zip(lst, n)}, n.min() if n.size else 0.0))
    docs = {d for lst in lists for d, _ in lst}
    first = {}
    for li, lst in enumerate(lists):
        for r, (d, _) in enumerate(lst, 1):
            first[d] = min(first.get(d, (math.inf,)), (r, li))
    score = {d: sum(w * m.get(d, lo) for w, (m, lo) in zip(weights, normed)) for d in docs}
    return sorted(score.items(), key=lambda x: (-x[1], first[x[0]]))


@pytest.mark.parametrize("norm", ["minmax", "zscore"])
def test_linear_matches_a_plain_python_reference(norm):
    rng = random.Random(11)
    pool = [f"d{i}" for i in range(150)]
    for _ in range(30):
        lists = [[(d, rng.gauss(0, 5)) for d in rng.sample(pool, rng.randint(1, 50))]
                 for _ in range(rng.randint(1, 4))]
        weights = [rng.uniform(0, 1) for _ in lists]
        got = linear_fusion(lists, weights=weights, norm=norm)
        want = _reference_linear(lists, weights, norm)
        assert _ids(got) == _ids(want)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- batches
def _results(rows, scores, table):
    return SearchResults.from_rows(np.array(rows), np.array(scores, dtype=np.float32), np.array(table))


def test_fuse_results_per_query():
    table = ["a", "b", "c", "d"]
    dense = _results([[0, 1, 2], [3, -1, -1]], [[0.9, 0.5, 0.1], [0.7, 0, 0]], table)
    sparse = _results([[1, 3, 0], [3, 2, -1]], [[12.0, 8.0, 1.0], [4.0, 2.0, 0]], table)
    fused = fuse_results(dense, sparse, method="rrf", k=60)
    assert len(fused) == 2
    assert fused[0] == reciprocal_rank_fusion([dense.hits(0), sparse.hits(0)], k=60)
    assert _ids(fused[0]) == ["b", "a", "d", "c"]
    assert fused[1] == [("d", 2 / 61), ("c", 1 / 62)]      # padding is not a document
    lin = fuse_results(dense, sparse, method="linear", alpha=0.5, norm="zscore")
    assert lin[1] == linear_fusion([dense.hits(1), sparse.hits(1)], alpha=0.5, norm="zscore")
    three = fuse_results(dense, sparse, dense, method="rrf", k=10, limit=1)
    assert three[0] == [("a", pytest.approx(2 / 11 + 1 / 13))]


def test_fuse_results_errors():
    table = ["a", "b"]
    one = _results([[0, 1]], [[1.0, 0.5]], table)
    two = _results([[0, 1], [1, 0]], [[1.0, 0.5], [1.0, 0.5]], table)
    with pytest.raises(InvalidInputError, match="different numbers of queries"):
        fuse_results(one, two, method="rrf", k=60)
    with pytest.raises(InvalidInputError, match="unknown fusion method"):
        fuse_results(one, one, method="borda", k=60)
    with pytest.raises(TypeError):
        fuse_results(one, one, method="rrf")       # k is still required
