"""IR metrics: a hand-computed example, an independent plain-Python implementation on random
runs, and (when Pyserini's jar is installed) trec_eval itself, all with trec_eval ``-c``
semantics: judged queries missing from the run count 0, unjudged run queries are ignored,
ties are ranked by doc id descending."""

import copy
import importlib.util
import math
import platform
import random
import stat
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from embedx.data import write_qrels_trec, write_run
from embedx.eval import DEFAULT_METRICS, EvaluationError, evaluate, parse_metric

# ----------------------------------------------------------------------------- hand example
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1},  # 3 relevant (d1 graded 2); d4 is never retrieved
    "q2": {"d5": 1, "d6": 2},
    "q3": {"d7": 1},                              # absent from the run
    "q4": {"d10": 0},                             # judged, but nothing relevant
}
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d9": 0.7, "d2": 0.6},  # ranks: d3 d1 d9 d2
    "q2": {"d5": 0.5, "d8": 0.5, "d6": 0.1},             # d5/d8 tie -> "d8" > "d5" ranks first: d8 d5 d6
    "q4": {"d10": 1.0},
    "q5": {"d1": 1.0},                                   # no judgements: ignored
}


def test_hand_computed_example():
    log2 = math.log2
    # q1: gains by rank 0, 2, 0, 1 -> DCG = 2/log2(3) + 1/log2(5); ideal gains 2, 1, 1
    ndcg_q1 = (2 / log2(3) + 1 / log2(5)) / (2 / log2(2) + 1 / log2(3) + 1 / log2(4))
    # q2: gains by rank 0, 1, 2 -> DCG = 1/log2(3) + 2/log2(4); ideal gains 2, 1
    ndcg_q2 = (1 / log2(3) + 2 / log2(4)) / (2 / log2(2) + 1 / log2(3))
    expected = {
        "ndcg@10": (ndcg_q1 + ndcg_q2 + 0 + 0) / 4,
        "recall@100": (2 / 3 + 2 / 2 + 0 + 0) / 4,        # q1 finds d1, d2 of d1, d2, d4
        "mrr@10": (1 / 2 + 1 / 2 + 0 + 0) / 4,            # first relevant at rank 2 in q1 and q2
        # AP = mean over ALL relevant docs of precision at their ranks (missing d4 adds 0)
        "map": ((1 / 2 + 2 / 4) / 3 + (1 / 2 + 2 / 3) / 2 + 0 + 0) / 4,
        "precision@2": (1 / 2 + 1 / 2 + 0 + 0) / 4,
        "recall@2": (1 / 3 + 1 / 2 + 0 + 0) / 4,
        "mrr@1": 0.0,                                      # no query has a relevant doc at rank 1
    }
    got = evaluate(QRELS, RUN, list(expected))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["ndcg@10"] == pytest.approx(0.2901230, abs=1e-7)  # the same, as a number
    assert got["map"] == pytest.approx(11 / 48)


def test_per_query_scores_cover_the_judged_queries():
    per = evaluate(QRELS, RUN, ("ndcg@10", "mrr@10"), per_query=True)
    assert set(per) == {"ndcg@10", "mrr@10"}
    assert list(per["mrr@10"]) == ["q1", "q2", "q3", "q4"]  # q5 (unjudged) ignored
    assert per["mrr@10"] == {"q1": 0.5, "q2": 0.5, "q3": 0.0, "q4": 0.0}
    means = evaluate(QRELS, RUN, ("ndcg@10",))
    assert np.mean(list(per["ndcg@10"].values())) == pytest.approx(means["ndcg@10"])


def test_ties_follow_trec_eval_not_dict_order():
    qrels = {"q": {"a": 1}}
    # all tied: trec_eval ranks c, b, a (doc id descending) whatever the insertion order
    for run in ({"q": {"a": 1.0, "b": 1.0, "c": 1.0}}, {"q": {"c": 1.0, "a": 1.0, "b": 1.0}}):
        assert evaluate(qrels, run, "mrr")["mrr"] == pytest.approx(1 / 3)
    # string order, not numeric: "9" > "10"
    assert evaluate({"q": {"10": 1}}, {"q": {"10": 0.0, "9": 0.0}}, "mrr")["mrr"] == pytest.approx(1 / 2)


def test_inputs_are_not_modified():
    q, r = copy.deepcopy(QRELS), copy.deepcopy(RUN)
    evaluate(q, r)
    assert q == QRELS and r == RUN


