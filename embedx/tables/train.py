"""One training run from a YAML config: data -> table -> model -> trainer -> metrics.json.

``train_from_config("embedx/tables/configs/ml1m-dcnv2.yaml", ["table.method=hash", "table.rate=0.01"])``
returns (and writes to ``output_dir/metrics.json``) validation and test AUC / logloss, the
table's memory, parameter counts, training throughput, peak RSS and the epoch history.
Also a command: ``python -m embedx.tables.train CONFIG [key=value ...]``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import click
import yaml

from indexing.fsutil import atomic_write_text

from .base import TableConfigError
from .config import ConfigError, RunConfig, config_to_dict, load_config, resolve_per_field
from .data import TableDataError, load_dataset

log = logging.getLogger(__name__)


def run_signature(cfg: RunConfig, field_names: list[str], cardinalities: list[int], num_dense: int,
                  budget_bytes: int) -> dict[str, Any]:
    """What a checkpoint's weights belong to; resuming on anything else is refused."""
    return {"data": cfg.data.name, "fields": field_names, "cardinalities": cardinalities, "num_dense": num_dense,
            "method": cfg.table.method, "dim": cfg.table.dim, "budget_bytes": budget_bytes, "model": cfg.model.name}


def build_run_model(cfg: RunConfig, field_names: list[str], cardinalities: list[int], num_dense: int,
                    budget: float | int | None = None):
    """The table and model a config describes for data with these fields (seeded by ``cfg.seed``)."""
    from .models import build_model
    from .registry import build_table, get_method, method_hparams
    from .trainer import seed_everything

    hparams = {**cfg.table.params, **resolve_per_field(cfg.table.per_field, field_names)}
    accepted = method_hparams(get_method(cfg.table.method))
    if "seed" not in hparams and accepted is not None and "seed" in accepted:
        hparams["seed"] = cfg.seed  # a table's own init / hash seed follows the run's seed unless set
    seed_everything(cfg.seed)
    table = build_table(cfg.table.method, cardinalities, cfg.table.dim,
                        cfg.table.budget if budget is None else budget, **hparams)
    return table, build_model(cfg.model.name, table, num_dense, **cfg.model.params)


def train_from_config(path: str | Path | None = None, overrides: Iterable[str] = (), *,
                      config: RunConfig | None = None) -> dict[str, Any]:
    """Train and evaluate the run described by the config file at ``path`` (with ``a.b=c``
    overrides) or by ``config``; returns the metrics dict (also written as JSON)."""
    from .trainer import Trainer

    cfg = config if config is not None else load_config(path, list(overrides))
    t_start = time.perf_counter()
    try:
        splits = load_dataset(cfg.data.name, fields=cfg.data.fields, **cfg.data.options)
    except TableDataError as e:
        if cfg.data.fields is not None and "unknown field" in str(e):
            raise ConfigError(f"data.fields: {e}") from None
        raise
    names, cards = splits.field_names, splits.cardinalities
    table, model = build_run_model(cfg, names, cards, splits.num_dense)
    out = Path(cfg.output_dir) if cfg.output_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    signature = run_signature(cfg, names, cards, splits.num_dense, table.budget.bytes)
    trainer = Trainer(model, cfg.trainer, seed=cfg.seed, output_dir=out, signature=signature)
    fit = trainer.fit(splits.train, splits.val)
    val = trainer.evaluate(splits.val)
    test = trainer.evaluate(splits.test)

    table_params = sum(p.numel() for p in table.parameters())
    head_params = sum(p.numel() for p in model.head_parameters())
    result = {
        "name": cfg.name, "data": cfg.data.name, "model": cfg.model.name, "method": cfg.table.method,
        "dim": cfg.table.dim, "seed": cfg.seed,
        "val_auc": val["auc"], "val_logloss": val["logloss"], "test_auc": test["auc"], "test_logloss": test["logloss"],
        "budget_bytes": table.budget.bytes, "memory_bytes": table.memory_bytes(),
        "training_memory_bytes": table.training_memory_bytes(),
        "full_table_bytes": sum(cards) * cfg.table.dim * 4,
        "params": table_params + head_params, "table_params": table_params, "head_params": head_params,
        "throughput": fit["throughput"], "train_seconds": fit["train_seconds"], "train_samples": fit["train_samples"],
        "epochs": fit["epochs"], "best_epoch": fit["best_epoch"], "stopped_early": fit["stopped_early"],
        "peak_rss_bytes": fit["peak_rss_bytes"], "wall_seconds": time.perf_counter() - t_start,
        "history": fit["history"], "data_info": splits.info, "config": config_to_dict(cfg),
    }
    if out is not None:
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=1, default=_json_default))
    log.info("%s: test AUC %.4f, logloss %.4f, table %s B, %.0f samples/s", cfg.name or cfg.table.method,
             test["auc"], test["logloss"], f"{result['memory_bytes']:,}", result["throughput"])
    return result


def load_trained(output_dir: str | Path, best: bool = True):
    """The trained model of a run folder (``config.yaml`` + ``best/`` or the latest checkpoint),
    rebuilt without reading the data: the fields and cardinalities come from the checkpoint."""
    from safetensors.torch import load_file

    out = Path(output_dir)
    cfg = load_config(out / "config.yaml")
    if best and (out / "best" / "best.json").is_file():
        sig = json.loads((out / "best" / "best.json").read_text(encoding="utf-8"))
        weights = out / "best" / "model.safetensors"
    else:
        pointer = out / "checkpoints" / "latest.json"
        if not pointer.is_file():
            raise ConfigError(f"{out}: no best model and no checkpoint to load")
        folder = out / "checkpoints" / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
        sig = json.loads((folder / "state.json").read_text(encoding="utf-8"))["signature"]
        weights = folder / "model.safetensors"
    _, model = build_run_model(cfg, sig["fields"], sig["cardinalities"], sig["num_dense"], int(sig["budget_bytes"]))
    model.load_state_dict(load_file(weights))
    model.eval()
    return model, cfg


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


@click.command("tables", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML run config (see embedx/tables/configs/).")
@click.argument("overrides", nargs=-1)
def cli(config_path: Path, overrides: tuple[str, ...]) -> None:
    """Train a CTR model over a compressed embedding table. OVERRIDES are key.sub=value
    (values parsed as YAML), e.g. table.method=hash table.rate=0.01 trainer.epochs=3."""
    try:
        result = train_from_config(config_path, overrides)
    except (TableConfigError, TableDataError) as e:   # ConfigError included; also a budget below a floor
        raise click.ClickException(str(e)) from None
    summary = {k: result[k] for k in ("method", "model", "val_auc", "test_auc", "test_logloss", "memory_bytes",
                                      "params", "throughput", "epochs", "peak_rss_bytes")}
    click.echo(json.dumps(summary, indent=1, default=_json_default))


def main() -> None:  # pragma: no cover - thin wrapper
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
