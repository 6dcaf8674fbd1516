"""The result type every index returns: fixed-shape numpy arrays, so batch search stays vectorised.

Scores are always "higher is better" (an L2 index reports the negative squared distance).
A query with fewer than k hits has its trailing slots padded with row -1, id "" and score -inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.6 us more per search
class SearchResults:
    rows: np.ndarray    # (n_queries, k) int64 internal row numbers, -1 where padded
    scores: np.ndarray  # (n_queries, k) float32, -inf where padded
    ids: np.ndarray     # (n_queries, k) str, "" where padded

    def __len__(self) -> int:
        return self.rows.shape[0]

    def hits(self, i: int) -> list[tuple[str, float]]:
        """The real (unpadded) hits of query ``i`` as (id, score) pairs, best first."""
        valid = self.rows[i] >= 0
        return list(zip(self.ids[i][valid].tolist(), self.scores[i][valid].tolist()))

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """A run (query id -> {doc id: score}) for evaluation and TREC files."""
        if len(query_ids) != len(self):
            raise ValueError(f"{len(query_ids)} query ids for {len(self)} result rows")
        return {qid: dict(self.hits(i)) for i, qid in enumerate(query_ids)}

    @staticmethod
    def from_rows(rows: np.ndarray, scores: np.ndarray, id_table: np.ndarray) -> "SearchResults":
        """Build results from internal rows, mapping them to external ids in one vectorised step."""
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        missing = rows < 0
        if missing.any():
            ids = id_table[np.where(missing, 0, rows)] if len(id_table) else np.full(rows.shape, "", dtype="<U1")
            ids = np.where(missing, "", ids)
            scores = np.where(missing, np.float32(-np.inf), scores)
        else:
            ids = id_table[rows]
        return SearchResults(rows=rows, scores=scores, ids=ids)
