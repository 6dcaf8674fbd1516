"""MovieLens 100K and 1M as CTR data: binary labels, user and item features as fields.

Both give the same eight fields, in this order: ``user_id``, ``item_id``, ``age``,
``gender``, ``occupation``, ``zip``, ``release_year`` and ``genres`` (multi-hot, one bag of
genre ids per row). Each field's values are encoded to contiguous ids ``0 .. card-1``
(numeric keys in numeric order, other tokens sorted); a missing side feature is its own
value (the empty token); a movie without genres gets the token ``(no genres)``.

- **100K** (explicit ratings, RecBole atomic files): rating >= 4 -> 1, <= 2 -> 0, 3 dropped,
  as the Unified Embedding paper (Coleman et al., NeurIPS 2023) did: 72,855 labelled rows.
  Vocabularies of users and items are the side files' catalogues (943 users, 1,682 items).
- **1M** (implicit: ``ratings.parquet`` holds only the 1,000,209 watched (user, movie)
  pairs): the pairs are positives; ``neg_ratio`` negatives per positive are drawn per user,
  uniformly without replacement from the movies that user did not watch, with a fixed
  seed (:mod:`.negatives`). The item universe is the 3,706 movies that have an interaction,
  so a negative is always a movie somebody watched. The default ratio 1 gives balanced
  classes (NCF used 4 for training; AUC, the metric here, does not depend on the ratio in
  expectation, and 1 keeps an epoch at ~2M rows).

Splits: a fixed random 80/10/10 partition of the labelled rows (negatives included),
seeded by ``seed``; the common CTR protocol (rows, not users or time, are held out).
Processed arrays are cached (:mod:`.cache`) keyed by the options and the source files.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ...paths import data_root
from .atomic import read_atomic, require_columns
from .cache import atomic_directory, default_cache_root, settings_key
from .dataset import ArrayDataset, DataSplits, FieldSpec, TableDataError, array_splits, split_rows
from .negatives import sample_negatives

log = logging.getLogger(__name__)

READER_VERSION = 1
FIELDS = ("user_id", "item_id", "age", "gender", "occupation", "zip", "release_year", "genres")
NO_GENRE = "(no genres)"
_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class MovieLens100KOptions:
    root: str | None = None           # folder of ml-100k.{inter.gz,user,item}; default <data>/movielens/ml-100k
    split: list[float] | None = None  # train/val/test fractions; default [0.8, 0.1, 0.1]
    seed: int = 0                     # split seed (independent of the training seed)
    zip_prefix: int | None = None     # keep the first n characters of the zip code (None: the whole code)
    cache: bool = True
    cache_dir: str | None = None      # default: embedx.tables.data.cache.default_cache_root()


@dataclass
class MovieLens1MOptions(MovieLens100KOptions):
    root: str | None = None           # folder of {ratings,users,movies}.parquet; default <data>/movielens/ml-1m
    neg_ratio: float = 1.0            # sampled negatives per positive


DEFAULT_SPLIT = [0.8, 0.1, 0.1]


# ---------------------------------------------------------------- encoding
def sorted_keys(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """Distinct keys, numerically ordered when all are integers, else sorted as strings."""
    uniq = pd.unique(pd.Series(np.asarray(values, dtype=object)).astype(str))
    if len(uniq) and all(v.isdigit() for v in uniq):
        return np.array(sorted(uniq, key=int), dtype=object)
    return np.array(sorted(uniq), dtype=object)


def encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens -> (int32 codes, vocabulary) with the vocabulary in :func:`sorted_keys` order."""
    vocab = sorted_keys(values)
    codes = pd.Index(vocab).get_indexer(np.asarray(values, dtype=object).astype(str))
    return codes.astype(np.int32), vocab


