"""Training and evaluation of a CTR model: BCE on logits, Adam/Adagrad/SGD (and, for large
tables, sparse gradients with SparseAdam or row-wise Adagrad on the table: ``table_optimizer``,
see :mod:`embedx.tables.optim`), early stopping on validation AUC, seeds, progress bars,
checkpoints (safetensors + JSON) and exact resume.

A checkpoint is written after every epoch as a folder ``checkpoints/epoch-NNNN`` (model and
optimizer tensors in safetensors, the rest in ``state.json``, written atomically), and
``checkpoints/latest.json`` names the newest. Resuming restores the weights, the optimizer,
the early-stopping state and the torch / numpy / python random states; batch order is a
function of (seed, epoch), so a resumed run continues exactly as an uninterrupted one.
The best model (by validation AUC) is kept in ``best/model.safetensors`` and restored at
the end of :meth:`Trainer.fit`. (On a GPU the CUDA random state is not checkpointed: resume is
exact on CPU, and on GPU for models without dropout.)

A table may define ``post_step()`` (for example to re-project or re-quantise its weights);
the trainer calls it after every optimizer step.
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from scipy.stats import rankdata
from tqdm.auto import tqdm

from indexing.fsutil import atomic_write_bytes, atomic_write_text

from ..checkpoint import (detached, join_tensors, latest_checkpoint, read_state, read_tensors, split_tensors,
                          write_checkpoint)

from .base import TableConfigError
from .config import ConfigError, TrainerConfig
from .data.dataset import Batch, BatchSource, num_batches
from .models import CTRModel
from .optim import OptimizerSet, optimizer_name, sparse_optimizer

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
EVAL_SAMPLE_SEED = 20231  # the rows a capped evaluation (max_eval_batches) reads


# ---------------------------------------------------------------- metrics
def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties averaged.
    NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy, computed stably from logits: softplus(z) - y z."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if not len(y):
        return float("nan")
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- trainer
class Trainer:
    """Fits ``model`` with ``config``; ``output_dir`` (optional) holds checkpoints and the best model.

    ``signature`` is a JSON-able description of what the weights belong to (data fields,
    cardinalities, table method, dim); a checkpoint with a different signature is refused.
    """

    def __init__(self, model: CTRModel, config: TrainerConfig | None = None, *, seed: int = 0,
                 output_dir: str | Path | None = None, signature: dict[str, Any] | None = None):
        self.model = model
        self.cfg = config or TrainerConfig()
        self.seed = int(seed)
        self.output_dir = Path(output_dir) if output_dir else None
        self.signature = signature or {}
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        try:
            self.device = torch.device(self.cfg.device)
        except RuntimeError as e:
            raise ConfigError(f"trainer.device: {e}") from None
        self.model.to(self.device)
        self.optimizer = self._make_optimizer()
        self.epoch = 0                     # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_auc = -math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self._best_state: dict[str, torch.Tensor] | None = None

    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if self.device.type == "cpu":
            return batch.ids, batch.dense, batch.labels
        return (batch.ids.to(self.device, non_blocking=True),
                None if batch.dense is None else batch.dense.to(self.device, non_blocking=True),
                batch.labels.to(self.device, non_blocking=True))

    def _make_optimizer(self) -> torch.optim.Optimizer | OptimizerSet:
        """``optimizer`` over the head and the table; with ``table_optimizer`` the table's
        row-gathered parameters get sparse gradients and that optimizer instead (both are then
        stepped as one :class:`OptimizerSet`)."""
        c = self.cfg
        table = self.model.table
        sparse: list[torch.nn.Parameter] = []
        if c.table_optimizer is not None:
            try:
                sparse = [p for p in table.set_sparse_gradients(True) if p.requires_grad]
            except TableConfigError as e:
                raise ConfigError(f"trainer.table_optimizer={c.table_optimizer}: {e}") from None
        sparse_ids = {id(p) for p in sparse}
        table_params = [p for p in table.parameters() if p.requires_grad and id(p) not in sparse_ids]
        head_params = [p for p in self.model.head_parameters() if p.requires_grad]
        groups = []
        if table_params:
            groups.append({"params": table_params, "lr": c.table_lr or c.lr, "weight_decay": 0.0})
        if head_params:
            groups.append({"params": head_params, "lr": c.lr, "weight_decay": c.weight_decay})
        if not groups and not sparse:
            raise ConfigError("the model has no trainable parameters")
        optimizers = []
        if groups:
            if c.optimizer == "adam":
                optimizers.append(torch.optim.Adam(groups))
            elif c.optimizer == "adagrad":
                optimizers.append(torch.optim.Adagrad(groups))
            elif c.optimizer == "sgd":
                optimizers.append(torch.optim.SGD(groups))
            else:
                raise ConfigError(f"unknown optimizer {c.optimizer!r} (adam, adagrad, sgd)")
        if sparse:
            optimizers.append(sparse_optimizer(c.table_optimizer, sparse, c.table_lr or c.lr))
        return optimizers[0] if len(optimizers) == 1 else OptimizerSet(optimizers)

    # -- evaluation ---------------------------------------------------------------
    @torch.no_grad()
    def predict(self, source: BatchSource, max_batches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels over ``source``, in its order; with ``max_batches``, over that many
        batches of a fixed random sample of its rows (the same rows on every call): a prefix
        would not do, since a split may be ordered (MovieLens 1M lists positives first)."""
        self.model.eval()
        logits, labels = [], []
        rows = (source.batches(self.cfg.eval_batch_size) if max_batches is None else
                source.batches(self.cfg.eval_batch_size, shuffle=True, seed=EVAL_SAMPLE_SEED, epoch=0))
        for i, batch in enumerate(rows):
            if max_batches is not None and i >= max_batches:
                break
            ids, dense, _ = self._to_device(batch)
            logits.append(self.model(ids, dense).float().cpu().numpy())
            labels.append(batch.labels.numpy())
        if not logits:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate(logits), np.concatenate(labels)

    def evaluate(self, source: BatchSource, max_batches: int | None = None) -> dict[str, float]:
        logits, labels = self.predict(source, max_batches if max_batches is not None else self.cfg.max_eval_batches)
        return {"auc": roc_auc(labels, logits), "logloss": log_loss_from_logits(labels, logits),
                "rows": int(len(labels))}

    # -- training -----------------------------------------------------------------
    def fit(self, train: BatchSource, val: BatchSource) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; restore the best weights; return a summary."""
        c = self.cfg
        if c.resume:
            self.resume()
        total = num_batches(train, c.batch_size)
        if c.max_train_batches is not None:
            total = min(total, c.max_train_batches)
        post_step = getattr(self.model.table, "post_step", None)
        samples, seconds, stopped = 0, 0.0, False
        if self.epoch > 0 and self._should_stop():
            stopped = True
        while self.epoch < c.epochs and not stopped:
            epoch = self.epoch
            self.model.train()
            n_seen, loss_sum = 0, 0.0
            bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{c.epochs}", unit="batch", disable=not c.progress,
                       leave=False, dynamic_ncols=True)
            t0 = time.perf_counter()
            for i, batch in enumerate(train.batches(c.batch_size, shuffle=True, seed=self.seed, epoch=epoch)):
                if i >= total:
                    break
                ids, dense, labels = self._to_device(batch)
                loss = F.binary_cross_entropy_with_logits(self.model(ids, dense), labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.optimizer.step()
                if post_step is not None:
                    post_step()
                b = len(batch.labels)
                n_seen += b
                loss_sum += loss.item() * b
                bar.update(1)
                if (i + 1) % c.log_every == 0:
                    bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}")
                    log.debug("epoch %d batch %d: loss %.4f", epoch + 1, i + 1, loss_sum / n_seen)
            train_seconds = time.perf_counter() - t0
            bar.close()
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"training loss is not finite in epoch {epoch + 1}")
            metrics = self.evaluate(val)
            samples += n_seen
            seconds += train_seconds
            self.epoch = epoch + 1
            record = {"epoch": self.epoch, "train_loss": loss_sum / max(n_seen, 1), "val_auc": metrics["auc"],
                      "val_logloss": metrics["logloss"], "train_samples": n_seen, "train_seconds": train_seconds,
                      "samples_per_s": n_seen / train_seconds if train_seconds > 0 else float("nan")}
            self.history.append(record)
            self._update_best(metrics["auc"])
            log.info("epoch %d: loss %.4f, val AUC %.4f, val logloss %.4f, %.0f samples/s%s", self.epoch,
                     record["train_loss"], metrics["auc"], metrics["logloss"], record["samples_per_s"],
                     "" if self.bad_epochs else " (best)")
            if self.output_dir is not None and c.checkpoint:
                self.save_checkpoint()
            stopped = self._should_stop()
        if stopped:
            log.info("early stop after epoch %d: no validation AUC gain for %d epoch(s)", self.epoch, self.bad_epochs)
        self.restore_best()
        return {
            "epochs": self.epoch, "best_epoch": self.best_epoch,
            "best_val_auc": self.best_auc if self.best_epoch is not None else float("nan"),
            "stopped_early": stopped and self.epoch < c.epochs, "history": self.history,
            "train_samples": samples, "train_seconds": seconds,
            "throughput": samples / seconds if seconds > 0 else float("nan"),
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def _should_stop(self) -> bool:
        return self.bad_epochs > 0 and self.bad_epochs >= self.cfg.patience

    def _update_best(self, auc: float) -> None:
        if not math.isfinite(auc):
            log.warning("validation AUC is undefined (one class only); counting the epoch as no gain")
        if math.isfinite(auc) and auc > self.best_auc + self.cfg.min_delta:
            self.best_auc, self.best_epoch, self.bad_epochs = auc, self.epoch, 0
            state = detached(self.model.state_dict())
            if self.output_dir is None:
                self._best_state = state  # kept in memory only when there is no folder to keep it in
            else:
                (self.output_dir / "best").mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(self.output_dir / "best" / "model.safetensors", st_save(state))
                atomic_write_text(self.output_dir / "best" / "best.json",
                                  json.dumps({"epoch": self.epoch, "val_auc": auc, **self.signature}, indent=1))
        else:
            self.bad_epochs += 1

    def restore_best(self) -> None:
        """Load the best weights seen (by validation AUC), if any."""
        if self.best_epoch is None:
            return
        state = self._best_state
        if state is None and self.output_dir is not None and (self.output_dir / "best" / "model.safetensors").is_file():
            state = st_load((self.output_dir / "best" / "model.safetensors").read_bytes())
        if state is not None:
            self.model.load_state_dict(state)

    # -- checkpoints ------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        if self.output_dir is None:
            raise ConfigError("checkpoints need an output_dir")
        return self.output_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write the state after ``self.epoch`` epochs; keep the newest ``keep_checkpoints``."""
        opt_state = self.optimizer.state_dict()
        opt_tensors, opt_scalars = split_tensors(opt_state["state"])
        state = {
            "format_version": CHECKPOINT_VERSION, "epoch": self.epoch, "seed": self.seed,
            "signature": self.signature, "history": self.history, "best_auc": _json_float(self.best_auc),
            "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "optimizer": {"class": optimizer_name(self.optimizer), "param_groups": opt_state["param_groups"],
                          "scalars": opt_scalars},
            "numpy_random": _np_state_to_json(np.random.get_state()),
            "python_random": _py_state_to_json(random.getstate()),
        }
        return write_checkpoint(self.checkpoint_root, f"epoch-{self.epoch:04d}",
                                tensors={"model": detached(self.model.state_dict()), "optimizer": opt_tensors,
                                         "rng": {"torch": torch.get_rng_state()}},
                                state=state, pointer={"epoch": self.epoch}, keep=self.cfg.keep_checkpoints)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoint_root)

    def resume(self, folder: Path | None = None) -> bool:
        """Restore the latest (or the given) checkpoint; False when there is none."""
        folder = folder or self.latest_checkpoint()
        if folder is None:
            log.info("no checkpoint in %s; starting from scratch", self.checkpoint_root)
            return False
        state = read_state(folder)
        if state.get("format_version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{folder}: checkpoint format {state.get('format_version')}, expected {CHECKPOINT_VERSION}")
        if state["signature"] != self.signature:
            diff = sorted(k for k in set(state["signature"]) | set(self.signature)
                          if state["signature"].get(k) != self.signature.get(k))
            raise ConfigError(f"{folder}: the checkpoint was trained on different data or table ({', '.join(diff)} "
                              f"differ): checkpoint {[state['signature'].get(k) for k in diff]}, "
                              f"now {[self.signature.get(k) for k in diff]}")
        if state["optimizer"]["class"] != optimizer_name(self.optimizer):
            raise ConfigError(f"{folder}: checkpoint optimizer {state['optimizer']['class']}, "
                              f"configured {optimizer_name(self.optimizer)}")
        self.model.load_state_dict(read_tensors(folder, "model"))
        entries = join_tensors(read_tensors(folder, "optimizer"), state["optimizer"]["scalars"])
        self.optimizer.load_state_dict({"state": {int(k): v for k, v in entries.items()},
                                        "param_groups": state["optimizer"]["param_groups"]})
        torch.set_rng_state(read_tensors(folder, "rng")["torch"])
        np.random.set_state(_np_state_from_json(state["numpy_random"]))
        random.setstate(_py_state_from_json(state["python_random"]))
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best_auc = float(state["best_auc"])
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = int(state["bad_epochs"])
        log.info("resumed from %s (epoch %d)", folder, self.epoch)
        return True


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)


def _np_state_to_json(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _np_state_from_json(data: list) -> tuple:
    name, keys, pos, has_gauss, cached = data
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _py_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return version, tuple(internal), gauss
