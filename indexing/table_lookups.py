"""Numpy lookup kernels of the exported embedding tables, one class per method.

Each kernel precomputes its per-field constants once (offsets, hash constants, divisors as
``(1, fields)`` rows, tiled to the batch's shape once per thread so the elementwise ops run as
flat loops) and then fills ``out`` for a block of validated ``(batch, fields)`` int64 ids with
a few vectorised operations and one ``take`` per table. Writing into a caller-provided ``out`` lets :class:`indexing.table_store.TableStore`
split a batch over threads without copying results. ``take(..., mode="clip")`` is safe here
because ids were range-checked, and unlike the default mode it writes ``out`` unbuffered.
Temporaries of the hot kernels (row indices, integer codes) live in per-thread scratch
buffers reused across calls: a fresh multi-megabyte array costs page faults on every batch.
"""

from __future__ import annotations

import threading

import numpy as np

from .errors import BundleError
from .hashing import hash_buckets

__all__ = ["KERNELS", "Kernel", "field_offsets", "aligned_empty", "aligned_concat", "ALIGN"]


#: tables and scratch buffers start on a cache line: a 16-float (64-byte) row then never
#: straddles two lines (a plain numpy allocation of a large array starts 16 bytes past one)
ALIGN = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an :data:`ALIGN`-byte boundary."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def aligned_concat(parts) -> np.ndarray:
    """``np.concatenate(parts)`` (along rows) into an :func:`aligned_empty` array."""
    out = aligned_empty((sum(p.shape[0] for p in parts),) + parts[0].shape[1:], parts[0].dtype)
    np.concatenate(parts, out=out)
    return out


def field_offsets(sizes) -> np.ndarray:
    """Exclusive prefix sums: where each field's block starts in a concatenated table."""
    sizes = np.asarray(list(sizes), dtype=np.int64)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


class _Scratch(threading.local):
    """Per-thread reusable temporaries, reallocated only when the batch shape changes."""

    def get(self, key: str, shape: tuple, dtype) -> np.ndarray:
        buf = self.__dict__.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self.__dict__[key] = aligned_empty(shape, dtype)
        return buf

    def tile(self, key: str, row: np.ndarray, n: int) -> np.ndarray:
        """A ``(1, fields)`` per-field constant repeated over ``n`` rows (kept for the largest
        ``n`` seen, sliced for smaller batches). As a full contiguous operand it makes an
        elementwise op one flat loop; broadcast from one row, numpy runs a short inner loop per
        batch row, which measured 1.2-2x slower on ``(4096, 26)`` ids."""
        key = "tile:" + key
        buf = self.__dict__.get(key)
        if buf is None or buf.shape[0] < n:
            buf = self.__dict__[key] = aligned_empty((max(n, 1), row.shape[1]), row.dtype)
            buf[...] = row
        return buf[:n]


