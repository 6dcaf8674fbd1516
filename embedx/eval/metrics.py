"""Standard IR metrics with trec_eval's semantics, computed by ``ranx``.

What "trec_eval semantics" means here (it is what BEIR and Pyserini's ``trec_eval -c`` report):

* The average is over the queries of the qrels. A judged query missing from the run scores 0
  (trec_eval's ``-c``); a run query without judgements is ignored.
* A judged query with no relevant document (every grade <= 0) still counts, as 0.
* A document is relevant when its grade is >= 1; NDCG uses the grade itself as the gain
  (``rel / log2(rank + 1)``, trec_eval's ``ndcg_cut``, not the ``2^rel - 1`` variant).
* Tied scores are ranked by document id in descending order, exactly as trec_eval does, so
  results do not depend on dictionary order or on ranx's sort.

ranx computes the per-query numbers with its public metric kernels (``ranx.metrics.ndcg``,
...), fed arrays of interned integer ids already in trec_eval order. That skips ranx's
``Run``/``Qrels`` containers, whose numba typed dicts cost seconds to build in every new
process, and ``ranx.evaluate``'s side effect on numba's global thread count. ranx is imported
on first use, because importing it takes seconds (pandas, scipy.stats).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map")

# accepted spelling (lower case) -> (canonical family, function in ranx.metrics, takes a cutoff)
_FAMILIES: dict[str, tuple[str, str, bool]] = {}
for _canon, _ranx, _cut, _aliases in (
    ("ndcg", "ndcg", True, ("ndcg", "ndcg_cut")),  # linear gain (Jarvelin), as trec_eval
    ("recall", "recall", True, ("recall", "r")),
    ("precision", "precision", True, ("precision", "p", "prec")),
    ("mrr", "reciprocal_rank", True, ("mrr", "rr", "recip_rank", "mrr_cut")),
    ("map", "average_precision", True, ("map", "ap", "map_cut")),
    ("r-precision", "r_precision", False, ("r-precision", "r_precision", "rprec")),
    ("hit_rate", "hit_rate", True, ("hit_rate", "hitrate", "success")),
):
    for _alias in _aliases:
        _FAMILIES[_alias] = (_canon, _ranx, _cut)

# name, then an optional cutoff introduced by "@", "_", "." or trec_eval's "_cut_" / "_cut."
_METRIC_RE = re.compile(r"^(?P<name>[a-z][a-z_-]*?)(?:(?:_cut)?[@._](?P<k>\d+))?$")


class EvaluationError(ValueError):
    """Evaluation cannot give a meaningful number: unknown metric, empty or mismatched inputs."""


@dataclass(frozen=True)
class Metric:
    """A parsed metric: ``family`` (canonical name) and an optional cutoff ``k``."""

    family: str
    k: int | None
    ranx_function: str

    @property
    def name(self) -> str:
        """Canonical spelling, e.g. ``ndcg@10``; the keys of :func:`evaluate`'s result."""
        return self.family if self.k is None else f"{self.family}@{self.k}"


def parse_metric(name: str) -> Metric:
    """Parse ``"NDCG@10"``, ``"ndcg_cut_10"``, ``"ndcg_cut.10"``, ``"P_5"``, ``"recip_rank"``, ``"map"``...

    Case does not matter. Unknown names and cutoffs < 1 raise :class:`EvaluationError`.
    """
    if not isinstance(name, str):
        raise EvaluationError(f"metric names are strings, got {name!r}")
    m = _METRIC_RE.match(name.strip().lower())
    family = _FAMILIES.get(m.group("name")) if m else None
    if family is None:
        known = ", ".join(sorted({f[0] for f in _FAMILIES.values()}))
        raise EvaluationError(f"unknown metric {name!r}; known: {known} (with an optional cutoff, e.g. ndcg@10)")
    canon, ranx_function, takes_cutoff = family
    k = int(m.group("k")) if m.group("k") is not None else None
    if k is not None and not takes_cutoff:
        raise EvaluationError(f"metric {name!r}: {canon} takes no cutoff")
    if k is not None and k < 1:
        raise EvaluationError(f"metric {name!r}: the cutoff must be >= 1")
    return Metric(canon, k, ranx_function)


def _parse_metrics(metrics: str | Iterable[str]) -> list[Metric]:
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise EvaluationError("no metrics given")
    parsed = {}
    for n in names:
        metric = parse_metric(n)
        parsed.setdefault(metric.name, metric)  # "NDCG@10" and "ndcg_cut_10" are one metric
    return list(parsed.values())


def _check_qrels(qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    if not isinstance(qrels, Mapping):
        raise EvaluationError(f"qrels must map query id -> {{doc id: grade}}, got {type(qrels).__name__}")
    qids = []
    for qid, docs in qrels.items():
        if not isinstance(docs, Mapping):
            raise EvaluationError(f"qrels[{qid!r}] must map doc id -> grade, got {type(docs).__name__}")
        for doc_id, grade in docs.items():
            if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)):
                raise EvaluationError(f"qrels[{qid!r}][{doc_id!r}] must be an integer grade, got {grade!r}")
        if docs:  # a query with no judgement lines does not exist for trec_eval
            qids.append(qid)
    if not qids:
        raise EvaluationError("qrels are empty: no query has a judgement")
    return qids


