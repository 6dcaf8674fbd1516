"""Reader of RecBole-style "atomic" files: tab-separated, one header line of typed columns
(``user_id:token``, ``rating:float``, ``class:token_seq``), optionally gzipped."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from .dataset import TableDataError

COLUMN_TYPES = ("token", "token_seq", "float", "float_seq")


def read_atomic(path: str | Path) -> pd.DataFrame:
    """The file as a DataFrame with the types stripped from the column names: ``token`` and
    ``*_seq`` columns as strings (missing -> ""), ``float`` columns as float64."""
    path = Path(path)
    if not path.is_file():
        raise TableDataError(f"no such file: {path}")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                            compression="infer", engine="c")
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        raise TableDataError(f"{path}: not a readable tab-separated atomic file ({e})") from None
    names = {}
    floats = []
    for col in frame.columns:
        name, sep, kind = str(col).rpartition(":")
        if not sep or not name or kind not in COLUMN_TYPES:
            raise TableDataError(f"{path}: header column {col!r} is not name:type with type in {COLUMN_TYPES}")
        if name in names.values():
            raise TableDataError(f"{path}: column {name!r} appears twice")
        names[col] = name
        if kind == "float":
            floats.append(name)
    frame = frame.rename(columns=names)
    for name in floats:
        values = pd.to_numeric(frame[name].replace("", "nan"), errors="coerce")
        bad = values.isna() & (frame[name] != "")
        if bad.any():
            raise TableDataError(f"{path}: column {name!r} has non-numeric value {frame[name][bad].iloc[0]!r}")
        frame[name] = values.astype("float64")
    return frame


def require_columns(frame: pd.DataFrame, columns: list[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TableDataError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(map(str, frame.columns))}")