def encode_bags(bags: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> ((n, L) int32 ids padded with -1, vocabulary); L = the longest bag."""
    lengths = np.fromiter((len(b) for b in bags), np.int64, count=len(bags))
    flat = np.array([t for b in bags for t in b], dtype=object)
    codes, vocab = encode(flat) if len(flat) else (np.zeros(0, np.int32), np.array([], dtype=object))
    width = max(int(lengths.max(initial=0)), 1)
    out = np.full((len(bags), width), -1, np.int32)
    rows = np.repeat(np.arange(len(bags)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = codes
    return out, vocab


def _side(frame: pd.DataFrame, key: str, keys: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    """Rows of ``frame`` aligned to ``keys`` (missing keys -> empty tokens)."""
    f = frame.assign(**{key: frame[key].astype(str).str.strip()}).drop_duplicates(key).set_index(key)
    aligned = f[list(columns)].astype(str).reindex(pd.Index(keys, dtype=object))
    return aligned.fillna("").astype(str)


def _zip(codes: pd.Series, prefix: int | None) -> np.ndarray:
    z = codes.str.split("-").str[0].str.strip()
    return (z if prefix is None else z.str[:prefix]).to_numpy(dtype=object)


def assemble(user_keys: np.ndarray, users: pd.DataFrame, item_keys: np.ndarray, items: pd.DataFrame,
             genre_bags: list[list[str]], row_users: np.ndarray, row_items: np.ndarray,
             labels: np.ndarray) -> ArrayDataset:
    """Rows of (user code, item code, label) + aligned side tables -> the eight-field dataset.

    ``users`` has columns age, gender, occupation, zip aligned with ``user_keys``; ``items``
    has release_year aligned with ``item_keys``; ``genre_bags`` one token list per item.
    """
    user_cols = [encode(users[c].to_numpy(dtype=object)) for c in ("age", "gender", "occupation", "zip")]
    year_codes, year_vocab = encode(items["release_year"].to_numpy(dtype=object))
    genres, genre_vocab = encode_bags([b if b else [NO_GENRE] for b in genre_bags])
    ru, ri = row_users.astype(np.int64), row_items.astype(np.int64)
    single = np.stack([ru, ri, *(codes[ru] for codes, _ in user_cols), year_codes[ri]], axis=1).astype(np.int32)
    multi = genres[ri][:, None, :]
    cards = [len(user_keys), len(item_keys), *(len(v) for _, v in user_cols), len(year_vocab)]
    fields = [FieldSpec(n, c) for n, c in zip(FIELDS[:-1], cards)] + [
        FieldSpec("genres", len(genre_vocab), bag=genres.shape[1])]
    data = ArrayDataset(fields, np.ascontiguousarray(single), np.ascontiguousarray(multi),
                        np.asarray(labels, np.uint8))
    data.validate()
    return data


# ---------------------------------------------------------------- readers
def read_ml100k(root: Path, zip_prefix: int | None = None) -> tuple[ArrayDataset, dict]:
    """MovieLens 100K from RecBole atomic files, binarised (>= 4 -> 1, <= 2 -> 0, 3 dropped)."""
    paths = {k: root / f"ml-100k.{k}" for k in ("user", "item")}
    paths["inter"] = root / "ml-100k.inter.gz"
    if not paths["inter"].exists() and (root / "ml-100k.inter").exists():
        paths["inter"] = root / "ml-100k.inter"
    inter, users, items = (read_atomic(paths[k]) for k in ("inter", "user", "item"))
    require_columns(inter, ["user_id", "item_id", "rating"], paths["inter"])
    require_columns(users, ["user_id", "age", "gender", "occupation", "zip_code"], paths["user"])
    require_columns(items, ["item_id", "release_year", "class"], paths["item"])
    rating = inter["rating"].to_numpy()
    if np.isnan(rating).any():
        raise TableDataError(f"{paths['inter']}: missing ratings")
    keep = (rating >= 4) | (rating <= 2)
    inter = inter[keep]
    labels = (rating[keep] >= 4).astype(np.uint8)

    user_keys = sorted_keys(np.concatenate([users["user_id"].str.strip(), inter["user_id"].str.strip()]))
    item_keys = sorted_keys(np.concatenate([items["item_id"].str.strip(), inter["item_id"].str.strip()]))
    u = _side(users.assign(zip=users["zip_code"]), "user_id", user_keys, ["age", "gender", "occupation", "zip"])
    u["zip"] = _zip(u["zip"], zip_prefix)
    it = _side(items, "item_id", item_keys, ["release_year", "class"])
    bags = [s.split() for s in it["class"].tolist()]
    row_users = pd.Index(user_keys).get_indexer(inter["user_id"].str.strip())
    row_items = pd.Index(item_keys).get_indexer(inter["item_id"].str.strip())
    data = assemble(user_keys, u, item_keys, it, bags, row_users, row_items, labels)
    info = {"ratings": int(len(rating)), "dropped_neutral": int((~keep).sum())}
    return data, info


def read_ml1m(root: Path, neg_ratio: float = 1.0, seed: int = 0,
              zip_prefix: int | None = None) -> tuple[ArrayDataset, dict]:
    """MovieLens 1M implicit interactions + per-user sampled negatives."""
    paths = {k: root / f"{k}.parquet" for k in ("ratings", "users", "movies")}
    for p in paths.values():
        if not p.is_file():
            raise TableDataError(f"no such file: {p}")
    try:
        ratings = pd.read_parquet(paths["ratings"], columns=["userID", "movieID"])
        users = pd.read_parquet(paths["users"])
        movies = pd.read_parquet(paths["movies"])
    except (KeyError, ValueError, OSError) as e:
        raise TableDataError(f"{root}: unreadable MovieLens 1M parquet files ({e})") from None
    require_columns(users, ["userID", "gender", "age", "occupation", "zipcode"], paths["users"])
    require_columns(movies, ["movieID", "title", "genres"], paths["movies"])
    r_users = ratings["userID"].astype(str).str.strip().to_numpy(dtype=object)
    r_items = ratings["movieID"].astype(str).str.strip().to_numpy(dtype=object)

    user_keys = sorted_keys(np.concatenate([users["userID"].astype(str).str.strip().to_numpy(dtype=object), r_users]))
    item_keys = sorted_keys(r_items)
    u = _side(users.assign(zip=users["zipcode"]), "userID", user_keys, ["age", "gender", "occupation", "zip"])
    u["zip"] = _zip(u["zip"], zip_prefix)
    m = _side(movies, "movieID", item_keys, ["title", "genres"])
    m["release_year"] = m["title"].str.extract(_YEAR, expand=False).fillna("")
    bags = [[g for g in s.split("|") if g] for s in m["genres"].tolist()]

    pu = pd.Index(user_keys).get_indexer(r_users).astype(np.int64)
    pi = pd.Index(item_keys).get_indexer(r_items).astype(np.int64)
    nu, ni = sample_negatives(pu, pi, len(user_keys), len(item_keys), neg_ratio, seed)
    labels = np.concatenate([np.ones(len(pu), np.uint8), np.zeros(len(nu), np.uint8)])
    data = assemble(user_keys, u, item_keys, m, bags, np.concatenate([pu, nu]), np.concatenate([pi, ni]), labels)
    info = {"interactions": int(len(pu)), "negatives": int(len(nu)), "neg_ratio": float(neg_ratio)}
    return data, info


# ---------------------------------------------------------------- loading with cache
def _load(name: str, opts: MovieLens100KOptions, sources: list[Path], read) -> DataSplits:
    split = DEFAULT_SPLIT if opts.split is None else opts.split
    settings = {k: v for k, v in asdict(opts).items() if k not in ("root", "cache", "cache_dir")}
    settings.update(split=split, reader_version=READER_VERSION)
    folder = None
    if opts.cache:
        key = settings_key(name, settings, sources)
        folder = (Path(opts.cache_dir).expanduser() if opts.cache_dir else default_cache_root()) / f"{name}-{key}"
        if (folder / "info.json").is_file():
            t0 = time.perf_counter()
            data = ArrayDataset.load(folder)
            rows = tuple(np.load(folder / f"{s}.npy", allow_pickle=False) for s in ("train", "val", "test"))
            info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
            log.info("%s: loaded cached arrays from %s in %.2fs", name, folder, time.perf_counter() - t0)
            return array_splits(data, rows, info)
    t0 = time.perf_counter()
    data, info = read()
    rows = split_rows(len(data), split, opts.seed)
    info = {"dataset": name, **info, "split": split, "split_seed": opts.seed}
    log.info("%s: processed %d rows in %.2fs", name, len(data), time.perf_counter() - t0)
    if folder is not None:
        with atomic_directory(folder) as tmp:
            data.save(tmp)
            for s, r in zip(("train", "val", "test"), rows):
                np.save(tmp / f"{s}.npy", r)
            (tmp / "info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return array_splits(data, rows, info)


def load_ml100k(opts: MovieLens100KOptions) -> DataSplits:
    root = Path(opts.root).expanduser() if opts.root else data_root() / "movielens" / "ml-100k"
    inter = root / "ml-100k.inter.gz"
    sources = [p for p in (inter, root / "ml-100k.inter", root / "ml-100k.user", root / "ml-100k.item") if p.exists()]
    if len(sources) < 3:
        raise TableDataError(f"MovieLens 100K not found in {root} (ml-100k.inter.gz, ml-100k.user, ml-100k.item)")
    return _load("ml100k", opts, sources, lambda: read_ml100k(root, opts.zip_prefix))


def load_ml1m(opts: MovieLens1MOptions) -> DataSplits:
    root = Path(opts.root).expanduser() if opts.root else data_root() / "movielens" / "ml-1m"
    sources = [root / f"{k}.parquet" for k in ("ratings", "users", "movies")]
    missing = [p.name for p in sources if not p.is_file()]
    if missing:
        raise TableDataError(f"MovieLens 1M not found in {root}: missing {', '.join(missing)}")
    if opts.neg_ratio < 0:
        raise TableDataError(f"neg_ratio must be >= 0, got {opts.neg_ratio}")
    return _load("ml1m", opts, sources, lambda: read_ml1m(root, opts.neg_ratio, opts.seed, opts.zip_prefix))