def _check_run(run: Mapping[str, Mapping[str, float]], qids: Sequence[str]) -> None:
    if not isinstance(run, Mapping):
        raise EvaluationError(f"run must map query id -> {{doc id: score}}, got {type(run).__name__}")
    if not run:
        raise EvaluationError("run is empty: no query has results")
    for qid, docs in run.items():
        if not isinstance(docs, Mapping):
            raise EvaluationError(f"run[{qid!r}] must map doc id -> score, got {type(docs).__name__}")
    judged = set(qids)
    shared = sum(1 for q in run if q in judged)
    if not shared:
        sample = ", ".join(repr(q) for q in list(run)[:3])
        raise EvaluationError(f"the run and the qrels share no query id (run has {sample}, ...; qrels have "
                              f"{', '.join(repr(q) for q in qids[:3])}, ...): check the query ids")
    if shared < len(run):
        log.debug("ignoring %d run queries without judgements", len(run) - shared)
    if shared < len(qids):
        log.info("%d of %d judged queries have no run entry; they score 0", len(qids) - shared, len(qids))


def _intern_in_string_order(doc_ids: list[str]) -> np.ndarray:
    """Integer codes (as float64, what ranx stores) whose order is the order of the id strings.

    Only the distinct ids are sorted; mapping every id to its code is one dict lookup.
    """
    distinct = list(dict.fromkeys(doc_ids))
    if not all(type(d) is str for d in distinct):
        bad = next(d for d in distinct if type(d) is not str)
        raise EvaluationError(f"document ids must be strings, got {bad!r} ({type(bad).__name__})")
    code = {d: i for i, d in enumerate(sorted(distinct))}
    return np.fromiter(map(code.__getitem__, doc_ids), dtype=np.float64, count=len(doc_ids))


def _to_arrays(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
               qids: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query, ``[[doc, grade]]`` sorted by grade and ``[[doc, -rank]]`` in trec_eval order.

    Doc ids become their position in the sorted set of all ids, so comparing the integers
    orders documents as comparing the strings does (code point order, which is UTF-8 byte
    order, which is what trec_eval's ``strcmp`` uses).
    """
    n_q = len(qids)
    q_docs, q_grades, q_len = [], [], np.empty(n_q, dtype=np.int64)
    r_docs, r_scores, r_len = [], [], np.empty(n_q, dtype=np.int64)
    empty: Mapping[str, float] = {}
    for i, qid in enumerate(qids):
        judged, ranked = qrels[qid], run.get(qid, empty)
        q_docs.extend(judged.keys())
        q_grades.extend(judged.values())
        q_len[i] = len(judged)
        r_docs.extend(ranked.keys())
        r_scores.extend(ranked.values())
        r_len[i] = len(ranked)
    try:
        scores = np.asarray(r_scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise EvaluationError(f"run scores must be numbers ({e})") from None
    if np.isnan(scores).any():
        bad = int(np.searchsorted(np.cumsum(r_len), int(np.flatnonzero(np.isnan(scores))[0]), side="right"))
        raise EvaluationError(f"run[{qids[bad]!r}] has a NaN score")
    codes = _intern_in_string_order(q_docs + r_docs)
    q_codes, r_codes = codes[:len(q_docs)], codes[len(q_docs):]
    q_query = np.repeat(np.arange(n_q), q_len)
    r_query = np.repeat(np.arange(n_q), r_len)

    grades = np.asarray(q_grades, dtype=np.float64)
    q_order = np.lexsort((-grades, q_query))
    qrels_rows = np.column_stack((q_codes[q_order], grades[q_order]))
    r_order = np.lexsort((-r_codes, -scores, r_query))  # by query, score desc, doc id desc
    # ranx reads rows in the order given; scores become -position so the rank is explicit
    position = np.arange(len(scores)) - np.repeat(np.cumsum(r_len) - r_len, r_len)
    run_rows = np.column_stack((r_codes[r_order], -position.astype(np.float64)))
    return np.split(qrels_rows, np.cumsum(q_len)[:-1]), np.split(run_rows, np.cumsum(r_len)[:-1])


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
             metrics: str | Iterable[str] = DEFAULT_METRICS,
             per_query: bool = False) -> dict[str, float] | dict[str, dict[str, float]]:
    """Score ``run`` (query id -> {doc id: score}) against ``qrels`` (query id -> {doc id: grade}).

    Returns ``{metric: mean}`` keyed by canonical metric names (``"NDCG@10"`` and
    ``"ndcg_cut_10"`` both give ``"ndcg@10"``), or with ``per_query`` ``{metric: {qid: score}}``
    over the judged queries. See the module docstring for the exact semantics.
    """
    parsed = _parse_metrics(metrics)
    qids = _check_qrels(qrels)
    _check_run(run, qids)
    qrels_rows, run_rows = _to_arrays(qrels, run, qids)

    from numba.core.errors import NumbaTypeSafetyWarning
    from numba.typed import List as TypedList
    from ranx import metrics as ranx_metrics

    qrels_list, run_list = TypedList(qrels_rows), TypedList(run_rows)
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)  # ranx's prange index cast; harmless
        for m in parsed:
            kernel = getattr(ranx_metrics, m.ranx_function)
            scores[m.name] = np.asarray(kernel(qrels_list, run_list, m.k or 0, 1), dtype=np.float64)
    if per_query:
        return {name: dict(zip(qids, values.tolist(), strict=True)) for name, values in scores.items()}
    return {name: float(values.mean()) for name, values in scores.items()}