def _take(table: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return table.take(rows, axis=0, out=out, mode="clip")


class Kernel:
    """``(batch, fields)`` int64 ids -> fills ``out`` ``(batch, fields, dim)`` float32."""

    arrays_required: tuple[str, ...] = ()

    def __init__(self, config: dict, arrays: dict[str, np.ndarray]):
        missing = [a for a in self.arrays_required if a not in arrays]
        if missing:
            raise BundleError(f"table is missing arrays {missing}")
        self.cards = [int(c) for c in config["cardinalities"]]
        self.dim = int(config["dim"])
        self.num_fields = len(self.cards)
        self.offsets = field_offsets(self.cards)[None, :]
        self.arrays = arrays
        self.scratch = _Scratch()

    def expect_shape(self, name: str, *shape: int) -> None:
        """Refuse arrays that disagree with the config (gathers clip, so they would not fail)."""
        got = self.arrays[name].shape
        if tuple(got) != shape:
            raise BundleError(f"array {name!r} has shape {tuple(got)}, the config implies {shape}")

    def tile(self, name: str, ids: np.ndarray) -> np.ndarray:
        """The ``(1, fields)`` constant attribute ``name`` as a full operand for ``ids`` (see
        :meth:`_Scratch.tile`)."""
        return self.scratch.tile(name, getattr(self, name), ids.shape[0])

    def global_rows(self, ids: np.ndarray) -> np.ndarray:
        """``ids + field offsets`` in a scratch buffer."""
        return np.add(ids, self.tile("offsets", ids), out=self.scratch.get("rows", ids.shape, np.int64))

    def __call__(self, ids: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Full(Kernel):
    arrays_required = ("weight",)

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.expect_shape("weight", sum(self.cards), self.dim)

    def __call__(self, ids, out):
        _take(self.arrays["weight"], self.global_rows(ids), out)


class Hash(Kernel):
    """Per-field hashing trick: field f's rows start at ``row_offset[f]``; identity where uncompressed."""

    arrays_required = ("weight", "hash")

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        rows = np.asarray(config["rows"], dtype=np.int64)
        self.expect_shape("weight", int(rows.sum()), self.dim)
        self.expect_shape("hash", self.num_fields, 2)
        if np.any(rows < 1) or np.any(rows > np.asarray(self.cards)):
            raise BundleError("hash table rows must be between 1 and the field's cardinality")
        h = arrays["hash"]
        self.a, self.b = h[None, :, 0].copy(), h[None, :, 1].copy()
        self.m = rows[None, :]
        self.row_offsets = field_offsets(rows)[None, :]
        self.identity = (rows == np.asarray(self.cards))[None, :]
        self.any_identity = bool(self.identity.any())

    def __call__(self, ids, out):
        t = self.tile
        rows = hash_buckets(ids, t("a", ids), t("b", ids), t("m", ids),
                            out=self.scratch.get("rows", ids.shape, np.int64))
        if self.any_identity:
            np.copyto(rows, ids, where=self.identity)
        rows += t("row_offsets", ids)
        _take(self.arrays["weight"], rows, out)


class HashShared(Kernel):
    arrays_required = ("weight", "hash")

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        rows = int(config["rows"])
        if not 1 <= rows <= sum(self.cards):
            raise BundleError(f"shared hash table has {rows} rows for {sum(self.cards)} ids")
        self.expect_shape("weight", rows, self.dim)
        self.expect_shape("hash", 1, 2)

    def __call__(self, ids, out):
        g = self.global_rows(ids)
        weight, h = self.arrays["weight"], self.arrays["hash"]
        if weight.shape[0] < sum(self.cards):
            g = hash_buckets(g, h[0, 0], h[0, 1], weight.shape[0], out=g)
        _take(weight, g, out)


class QR(Kernel):
    """Quotient-remainder compositional embedding (Shi et al., KDD 2020).

    At load, plain (uncompressed) fields are folded into the two tables so one vectorised
    formula serves every field: ``q, r = divmod(x, div_f)`` in one pass, then one ``take``
    per table. With ``mult``/``add`` a plain row is appended to the quotient table
    (``div_f = 1``, so ``q = x``, ``r = 0``) and paired with one constant row of ones/zeros;
    with ``concat`` its two halves are appended to the two tables and read with
    ``q = r = x`` (``r = x - q * rmul_f`` with ``rmul_f = 0``). Equal ``concat`` halves are
    stacked into one table so a lookup is a single ``take``. The folded copies cost the plain
    fields' size once, at load.

    Order matters for speed (measured, batch 4096 x 26): the remainder table, the large one,
    is gathered straight into ``out`` and the small quotient table into a reused scratch
    buffer, then an in-place ``*=``/``+=``, one L2-sized block of rows at a time. Integer
    ``divmod`` is exact for every id and as fast as a float reciprocal here.
    """

    arrays_required = ("quotient", "remainder", "dense")
    #: output bytes combined per block (the quotient rows of a block stay in L2)
    BLOCK_BYTES = 512 * 1024

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.op = config["op"]
        if self.op not in ("mult", "add", "concat"):
            raise BundleError(f"qr table has unknown op {self.op!r}")
        m = [int(x) for x in config["remainders"]]
        dense = [bool(x) for x in config["dense"]]
        Q, R, D = arrays["quotient"], arrays["remainder"], arrays["dense"]
        nq, nr = Q.shape[0], R.shape[0]
        wq = self.dim // 2 if self.op == "concat" else self.dim
        self.expect_shape("quotient", sum(int(x) for x in config["quotients"]), wq)
        self.expect_shape("remainder", sum(m), self.dim - wq if self.op == "concat" else self.dim)
        self.expect_shape("dense", sum(c for c, d in zip(self.cards, dense) if d), self.dim)
        if any((mm < 1) != d for mm, d in zip(m, dense)):
            raise BundleError("qr table: a field must have remainders > 0 or be dense")
        qoff = field_offsets(int(x) for x in config["quotients"])
        roff = field_offsets(m)
        doff = field_offsets(c if d else 0 for c, d in zip(self.cards, dense))
        div, rmul, qbase, rbase = [], [], [], []
        for f in range(self.num_fields):
            if not dense[f]:
                div.append(m[f]); rmul.append(m[f]); qbase.append(qoff[f]); rbase.append(roff[f])
            elif self.op == "concat":
                div.append(1); rmul.append(0); qbase.append(nq + doff[f]); rbase.append(nr + doff[f])
            else:
                div.append(1); rmul.append(1); qbase.append(nq + doff[f]); rbase.append(nr)
        if any(dense):
            if self.op == "concat":
                wq = Q.shape[1]
                Q, R = aligned_concat([Q, D[:, :wq]]), aligned_concat([R, D[:, wq:]])
            else:
                const = np.ones if self.op == "mult" else np.zeros
                Q, R = aligned_concat([Q, D]), aligned_concat([R, const((1, R.shape[1]), dtype=R.dtype)])
        self.div = np.asarray(div, dtype=np.int64)[None, :]
        self.rmul = np.asarray(rmul, dtype=np.int64)[None, :]
        # divmod's remainder is right unless a plain concat field needs r = x (rmul 0)
        self.remainder_from_divmod = bool(np.all(self.rmul == self.div))
        self.qbase = np.asarray(qbase, dtype=np.int64)[None, :]
        self.rbase = np.asarray(rbase, dtype=np.int64)[None, :]
        self.stacked = self.op == "concat" and Q.shape[1] == R.shape[1]
        if self.stacked:
            self.table = aligned_concat([Q, R])
            self.rbase = self.rbase + Q.shape[0]
        self.Q, self.R = Q, R

    def indices(self, ids: np.ndarray, q: np.ndarray, r: np.ndarray) -> None:
        """Global quotient and remainder rows of ``ids`` into ``q`` and ``r`` (may be strided views)."""
        t = self.tile
        np.divmod(ids, t("div", ids), out=(q, r))
        if not self.remainder_from_divmod:
            np.multiply(q, t("rmul", ids), out=r)
            np.subtract(ids, r, out=r)
        q += t("qbase", ids)
        r += t("rbase", ids)

    def __call__(self, ids, out):
        get = self.scratch.get
        if self.stacked:
            idx = get("qr", ids.shape + (2,), np.int64)
            self.indices(ids, idx[..., 0], idx[..., 1])
            _take(self.table, idx, out.reshape(ids.shape + (2, self.dim // 2)))
            return
        q, r = get("q", ids.shape, np.int64), get("r", ids.shape, np.int64)
        self.indices(ids, q, r)
        if self.op == "concat":
            wq = self.Q.shape[1]
            out[..., :wq] = _take(self.Q, q)
            out[..., wq:] = _take(self.R, r)
            return
        # gather and combine block by block, so the quotient rows are still in L2 when they
        # are multiplied in (measured ~10% faster than whole-batch passes at batch 4096 x 26)
        step = max(1, self.BLOCK_BYTES // (ids.shape[1] * self.dim * 4))
        eq_block = get("eq", (min(step, ids.shape[0]),) + out.shape[1:], np.float32)
        combine = np.multiply if self.op == "mult" else np.add
        for start in range(0, ids.shape[0], step):
            o = out[start:start + step]
            _take(self.R, r[start:start + step], o)
            combine(o, _take(self.Q, q[start:start + step], eq_block[:o.shape[0]]), out=o)


class Unified(Kernel):
    """Unified Embedding (Coleman et al., NeurIPS 2023): per-(feature, chunk) hashes into shared tables.

    Keys are laid out ``(batch, fields * chunks)`` so the hash runs over long contiguous rows,
    then one ``take`` per width group gathers every chunk at once.
    """

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.groups = []
        for g in config["groups"]:
            w, c, fields = int(g["width"]), int(g["chunks"]), [int(f) for f in g["fields"]]
            rows = np.asarray(g["table_rows"], dtype=np.int64)
            weight, h = arrays.get(f"weight_w{w}"), arrays.get(f"hash_w{w}")
            if weight is None or h is None:
                raise BundleError(f"unified table is missing the arrays of width {w}")
            self.expect_shape(f"weight_w{w}", int(rows.sum()), w)
            self.expect_shape(f"hash_w{w}", len(fields) * c, 2)
            if w * c != self.dim or len(rows) < 1 or np.any(rows < 1):
                raise BundleError(f"unified table group of width {w} is inconsistent")
            table = np.arange(len(fields) * c) % len(rows)
            self.groups.append(dict(
                fields=np.asarray(fields), chunks=c, width=w, whole=fields == list(range(self.num_fields)),
                weight=weight, a=h[None, :, 0].copy(), b=h[None, :, 1].copy(), m=rows[table][None, :],
                toff=field_offsets(rows)[table][None, :]))

    def __call__(self, ids, out):
        for g in self.groups:
            x = ids if g["whole"] else ids[:, g["fields"]]
            keys = x if g["chunks"] == 1 else np.repeat(x, g["chunks"], axis=1)
            w, n = g["width"], keys.shape[0]
            tile = self.scratch.tile
            rows = hash_buckets(keys, tile(f"a{w}", g["a"], n), tile(f"b{w}", g["b"], n), tile(f"m{w}", g["m"], n),
                                out=self.scratch.get(f"rows{w}", keys.shape, np.int64))
            rows += tile(f"toff{w}", g["toff"], n)
            if g["whole"]:
                _take(g["weight"], rows, out.reshape(rows.shape + (g["width"],)))
            else:
                out[:, g["fields"]] = _take(g["weight"], rows).reshape(x.shape + (self.dim,))


class Robe(Kernel):
    """ROBE (Desai et al., MLSys 2022): chunks of Z consecutive values of one circular array."""

    arrays_required = ("array", "hash")

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.z = int(config["chunk_size"])
        self.nchunks = -(-self.dim // self.z)
        self.signed = bool(config["signed"])
        if self.signed and "sign_hash" not in arrays:
            raise BundleError("signed robe table is missing its sign_hash array")
        self.size = int(config["size"])
        self.expect_shape("array", self.size)
        self.expect_shape("hash", 1, 2)
        if self.size < 1 or not 1 <= self.z <= self.dim:
            raise BundleError("robe table: empty array or bad chunk size")
        self.steps = np.arange(self.z, dtype=np.int64)
        self.chunk_ids = np.arange(self.nchunks, dtype=np.int64)
        self.elem_ids = np.arange(self.dim, dtype=np.int64)

    def __call__(self, ids, out):
        g = (ids + self.offsets)[..., None]
        h = self.arrays["hash"]
        idx = hash_buckets(g * self.nchunks + self.chunk_ids, h[0, 0], h[0, 1], self.size)[..., None] + self.steps
        idx[idx >= self.size] -= self.size
        emb = self.arrays["array"].take(idx, mode="clip").reshape(ids.shape + (self.nchunks * self.z,))
        if self.signed:
            s = self.arrays["sign_hash"]
            bit = hash_buckets(g * self.dim + self.elem_ids, s[0, 0], s[0, 1], 2)
            np.multiply(emb[..., :self.dim], (1 - 2 * bit).astype(np.float32), out=out)
        else:
            out[...] = emb[..., :self.dim]


class Quantized(Kernel):
    """INT8 / INT16 codes with one fixed scale: ``w = scale * code``."""

    arrays_required = ("codes",)

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.scale = np.float32(config["scale"])
        self.expect_shape("codes", sum(self.cards), self.dim)

    def __call__(self, ids, out):
        codes = self.arrays["codes"]
        buf = _take(codes, self.global_rows(ids), self.scratch.get("codes", out.shape, codes.dtype))
        np.multiply(buf, self.scale, out=out)  # code -> float32 (exact: |code| < 2**24) times scale, one pass


class ALPT(Kernel):
    """ALPT (Li et al., AAAI 2023): low-precision codes with a learned step per row."""

    arrays_required = ("codes", "step")

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.expect_shape("codes", sum(self.cards), self.dim)
        self.expect_shape("step", sum(self.cards))

    def __call__(self, ids, out):
        g = self.global_rows(ids)
        codes = self.arrays["codes"]
        buf = self.scratch.get("codes", out.shape, codes.dtype)
        step = self.arrays["step"].take(g, mode="clip", out=self.scratch.get("step", g.shape, np.float32))
        np.multiply(_take(codes, g, buf), step[..., None], out=out)


class MDE(Kernel):
    """Mixed-dimension embeddings (Ginart et al., ISIT 2021): per-field table then projection."""

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.dims = [int(d) for d in config["dims"]]
        for f, d in enumerate(self.dims):
            if f"table_{f}" not in arrays or (d < self.dim and f"proj_{f}" not in arrays):
                raise BundleError(f"mde table is missing the arrays of field {f}")
            self.expect_shape(f"table_{f}", self.cards[f], d)
            if d < self.dim:
                self.expect_shape(f"proj_{f}", d, self.dim)

    def __call__(self, ids, out):
        for f, d in enumerate(self.dims):
            e = _take(self.arrays[f"table_{f}"], ids[:, f])
            out[:, f] = e @ self.arrays[f"proj_{f}"] if d < self.dim else e


class TT(Kernel):
    """TT-Rec (Yin et al., MLSys 2021): a row is the contraction of three tensor-train core slices."""

    arrays_required = ("dense",)

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        self.dense = [bool(x) for x in config["dense"]]
        self.row_factors = [[int(n) for n in f] for f in config["row_factors"]]
        self.dim_factors = [int(x) for x in config["dim_factors"]]
        self.doff = field_offsets(c if d else 0 for c, d in zip(self.cards, self.dense))
        self.expect_shape("dense", sum(c for c, d in zip(self.cards, self.dense) if d), self.dim)
        d1, d2, d3 = self.dim_factors
        for f, d in enumerate(self.dense):
            if d:
                continue
            if any(f"core{k}_{f}" not in arrays for k in range(3)):
                raise BundleError(f"tt_rec table is missing the cores of field {f}")
            n1, n2, n3 = self.row_factors[f]
            r1, r2 = arrays[f"core1_{f}"].shape[1], arrays[f"core1_{f}"].shape[3]
            if n1 * n2 * n3 < self.cards[f] or d1 * d2 * d3 != self.dim:
                raise BundleError(f"tt_rec field {f} factors do not cover its ids and dim")
            self.expect_shape(f"core0_{f}", n1, 1, d1, r1)
            self.expect_shape(f"core1_{f}", n2, r1, d2, r2)
            self.expect_shape(f"core2_{f}", n3, r2, d3, 1)

    def __call__(self, ids, out):
        d1, d2, d3 = self.dim_factors
        for f in range(self.num_fields):
            x = ids[:, f]
            if self.dense[f]:
                out[:, f] = _take(self.arrays["dense"], x + self.doff[f])
                continue
            _, n2, n3 = self.row_factors[f]
            g1 = _take(self.arrays[f"core0_{f}"], x // (n2 * n3))        # (n, 1, d1, R1)
            g2 = _take(self.arrays[f"core1_{f}"], (x // n3) % n2)       # (n, R1, d2, R2)
            g3 = _take(self.arrays[f"core2_{f}"], x % n3)               # (n, R2, d3, 1)
            n, r1, r2 = len(x), g2.shape[1], g2.shape[3]
            ab = np.matmul(g1.reshape(n, d1, r1), g2.reshape(n, r1, d2 * r2))
            out[:, f] = np.matmul(ab.reshape(n, d1 * d2, r2), g3.reshape(n, r2, d3)).reshape(n, -1)[:, :self.dim]


def _mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(np.logaddexp(np.float32(0), x))


class DHE(Kernel):
    """Deep Hash Embedding (Kang et al., KDD 2021): k hashes -> dense encoding -> MLP."""

    arrays_required = ("hash", "w_out", "b_out")

    def __init__(self, config, arrays):
        super().__init__(config, arrays)
        h = arrays["hash"]
        self.a, self.b = h[None, :, 0].copy(), h[None, :, 1].copy()
        self.buckets = int(config["num_buckets"])
        self.distribution = config["distribution"]
        self.activation = config["activation"]
        self.batchnorm = bool(config["batchnorm"])
        self.eps = np.float32(config["bn_eps"])
        self.layers = len(config["hidden"])
        need = [f"{p}{i}" for i in range(self.layers) for p in ("w", "b")]
        if self.batchnorm:
            need += [f"bn{i}_{p}" for i in range(self.layers) for p in ("weight", "bias", "mean", "var")]
        if any(k not in arrays for k in need):
            raise BundleError("dhe table is missing layer arrays")

    def encode(self, g: np.ndarray) -> np.ndarray:
        h = hash_buckets(g[:, None], self.a, self.b, self.buckets).astype(np.float32)
        m = np.float32(self.buckets)
        if self.distribution == "uniform":
            return h / (m - 1) * 2 - 1
        u1 = (h[:, 0::2] + 1) / m
        u2 = h[:, 1::2] / m
        r = np.sqrt(-2 * np.log(u1))
        theta = np.float32(2 * np.pi) * u2
        return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1).reshape(h.shape)

    def __call__(self, ids, out):
        x = self.encode((ids + self.offsets).reshape(-1))
        A = self.arrays
        for i in range(self.layers):
            x = x @ A[f"w{i}"].T + A[f"b{i}"]
            if self.batchnorm:
                x = (x - A[f"bn{i}_mean"]) / np.sqrt(A[f"bn{i}_var"] + self.eps)
                x = x * A[f"bn{i}_weight"] + A[f"bn{i}_bias"]
            x = _mish(x) if self.activation == "mish" else np.maximum(x, 0)
        out[...] = (x @ A["w_out"].T + A["b_out"]).reshape(out.shape)


KERNELS: dict[str, type[Kernel]] = {
    "full": Full, "hash": Hash, "hash_shared": HashShared, "qr": QR, "unified": Unified,
    "robe": Robe, "int8": Quantized, "int16": Quantized, "alpt": ALPT, "mde": MDE,
    "tt_rec": TT, "dhe": DHE,
}
