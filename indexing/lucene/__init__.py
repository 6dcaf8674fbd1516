"""Lucene backend through Anserini (the Java engine inside Pyserini), without importing torch.

* :class:`LuceneImpactIndex` (kind ``"lucene-impact"``): integer impacts of learned sparse
  models, scored as ``sum(query weight * impact)``.
* :class:`LuceneBM25Index` (kind ``"lucene-bm25"``): BM25 over text, Pyserini's BEIR setup.

Importing this package is cheap; the JVM starts on the first build or search
(:mod:`.jvm` says where Java and the Anserini jar come from).
"""

from .bm25 import LuceneBM25Index
from .impact import LuceneImpactIndex
from .jvm import is_available

__all__ = ["LuceneBM25Index", "LuceneImpactIndex", "is_available"]
