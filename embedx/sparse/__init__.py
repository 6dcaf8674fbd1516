"""Inference-free learned sparse retrieval: a learned document encoder, IDF queries (no model at query time).

Importing this package is cheap; each module loads what it needs:

- :mod:`embedx.sparse.encoder`: :class:`SparseDocEncoder` (masked-LM -> one weight per token).
- :mod:`embedx.sparse.query`: the query side while training (IDF, binary or learnable weights).
- :mod:`embedx.sparse.losses`: FLOPS and its schedule, InfoNCE, MarginMSE, KL, the teacher ensemble.
- :mod:`embedx.sparse.teachers` / :mod:`embedx.sparse.prepare`: mining and teacher scores into
  one training file (:mod:`embedx.sparse.dataset`), encodings cached (:mod:`embedx.sparse.cache`).
- :mod:`embedx.sparse.config` / :mod:`embedx.sparse.train`: ``embedx train sparse --config ...``.
- :mod:`embedx.sparse.evaluate`: NDCG@10, Recall@100, FLOPS in the native index and Lucene.
- :mod:`embedx.sparse.cli`: ``embedx sparse prepare | describe | encode | evaluate | train``.
"""
