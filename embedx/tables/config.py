"""The one YAML format for a tables run: data, model, table (method, budget, hyperparameters),
trainer, with command-line overrides ``a.b=c``.

::

    seed: 0                    # model init and batch order (the data has its own seed)
    output_dir: runs/ml1m-dcnv2
    data:    {name: ml1m, neg_ratio: 1, fields: null}           # dataset options inline
    model:   {name: dcnv2, cross_layers: 3, deep: [256, 256]}    # model hyperparameters inline
    table:   {method: hash, dim: 16, rate: 0.01,                 # budget: `rate` or `bytes`
              per_field: {chunks: {user_id: 4, default: 1}}}     # + method hyperparameters inline
    trainer: {epochs: 10, batch_size: 2048, lr: 0.001, patience: 2}

Each block's inline keys are checked against what they configure (the dataset's options
class, the model's and the table method's constructor signatures, :class:`TrainerConfig`),
so a misspelt key fails at load time with the accepted keys in the message. Values of
overrides are parsed as YAML (``trainer.lr=1e-3``, ``model.deep=[64,32]``, ``table.bytes=null``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from embedx import config as _shared
from embedx.config import _Loader, parse_value, read_config, reraise_as  # noqa: F401 (re-exported)

from .base import TableConfigError


class ConfigError(TableConfigError, _shared.ConfigError):
    """A run configuration that cannot be used: unknown keys, wrong types, fields that do not
    match the data. A :class:`TableConfigError` and an :class:`embedx.config.ConfigError`, so
    one ``except`` of either catches every config problem."""


@dataclass
class TrainerConfig:
    """Training settings; see :class:`embedx.tables.trainer.Trainer`."""

    epochs: int = 10
    batch_size: int = 2048
    eval_batch_size: int = 16384
    optimizer: str = "adam"           # adam | adagrad | sgd
    lr: float = 1e-3
    table_lr: float | None = None     # learning rate of the table's parameters (default: lr)
    # sparse row gradients for the table's gathered rows, with this optimizer: sparse_adam |
    # rowwise_adagrad (null: the table trains densely with `optimizer`); see embedx.tables.optim
    table_optimizer: str | None = None
    weight_decay: float = 0.0         # on the non-table parameters only
    grad_clip: float | None = None    # max global gradient norm
    patience: int = 2                 # epochs without a validation AUC gain before stopping
    min_delta: float = 0.0            # smallest AUC gain that counts as a gain
    max_train_batches: int | None = None  # cap per epoch (streamed or smoke runs)
    max_eval_batches: int | None = None   # cap: that many batches of a fixed random sample of the rows
    threads: int | None = None        # torch intra-op threads (default: torch's choice)
    device: str = "cpu"               # torch device of the model and batches ("cuda" where there is one)
    progress: bool = True             # tqdm bars
    log_every: int = 200              # batches between loss log lines
    checkpoint: bool = True           # write a checkpoint after every epoch (needs output_dir)
    keep_checkpoints: int = 1
    resume: bool = False              # continue from output_dir's latest checkpoint


@dataclass
class DataConfig:
    name: str
    fields: list[str] | None = None   # a subset / order of the dataset's fields (default: all)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TableSpec:
    method: str = "full"
    dim: int = 16
    rate: float | None = None         # fraction of the float32 full table kept (0.01 = 100x)
    bytes: int | None = None          # or an absolute budget
    per_field: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> float | int | None:
        return self.rate if self.rate is not None else self.bytes


@dataclass
class RunConfig:
    data: DataConfig
    model: ModelConfig
    table: TableSpec
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    output_dir: str | None = None
    name: str | None = None


_TOP_KEYS = {"data", "model", "table", "trainer", "seed", "output_dir", "name"}
_DATA_KEYS = {"name", "fields"}
_MODEL_KEYS = {"name"}
_TABLE_KEYS = {"method", "dim", "rate", "bytes", "per_field"}
PER_FIELD_DEFAULT = "default"


# ---------------------------------------------------------------- shared helpers
# The generic helpers live in embedx.config; these names keep working here and raise this
# package's ConfigError (a TableConfigError too) instead of the shared base class.
parse_overrides = reraise_as(ConfigError)(_shared.parse_overrides)
apply_overrides = reraise_as(ConfigError)(_shared.apply_overrides)
coerce = reraise_as(ConfigError)(_shared.coerce)
build_dataclass = reraise_as(ConfigError)(_shared.build_dataclass)
check_signature = reraise_as(ConfigError)(_shared.check_signature)


# ---------------------------------------------------------------- loading
def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig` (structure and every block's keys)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config is a mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                          f"expected some of: {', '.join(sorted(_TOP_KEYS))}")
    for block in ("data", "model", "table"):
        if not isinstance(raw.get(block), Mapping):
            raise ConfigError(f"the config needs a `{block}:` block (a mapping)")

    data_raw = dict(raw["data"])
    data = build_dataclass(DataConfig, {k: data_raw.pop(k) for k in _DATA_KEYS if k in data_raw}, "data")
    data.options = data_raw
    model_raw = dict(raw["model"])
    model = build_dataclass(ModelConfig, {k: model_raw.pop(k) for k in _MODEL_KEYS if k in model_raw}, "model")
    model.params = model_raw
    table_raw = dict(raw["table"])
    table = build_dataclass(TableSpec, {k: table_raw.pop(k) for k in _TABLE_KEYS if k in table_raw}, "table")
    table.params = table_raw
    trainer = build_dataclass(TrainerConfig, raw.get("trainer"), "trainer")
    top = {k: raw[k] for k in ("seed", "output_dir", "name") if k in raw}
    cfg = RunConfig(data=data, model=model, table=table, trainer=trainer,
                    **{k: coerce(v, typing.get_type_hints(RunConfig)[k], k) for k, v in top.items()})
    _check_values(cfg)
    _check_components(cfg)
    return cfg


def _check_values(cfg: RunConfig) -> None:
    t, tr = cfg.table, cfg.trainer
    if t.rate is not None and t.bytes is not None:
        raise ConfigError("table: give the budget as `rate` or as `bytes`, not both")
    if t.rate is not None and not 0 < t.rate <= 1:
        raise ConfigError(f"table.rate must be in (0, 1] (the fraction of the full table kept), got {t.rate}")
    if t.bytes is not None and t.bytes <= 0:
        raise ConfigError(f"table.bytes must be positive, got {t.bytes}")
    if t.dim <= 0:
        raise ConfigError(f"table.dim must be positive, got {t.dim}")
    for name in ("epochs", "batch_size", "eval_batch_size", "log_every", "keep_checkpoints"):
        if getattr(tr, name) <= 0:
            raise ConfigError(f"trainer.{name} must be positive, got {getattr(tr, name)}")
    if tr.patience < 0:
        raise ConfigError(f"trainer.patience must be >= 0, got {tr.patience}")
    if tr.lr <= 0 or (tr.table_lr is not None and tr.table_lr <= 0):
        raise ConfigError("trainer.lr and trainer.table_lr must be positive")
    if tr.optimizer not in ("adam", "adagrad", "sgd"):
        raise ConfigError(f"trainer.optimizer must be adam, adagrad or sgd, got {tr.optimizer!r}")
    if tr.table_optimizer is not None:
        from .optim import SPARSE_OPTIMIZERS
        if tr.table_optimizer not in SPARSE_OPTIMIZERS:
            raise ConfigError(f"trainer.table_optimizer must be null or one of {', '.join(SPARSE_OPTIMIZERS)}, "
                              f"got {tr.table_optimizer!r}")
        if tr.grad_clip:
            raise ConfigError("trainer.grad_clip cannot clip sparse table gradients; unset it or table_optimizer")
    if tr.resume and not cfg.output_dir:
        raise ConfigError("trainer.resume needs output_dir (where the checkpoints are)")
    for param, values in t.per_field.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"table.per_field.{param} must map field names to values, got {values!r}")
        if param in t.params:
            raise ConfigError(f"table: {param!r} is given both inline and in per_field")


def _check_components(cfg: RunConfig) -> None:
    """Check inline keys against the dataset, model and table method they configure."""
    from .data import dataset_options
    from .models import model_class
    from .registry import check_hparams, get_method

    from .data import TableDataError

    try:
        options = dataset_options(cfg.data.name)
    except TableDataError as e:
        raise ConfigError(f"data: {e}") from None
    build_dataclass(options, cfg.data.options, f"data ({cfg.data.name})")
    check_signature(model_class(cfg.model.name), cfg.model.params, f"model ({cfg.model.name})",
                    skip=("table", "num_dense"))
    try:
        check_hparams(get_method(cfg.table.method), {**cfg.table.params, **cfg.table.per_field})
    except ConfigError:
        raise
    except TableConfigError as e:
        raise ConfigError(f"table: {e}") from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                raw: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (or take ``raw``), apply ``a.b=c`` overrides, validate."""
    with reraise_as(ConfigError):
        raw = read_config(path, overrides, raw)
    return config_from_dict(raw)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The plain mapping (inline blocks again) that :func:`config_from_dict` reads back."""
    return {
        "name": cfg.name, "seed": cfg.seed, "output_dir": cfg.output_dir,
        "data": {"name": cfg.data.name, "fields": cfg.data.fields, **cfg.data.options},
        "model": {"name": cfg.model.name, **cfg.model.params},
        "table": {"method": cfg.table.method, "dim": cfg.table.dim, "rate": cfg.table.rate,
                  "bytes": cfg.table.bytes, "per_field": cfg.table.per_field, **cfg.table.params},
        "trainer": dataclasses.asdict(cfg.trainer),
    }


def resolve_per_field(per_field: Mapping[str, Mapping[str, Any]], field_names: Sequence[str]) -> dict[str, list]:
    """``{param: {field: value, default: value}}`` -> ``{param: [value per field, in data order]}``.

    Names that are not fields of the data, and fields left without a value and without a
    ``default``, are errors.
    """
    out: dict[str, list] = {}
    names = list(field_names)
    for param, by_field in per_field.items():
        unknown = sorted(set(by_field) - set(names) - {PER_FIELD_DEFAULT})
        if unknown:
            raise ConfigError(f"table.per_field.{param}: {', '.join(map(repr, unknown))} are not fields of the "
                              f"data; its fields are: {', '.join(names)}")
        missing = [n for n in names if n not in by_field]
        if missing and PER_FIELD_DEFAULT not in by_field:
            raise ConfigError(f"table.per_field.{param}: no value for field(s) {', '.join(missing)} "
                              f"and no `{PER_FIELD_DEFAULT}`")
        out[param] = [by_field.get(n, by_field.get(PER_FIELD_DEFAULT)) for n in names]
    return out