# ----------------------------------------------------------------------------- metric names
@pytest.mark.parametrize("name,canonical", [
    ("ndcg@10", "ndcg@10"), ("NDCG@10", "ndcg@10"), ("ndcg_cut_10", "ndcg@10"), ("ndcg_cut.10", "ndcg@10"),
    ("nDCG", "ndcg"), ("recall_100", "recall@100"), ("R@100", "recall@100"), ("P_5", "precision@5"),
    ("P@5", "precision@5"), ("recip_rank", "mrr"), ("MRR@10", "mrr@10"), ("map", "map"), ("MAP@100", "map@100"),
    ("map_cut_100", "map@100"), ("Rprec", "r-precision"), ("success@5", "hit_rate@5"), (" map ", "map"),
])
def test_metric_names_are_normalised(name, canonical):
    assert parse_metric(name).name == canonical


@pytest.mark.parametrize("name,message", [
    ("ndgc@10", "unknown metric 'ndgc@10'"), ("bleu", "unknown metric"), ("ndcg@", "unknown metric"),
    ("ndcg@0", "cutoff must be >= 1"), ("rprec@5", "takes no cutoff"), ("", "unknown metric"),
])
def test_unknown_metrics_are_refused(name, message):
    with pytest.raises(EvaluationError, match=message):
        parse_metric(name)
    with pytest.raises(EvaluationError, match=message):
        evaluate(QRELS, RUN, [name])


def test_same_metric_twice_is_computed_once():
    assert list(evaluate(QRELS, RUN, ["NDCG@10", "ndcg_cut_10", "map"])) == ["ndcg@10", "map"]
    assert list(evaluate(QRELS, RUN)) == list(DEFAULT_METRICS)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("qrels,run,message", [
    ({}, RUN, "qrels are empty"),
    ({"q1": {}}, RUN, "qrels are empty"),
    (QRELS, {}, "run is empty"),
    (QRELS, {"x1": {"d1": 1.0}, "x2": {}}, "share no query id"),
    (QRELS, {"q1": {"d1": float("nan")}}, r"run\['q1'\] has a NaN score"),
    (QRELS, {"q1": {"d1": "high"}}, "scores must be numbers"),
    (QRELS, {"q1": [("d1", 1.0)]}, "must map doc id -> score"),
    ({"q1": {"d1": 1.5}}, RUN, "must be an integer grade"),
    ({"q1": {"d1": True}}, RUN, "must be an integer grade"),
    ([("q1", "d1", 1)], RUN, "qrels must map"),
    (QRELS, {"q1": {1: 1.0}}, "document ids must be strings"),
])
def test_bad_inputs_are_clear_errors(qrels, run, message):
    with pytest.raises(EvaluationError, match=message):
        evaluate(qrels, run)


def test_empty_result_lists_score_zero():
    assert evaluate({"q": {"a": 1}, "p": {"b": 1}}, {"q": {}, "p": {"b": 2.0}}, "ndcg@10") == {"ndcg@10": 0.5}


# ----------------------------------------------------------------------------- random runs
def reference(qrels, run, family, k):
    """Per-query scores straight from the definitions (trec_eval semantics), no numpy."""
    out = {}
    for q, judged in qrels.items():
        if not judged:
            continue
        ranked = [d for d, _ in sorted(run.get(q, {}).items(), key=lambda x: (x[1], x[0]), reverse=True)]
        top = ranked if k is None else ranked[:k]
        rel = {d: g for d, g in judged.items() if g >= 1}
        hits = [d in rel for d in top]
        if not rel:
            out[q] = 0.0
        elif family == "ndcg":
            dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
            ideal = sorted(rel.values(), reverse=True)[: k if k is not None else None]
            out[q] = dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        elif family == "recall":
            out[q] = sum(hits) / len(rel)
        elif family == "precision":
            out[q] = sum(hits) / k
        elif family == "mrr":
            out[q] = next((1 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
        elif family == "map":
            out[q] = sum(sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h) / len(rel)
        elif family == "r-precision":
            out[q] = sum(d in rel for d in ranked[: len(rel)]) / len(rel)
        elif family == "hit_rate":
            out[q] = float(any(hits))
    return out


def random_case(seed: int):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]  # "d10" < "d9" as strings: tie order is string order
    qrels, run = {}, {}
    for i in range(40):
        q = f"q{i}"
        if rng.random() < 0.9:
            qrels[q] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 8))}
        if rng.random() < 0.85:  # some judged queries get no run entry, some run queries no judgement
            n = rng.randint(0, 40)
            run[q] = {d: float(rng.choice([0.1, 0.2, 0.3, 0.5, 1.0]) if rng.random() < 0.5 else rng.random())
                      for d in rng.sample(docs, n)}
    return qrels, run


