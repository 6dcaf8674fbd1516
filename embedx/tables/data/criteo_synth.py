"""A Criteo-shaped synthetic click stream: for memory, throughput and scaling runs, never for
quality claims.

Shape: the 26 categorical fields of the Criteo Display Advertising Challenge (Kaggle) data
with its cardinalities (:data:`CRITEO_KAGGLE_CARDINALITIES`, 33.8M ids in all, the largest
10.1M, as counted by the DLRM reference preprocessing), optionally up to 13 dense
features (log-transformed counts, like Criteo's integer features).

Ids: each field draws a popularity rank from a truncated power law p(r) ~ r^-s on
``1..n`` (Zipf exponent ``s``, by inverse CDF of its continuous form) and maps ranks to ids
by a seeded affine permutation ``(a r + b) mod n``, so frequent ids are spread over the
id space rather than being the small ids (which would flatter modulo hashing).

Labels come from a hidden model with feature interactions (a factorisation machine):

    z = b + s1 * mean_f w_f(x_f) + s2 * mean_{f<g} <h_f(x_f), h_g(x_g)> / sqrt(k)
          + s3 * mean_d v_d g_d + noise,   y ~ Bernoulli(sigmoid(z))

(means scaled to unit variance). The hidden weights ``w_f(x)`` and ``h_f(x)`` in R^k are not
stored: they are derived from a 64-bit hash (splitmix64) of (seed, field, id), so memory
does not grow with the cardinalities. ``b`` is set so the mean click rate equals
``target_ctr`` (Criteo's is about 0.256).

Determinism: rows come in fixed chunks, chunk ``c`` of stream ``s`` drawn from
``numpy.random.default_rng([seed, s, c])``: any row is the same whatever the batch size or
the number of rows asked for, and streams (train 0, validation 1, test 2) never overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .dataset import Batch, DataSplits, FieldSpec, TableDataError

CRITEO_KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
CRITEO_DENSE_FEATURES = 13
STREAMS = {"train": 0, "val": 1, "test": 2}
_CALIBRATION_STREAM = 7
_MAX_CARD = 2**31 - 1

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (a bijection on uint64), elementwise."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


@dataclass
class CriteoSynthOptions:
    train_rows: int = 1_000_000
    val_rows: int = 100_000
    test_rows: int = 100_000
    seed: int = 0
    cardinalities: list[int] | None = None  # default: Criteo Kaggle's 26
    max_cardinality: int | None = None      # cap every field (scaled-down runs)
    zipf: float = 1.1                       # power-law exponent s of id popularity
    num_dense: int = 0                      # dense features (Criteo has 13)
    hidden_dim: int = 4                     # k of the hidden interaction model
    first_order: float = 0.5                # s1
    interaction: float = 1.0                # s2
    dense_weight: float = 0.5               # s3
    noise: float = 0.5                      # std of the logit noise
    target_ctr: float = 0.25
    chunk_rows: int = 16384
    calibration_rows: int = 65536


class CriteoSynthetic:
    """The hidden model and row generator; :meth:`stream` gives a :class:`BatchSource`."""

    def __init__(self, opts: CriteoSynthOptions | None = None, **overrides):
        opts = opts or CriteoSynthOptions(**overrides)
        cards = list(opts.cardinalities or CRITEO_KAGGLE_CARDINALITIES)
        if opts.max_cardinality is not None:
            if opts.max_cardinality <= 0:
                raise TableDataError(f"max_cardinality must be positive, got {opts.max_cardinality}")
            cards = [min(c, opts.max_cardinality) for c in cards]
        if not cards or any(int(c) <= 0 or int(c) > _MAX_CARD for c in cards):
            raise TableDataError(f"cardinalities must be in 1..{_MAX_CARD}, got {cards}")
        if opts.zipf < 0:
            raise TableDataError(f"zipf exponent must be >= 0, got {opts.zipf}")
        if opts.num_dense < 0 or opts.hidden_dim <= 0 or opts.chunk_rows <= 0 or opts.calibration_rows <= 0:
            raise TableDataError("num_dense must be >= 0; hidden_dim, chunk_rows, calibration_rows > 0")
        if not 0 < opts.target_ctr < 1:
            raise TableDataError(f"target_ctr must be in (0, 1), got {opts.target_ctr}")
        self.opts = opts
        self.cardinalities = [int(c) for c in cards]
        self.fields = tuple(FieldSpec(f"C{i + 1}", c) for i, c in enumerate(self.cardinalities))
        self.num_dense = int(opts.num_dense)
        f = len(cards)
        # per-field hash bases and rank -> id permutations, all from the seed
        with np.errstate(over="ignore"):
            field_keys = splitmix64(np.uint64(opts.seed % 2**64) * _GOLDEN + np.arange(1, 2 * f + 2, dtype=np.uint64))
        self._base = field_keys[:f].copy()
        self._perm_a = np.empty(f, np.int64)
        self._perm_b = np.empty(f, np.int64)
        for i, n in enumerate(self.cardinalities):
            a = 1 + int(field_keys[f + i] % np.uint64(max(n - 1, 1)))
            while math.gcd(a, n) != 1:
                a += 1
            self._perm_a[i], self._perm_b[i] = a % n if n > 1 else 0, int(field_keys[f + i] >> np.uint64(40)) % n
        dense_key = splitmix64(field_keys[2 * f:] + np.arange(max(self.num_dense, 1), dtype=np.uint64))
        self._dense_w = _unit_uniform(dense_key >> np.uint64(48))[: self.num_dense]
        self._hashes_per_id = -(-(opts.hidden_dim + 1) // 4)  # 16-bit lanes, four per 64-bit hash
        self.bias = 0.0
        self.bias = self._calibrate()

    # -- the hidden model ------------------------------------------------------------
    def ids_of(self, u: np.ndarray) -> np.ndarray:
        """Uniforms (n, F) in [0, 1) -> power-law ranks -> permuted ids (int64)."""
        n = np.asarray(self.cardinalities, np.float64)
        s = self.opts.zipf
        if abs(1.0 - s) < 1e-9:
            x = np.exp(u * np.log1p(n))
        else:
            t = 1.0 - s
            x = np.exp(np.log1p(u * np.expm1(t * np.log1p(n))) / t)
        ranks = np.minimum(np.floor(x).astype(np.int64) - 1, np.asarray(self.cardinalities, np.int64) - 1)
        ranks = np.maximum(ranks, 0)
        return (self._perm_a * ranks + self._perm_b) % np.asarray(self.cardinalities, np.int64)

    def hidden(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hidden first-order weights (n, F) and interaction vectors (n, F, k), unit variance."""
        k = self.opts.hidden_dim
        h = splitmix64(ids.astype(np.uint64) ^ self._base)
        words = [h]
        for _ in range(self._hashes_per_id - 1):
            words.append(splitmix64(words[-1]))
        # each 64-bit word read as four little-endian 16-bit lanes (the same on every platform)
        lanes = np.stack(words, axis=-1).astype("<u8", copy=False).view("<u2")[..., : k + 1]
        vals = _unit_uniform(lanes)
        return vals[..., 0], vals[..., 1:]

    def logits(self, ids: np.ndarray, dense_latent: np.ndarray | None, noise: np.ndarray) -> np.ndarray:
        o = self.opts
        f = ids.shape[1]
        w, h = self.hidden(ids)
        first = w.sum(1) / math.sqrt(f)
        total = h.sum(1)
        pairs = 0.5 * ((total * total).sum(1) - (h * h).sum((1, 2)))
        n_pairs = f * (f - 1) / 2
        inter = pairs / math.sqrt(o.hidden_dim * max(n_pairs, 1))
        z = self.bias + o.first_order * first + o.interaction * inter + o.noise * noise
        if self.num_dense:
            z = z + o.dense_weight * (dense_latent @ self._dense_w) / math.sqrt(self.num_dense)
        return z

    def chunk(self, stream: int, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Chunk ``index`` of ``stream``: ids (n, F) int32, dense (n, D) float32 or None,
        labels (n,) uint8, and the true click probabilities (n,) float64."""
        rng = np.random.default_rng([self.opts.seed, stream, index])
        n = self.opts.chunk_rows
        ids = self.ids_of(rng.random((n, len(self.cardinalities))))
        latent = rng.standard_normal((n, self.num_dense)) if self.num_dense else None
        noise = rng.standard_normal(n)
        p = 1.0 / (1.0 + np.exp(-self.logits(ids, latent, noise)))
        labels = (rng.random(n) < p).astype(np.uint8)
        dense = None
        if latent is not None:  # what a model sees: log of a count with a log-normal rate
            dense = np.log1p(np.floor(np.exp(1.0 + 1.5 * latent))).astype(np.float32)
        return ids.astype(np.int32), dense, labels, p

    def _calibrate(self) -> float:
        """The bias that makes the mean click probability ``target_ctr`` (bisection)."""
        rows, parts = 0, []
        index = 0
        while rows < self.opts.calibration_rows:
            rng = np.random.default_rng([self.opts.seed, _CALIBRATION_STREAM, index])
            n = self.opts.chunk_rows
            ids = self.ids_of(rng.random((n, len(self.cardinalities))))
            latent = rng.standard_normal((n, self.num_dense)) if self.num_dense else None
            parts.append(self.logits(ids, latent, rng.standard_normal(n)))
            rows += n
            index += 1
        z = np.concatenate(parts)[: self.opts.calibration_rows]
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < self.opts.target_ctr:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def stream(self, name: str, rows: int) -> "CriteoStream":
        if name not in STREAMS:
            raise TableDataError(f"stream must be one of {list(STREAMS)}, got {name!r}")
        return CriteoStream(self, STREAMS[name], rows)


def _unit_uniform(bits16: np.ndarray) -> np.ndarray:
    """16-bit integers -> uniform on (-sqrt 3, sqrt 3) (mean 0, variance 1), float32."""
    u = (bits16.astype(np.float32) + 0.5) * np.float32(1.0 / 65536.0)
    return (2.0 * u - 1.0) * np.float32(math.sqrt(3.0))


class CriteoStream:
    """``rows`` rows of one stream, generated chunk by chunk as batches are asked for.

    Rows are i.i.d., so ``shuffle`` has nothing to do and is ignored; every epoch sees
    the same rows (a fixed training set, as with real data).
    """

    def __init__(self, gen: CriteoSynthetic, stream: int, rows: int):
        if rows < 0:
            raise TableDataError(f"rows must be >= 0, got {rows}")
        self.gen = gen
        self.stream_id = stream
        self.rows = int(rows)
        self.fields = gen.fields
        self.num_dense = gen.num_dense

    def __len__(self) -> int:
        return self.rows

    def arrays(self, with_probabilities: bool = False) -> Iterator[tuple]:
        """Chunks of (ids, dense, labels[, p]) covering exactly ``rows`` rows."""
        size = self.gen.opts.chunk_rows
        for index in range(-(-self.rows // size)):
            ids, dense, labels, p = self.gen.chunk(self.stream_id, index)
            take = min(size, self.rows - index * size)
            out = (ids[:take], None if dense is None else dense[:take], labels[:take])
            yield out + (p[:take],) if with_probabilities else out

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0) -> Iterator[Batch]:
        if batch_size <= 0:
            raise TableDataError(f"batch_size must be positive, got {batch_size}")
        parts: list[tuple] = []
        held = 0
        for ids, dense, labels in self.arrays():
            start, n = 0, len(labels)
            while start < n:
                take = min(batch_size - held, n - start)
                stop = start + take
                parts.append((ids[start:stop], None if dense is None else dense[start:stop], labels[start:stop]))
                held, start = held + take, stop
                if held == batch_size:
                    yield _batch(parts)
                    parts, held = [], 0
        if held:
            yield _batch(parts)


def _batch(parts: list[tuple]) -> Batch:
    """One batch from consecutive slices of chunks (each row copied once)."""
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    dense = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts]).astype(np.float32)
    return Batch(torch.from_numpy(ids), None if dense is None else torch.from_numpy(dense), torch.from_numpy(labels))


def load_criteo_synth(opts: CriteoSynthOptions) -> DataSplits:
    gen = CriteoSynthetic(opts)
    info = {"dataset": "criteo_synth", "fields": {f.name: f.cardinality for f in gen.fields},
            "rows": {"train": opts.train_rows, "val": opts.val_rows, "test": opts.test_rows},
            "zipf": opts.zipf, "target_ctr": opts.target_ctr, "bias": gen.bias, "seed": opts.seed}
    return DataSplits(gen.stream("train", opts.train_rows), gen.stream("val", opts.val_rows),
                      gen.stream("test", opts.test_rows), info)


def zipf_top_share(cardinality: int, s: float, top: int) -> float:
    """Expected share of draws that fall on the ``top`` most popular ids (continuous form)."""
    if abs(1.0 - s) < 1e-9:
        return math.log1p(top) / math.log1p(cardinality)
    t = 1.0 - s
    return math.expm1(t * math.log1p(top)) / math.expm1(t * math.log1p(cardinality))


__all__: Sequence[str] = ("CRITEO_KAGGLE_CARDINALITIES", "CriteoSynthOptions", "CriteoSynthetic", "CriteoStream",
                          "load_criteo_synth", "splitmix64", "zipf_top_share")