METRICS = [("ndcg", 5), ("ndcg", 10), ("ndcg", None), ("recall", 5), ("recall", 100), ("precision", 3),
           ("mrr", 10), ("mrr", None), ("map", None), ("map", 10), ("r-precision", None), ("hit_rate", 5)]


@pytest.mark.parametrize("seed", range(5))
def test_matches_an_independent_implementation_on_random_runs(seed):
    qrels, run = random_case(seed)
    names = [f if k is None else f"{f}@{k}" for f, k in METRICS]
    got = evaluate(qrels, run, names, per_query=True)
    means = evaluate(qrels, run, names)
    for (family, k), name in zip(METRICS, names, strict=True):
        ref = reference(qrels, run, family, k)
        assert got[name].keys() == ref.keys()
        for q in ref:
            assert got[name][q] == pytest.approx(ref[q], abs=1e-12), (name, q)
        assert means[name] == pytest.approx(sum(ref.values()) / len(ref), abs=1e-12), name


# ----------------------------------------------------------------------------- trec_eval itself
def _trec_eval_binary(tmp_dir: Path) -> Path | None:
    """Pyserini's jar ships trec_eval binaries; use the Linux x86-64 one when it is there."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        return None
    jars = sorted((Path(list(spec.submodule_search_locations)[0]) / "resources" / "jars").glob("*.jar"))
    for jar in jars:
        with zipfile.ZipFile(jar) as z:
            if "trec_eval/trec_eval-linux-amd64" in z.namelist():
                target = tmp_dir / "trec_eval"
                target.write_bytes(z.read("trec_eval/trec_eval-linux-amd64"))
                target.chmod(target.stat().st_mode | stat.S_IEXEC)
                return target
    return None


@pytest.fixture(scope="module")
def trec_eval(tmp_path_factory):
    binary = _trec_eval_binary(tmp_path_factory.mktemp("trec_eval"))
    if binary is None:
        pytest.skip("trec_eval binary not available (needs pyserini's jar, Linux x86-64)")
    return binary


TREC_MEASURES = {"ndcg_cut_5": "ndcg@5", "ndcg_cut_10": "ndcg@10", "ndcg": "ndcg", "recall_5": "recall@5",
                 "recall_100": "recall@100", "P_3": "precision@3", "recip_rank": "mrr", "map": "map",
                 "map_cut_10": "map@10", "Rprec": "r-precision", "success_5": "hit_rate@5"}


def run_trec_eval(binary: Path, tmp: Path, qrels, run) -> dict[str, dict[str, float]]:
    write_qrels_trec(tmp / "qrels.txt", qrels)
    write_run(tmp / "run.txt", run)
    args = [str(binary), "-c", "-q", "-m", "ndcg_cut.5,10", "-m", "ndcg", "-m", "recall.5,100", "-m", "P.3",
            "-m", "recip_rank", "-m", "map", "-m", "map_cut.10", "-m", "Rprec", "-m", "success.5",
            str(tmp / "qrels.txt"), str(tmp / "run.txt")]
    out: dict[str, dict[str, float]] = {}
    for line in subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines():
        measure, qid, value = line.split()
        out.setdefault(TREC_MEASURES[measure], {})[qid] = float(value)
    return out


@pytest.mark.lucene
@pytest.mark.parametrize("seed", range(3))
def test_matches_trec_eval(trec_eval, tmp_path, seed):
    qrels, run = random_case(100 + seed)
    qrels = {q: d for q, d in qrels.items() if d}
    run = {q: d for q, d in run.items() if d}  # a run file cannot hold a query with no hits
    reference_scores = run_trec_eval(trec_eval, tmp_path, qrels, run)
    names = list(TREC_MEASURES.values())
    got = evaluate(qrels, run, names, per_query=True)
    means = evaluate(qrels, run, names)
    for name in names:
        # trec_eval prints 4 decimals
        assert means[name] == pytest.approx(reference_scores[name]["all"], abs=6e-5), name
        for q, value in reference_scores[name].items():
            if q != "all":
                assert got[name][q] == pytest.approx(value, abs=6e-5), (name, q)


@pytest.mark.lucene
def test_hand_example_matches_trec_eval(trec_eval, tmp_path):
    scores = run_trec_eval(trec_eval, tmp_path, QRELS, RUN)
    got = evaluate(QRELS, RUN, ["ndcg@10", "map", "mrr", "recall@100"])
    for name in got:
        assert got[name] == pytest.approx(scores[name]["all"], abs=6e-5), name
