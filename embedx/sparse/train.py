"""Train the inference-free sparse document encoder: ``embedx train sparse --config X`` or
``python -m embedx.sparse.train --config X [key=value ...]``.

Reads only the prepared file (:mod:`embedx.sparse.dataset`), the corpus and the start model
folder, and imports only torch, transformers, numpy, scipy, yaml, tqdm and click: it runs on a
GPU machine without the index layer's FAISS, LMDB or Lucene. Stages run in order (the paper
pre-trains on the corpus itself, then fine-tunes on the training queries); each stage has its
own AdamW optimiser with linear warm-up and decay, FLOPS schedule and losses.

Output folder::

    config.yaml            the validated config
    log.jsonl              one line per logged step: losses, FLOPS, lambda, lr, document terms
    checkpoints/           step-XXXXXXX/ (weights, optimiser, RNG, sampler) + latest.json
    model/                 the trained document encoder (Hugging Face folder: safetensors + tokenizer)
    query_encoder/         the IDF query encoder (serving.encoders.idf format)
    summary.json           final numbers
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import click
import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from indexing.fsutil import atomic_write_text

from ..checkpoint import join_tensors, latest_checkpoint, read_state, read_tensors, split_tensors, write_checkpoint

from .config import SparseConfigError, SparseRunConfig, StageConfig, config_to_dict, load_config, run_signature
from .dataset import PreparedData, PreparedDataError, StageSampler
from .losses import (ensemble_teacher_scores, flops_lambda, flops_loss, infonce_loss, kl_distill_loss,
                     margin_mse_loss, student_scores)
from .query import QueryWeights, idf_tokenizer

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class _Student(nn.Module):
    """The trained parameters: the document encoder and the query token weights."""

    def __init__(self, encoder: nn.Module, query: QueryWeights):
        super().__init__()
        self.encoder = encoder
        self.query = query


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SparseConfigError("trainer.device is cuda but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


def _pad(id_lists: list[np.ndarray], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in id_lists)
    ids = np.full((len(id_lists), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(id_lists), width), dtype=np.int64)
    for i, x in enumerate(id_lists):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


class SparseTrainer:
    """One training run. ``run()`` trains every stage (resuming when a checkpoint exists) and
    saves the final encoders; ``stop_at`` / ``time_limit`` stop early with a checkpoint."""

    def __init__(self, cfg: SparseRunConfig, *, data: PreparedData | None = None, corpus: dict | None = None):
        from embedx.data import load_corpus
        from serving.encoders.idf import IdfQueryEncoder

        from .encoder import SparseDocEncoder

        self.cfg = cfg
        tr = cfg.trainer
        if tr.threads:
            torch.set_num_threads(tr.threads)
        self.device = resolve_device(tr.device)
        self.amp = self.device.type == "cuda" and tr.precision in ("auto", "bf16")
        if tr.precision == "bf16" and self.device.type != "cuda":
            log.warning("bf16 autocast is only used on CUDA; training in fp32 on %s", self.device)
        self.out = Path(cfg.output_dir) if cfg.output_dir else None

        self.data = data if data is not None else PreparedData.load(cfg.data.prepared)
        for name in cfg.stages:
            split = cfg.stage_data(name)
            if split not in self.data.splits:
                raise SparseConfigError(f"stages.{name}: the prepared file has no split {split!r}; "
                                        f"it has {sorted(self.data.splits)}")
        if cfg.uses_teachers():
            missing = [t for t in cfg.distill.teachers if t not in self.data.teachers]
            if missing:
                raise SparseConfigError(f"distill.teachers: the prepared file has no scores of {missing}; "
                                        f"it has {self.data.teachers}")
        self.corpus = corpus if corpus is not None else load_corpus(cfg.data.corpus_path())

        torch.manual_seed(cfg.seed)
        try:
            encoder = SparseDocEncoder.from_pretrained(cfg.model.path)
        except (OSError, ValueError) as e:
            raise SparseConfigError(f"model.path: cannot load a masked-LM from {cfg.model.path!r}: {e}") from None
        self.tokenizer = encoder.tokenizer
        try:
            tok = idf_tokenizer(self.tokenizer)
        except ValueError as e:
            raise SparseConfigError(f"model.path: {e}") from None
        self.idf_encoder = IdfQueryEncoder.from_corpus(tok, self.data.doc_texts(self.corpus, "title_text"))
        query = QueryWeights(self.idf_encoder.idf, cfg.query.mode, min_idf=cfg.query.min_idf)
        self.model = _Student(encoder, query).to(self.device)
        self._doc_tokens: dict[str, list[np.ndarray]] = {}
        self._query_tokens: dict[str, list[np.ndarray]] = {}
        self.global_step = 0
        self.stage_index = 0
        self.stage_step = 0

    # -- tokens ---------------------------------------------------------------------------
    def doc_tokens(self, doc_field: str) -> list[np.ndarray]:
        if doc_field not in self._doc_tokens:
            texts = self.data.doc_texts(self.corpus, doc_field)
            enc = self.tokenizer(texts, truncation=True, max_length=self.cfg.model.max_length,
                                 add_special_tokens=True)
            self._doc_tokens[doc_field] = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        return self._doc_tokens[doc_field]

    def query_tokens(self, split_name: str) -> list[np.ndarray]:
        if split_name not in self._query_tokens:
            texts = self.data.splits[split_name].query_texts.tolist()
            self._query_tokens[split_name] = self.idf_encoder.token_ids(texts)
        return self._query_tokens[split_name]

    # -- optimisation -----------------------------------------------------------------------
    def _optimizer(self, stage: StageConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        decay, no_decay = [], []
        for name, p in self.model.encoder.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and "norm" not in name.lower() else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.trainer.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if self.cfg.query.mode == "learnable":
            groups.append({"params": [self.model.query.idf], "weight_decay": 0.0,
                           "lr": self.cfg.query.lr or stage.lr})
        opt = torch.optim.AdamW(groups, lr=stage.lr)
        warm, total = stage.warmup_steps, stage.steps

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def _losses(self, stage_name: str, batch, step: int) -> tuple[torch.Tensor, dict]:
        """The loss of ``batch`` at ``step`` of the stage, and its logged parts."""
        stage = self.cfg.stages[stage_name]
        split_name = self.cfg.stage_data(stage_name)
        split = self.data.splits[split_name]
        flat_rows = batch.docs[batch.valid]
        cols = np.zeros(batch.docs.shape, dtype=np.int64)
        cols[batch.valid] = np.arange(len(flat_rows))
        tokens = self.doc_tokens(split.doc_field)
        ids, mask = _pad([tokens[r] for r in flat_rows], self.tokenizer.pad_token_id or 0, self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            doc_w = self.model.encoder(ids, mask)
        doc_w = doc_w.float()
        q_tokens = self.query_tokens(split_name)
        q_vec = self.model.query.encode([q_tokens[i] for i in batch.queries])
        scores = student_scores(q_vec, doc_w)                                  # (B, N)
        cols_t = torch.from_numpy(cols).to(self.device)
        valid_t = torch.from_numpy(batch.valid).to(self.device)
        group = torch.gather(scores, 1, cols_t)                                # (B, 1 + n)
        parts: dict[str, float] = {}
        total = scores.new_zeros(())
        w = stage.losses
        if w.get("infonce", 0) > 0:
            if stage.in_batch_negatives:
                exclude = np.zeros(scores.shape, dtype=bool)
                for i, q in enumerate(batch.queries):
                    exclude[i] = np.isin(flat_rows, split.positives(q))
                loss = infonce_loss(scores, cols_t[:, 0], torch.from_numpy(exclude).to(self.device))
            else:
                loss = infonce_loss(group, torch.zeros(len(group), dtype=torch.long, device=self.device), ~valid_t)
            parts["infonce"] = loss.item()
            total = total + w["infonce"] * loss
        if w.get("kl", 0) > 0 or w.get("marginmse", 0) > 0:
            teacher = ensemble_teacher_scores(
                [torch.from_numpy(np.nan_to_num(batch.teacher[t])).to(self.device) for t in self.cfg.distill.teachers],
                scale=self.cfg.distill.scale, valid=valid_t)
            tau = self.cfg.distill.temperature
            if w.get("kl", 0) > 0:
                loss = kl_distill_loss(group, teacher, tau, valid=valid_t)
                parts["kl"] = loss.item()
                total = total + w["kl"] * loss
            if w.get("marginmse", 0) > 0:
                loss = margin_mse_loss(group / tau, teacher / tau, valid=valid_t)
                parts["marginmse"] = loss.item()
                total = total + w["marginmse"] * loss
        flops = flops_loss(doc_w, stage.flops_threshold)
        lam = flops_lambda(step, stage.lambda_d, stage.flops_T)
        total = total + lam * flops
        with torch.no_grad():
            parts.update(loss=total.item(), flops=flops.item(), flops_lambda=lam,
                         doc_terms=(doc_w > 0).sum(dim=1).float().mean().item(),
                         query_terms=float(np.mean([len(q_tokens[i]) for i in batch.queries])))
        return total, parts

    # -- the loop -----------------------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return list(self.cfg.stages)

    def run(self, *, stop_at: int | None = None, time_limit: float | None = None) -> dict[str, Any]:
        """Train (from the latest checkpoint when ``trainer.resume``) until the last stage ends,
        global step ``stop_at`` is reached, or ``time_limit`` seconds pass; returns a summary."""
        cfg = self.cfg
        t0 = time.monotonic()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        resumed = self._resume_state() if (cfg.trainer.resume and self.out is not None) else None
        history: list[dict] = []
        stopped = False
        while self.stage_index < len(self.stage_names):
            name = self.stage_names[self.stage_index]
            stage = cfg.stages[name]
            split = self.data.splits[cfg.stage_data(name)]
            opt, sched = self._optimizer(stage)
            sampler = StageSampler(split, stage.batch_size, stage.negatives, neg_pool=stage.neg_pool,
                                   seed=int(np.random.SeedSequence([cfg.seed, self.stage_index]).generate_state(1)[0]),
                                   teachers=cfg.distill.teachers if cfg.uses_teachers() else [])
            if resumed is not None:
                self._load_checkpoint(resumed, opt, sched, sampler)
                resumed = None
            self.model.train()
            bar = tqdm(total=stage.steps, initial=self.stage_step, desc=f"{name}", unit="step",
                       disable=not cfg.trainer.progress, dynamic_ncols=True)
            step_t, since = time.monotonic(), 0
            while self.stage_step < stage.steps:
                if (stop_at is not None and self.global_step >= stop_at) or \
                        (time_limit is not None and time.monotonic() - t0 > time_limit):
                    stopped = True
                    break
                batch = sampler.next_batch()
                loss, parts = self._losses(name, batch, self.stage_step)
                if not math.isfinite(parts["loss"]):
                    raise FloatingPointError(f"stage {name} step {self.stage_step}: the loss is {parts['loss']}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.trainer.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.trainer.grad_clip)
                opt.step()
                sched.step()
                self.stage_step += 1
                self.global_step += 1
                since += 1
                bar.update(1)
                if self.stage_step % cfg.trainer.log_every == 0 or self.stage_step == stage.steps:
                    now = time.monotonic()
                    rec = {"stage": name, "step": self.stage_step, "global_step": self.global_step,
                           "lr": sched.get_last_lr()[0], "epoch": sampler.epoch,
                           "seconds_per_step": (now - step_t) / since, **parts}
                    step_t, since = now, 0
                    history.append(rec)
                    self._log(rec)
                    bar.set_postfix({k: f"{parts[k]:.3g}" for k in ("loss", "flops", "doc_terms")})
                if self.out is not None and self.global_step % cfg.trainer.checkpoint_every == 0 \
                        and self.stage_step < stage.steps:
                    self.save_checkpoint(opt, sched, sampler)
            bar.close()
            if stopped:
                if self.out is not None:
                    self.save_checkpoint(opt, sched, sampler)
                break
            if self.out is not None:
                self.save_checkpoint(opt, sched, sampler)   # stage end (also the point a later stage resumes from)
            self.stage_index += 1
            self.stage_step = 0
        summary = {"name": cfg.name, "finished": not stopped, "global_step": self.global_step,
                   "stage": self.stage_names[min(self.stage_index, len(self.stage_names) - 1)],
                   "seconds": time.monotonic() - t0, "device": str(self.device), "amp_bf16": self.amp,
                   "last": history[-1] if history else None}
        if not stopped and self.out is not None:
            self.save_final()
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
        return summary

    # -- persistence ------------------------------------------------------------------------------
    def _log(self, rec: dict) -> None:
        log.info("%s step %d: %s", rec["stage"], rec["step"],
                 ", ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)))
        if self.out is not None:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    def save_final(self) -> tuple[Path, Path]:
        model_dir = self.out / "model"
        query_dir = self.out / "query_encoder"
        for d in (model_dir, query_dir):
            if d.exists():
                shutil.rmtree(d)
        self.model.encoder.save_pretrained(model_dir)
        space = f"sparse:{self.cfg.name or self.out.name}"
        self.model.query.to_query_encoder(self.idf_encoder.tokenizer, space_id=space,
                                          n_docs=self.idf_encoder.n_docs).save(query_dir)
        log.info("saved the document encoder to %s and the query encoder to %s", model_dir, query_dir)
        return model_dir, query_dir

    @property
    def checkpoint_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self, opt, sched, sampler: StageSampler) -> Path:
        opt_state = opt.state_dict()
        opt_tensors, opt_scalars = split_tensors(opt_state["state"])
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"format_version": CHECKPOINT_VERSION, "signature": run_signature(self.cfg),
                 "global_step": self.global_step, "stage_index": self.stage_index, "stage_step": self.stage_step,
                 "stage": self.stage_names[self.stage_index], "sampler": sampler.state(),
                 "optimizer": {"param_groups": opt_state["param_groups"], "scalars": opt_scalars},
                 "scheduler": sched.state_dict()}
        return write_checkpoint(self.checkpoint_root, f"step-{self.global_step:07d}",
                                tensors={"model": split_tensors({"m": self.model.state_dict()})[0],
                                         "optimizer": opt_tensors, "rng": rng},
                                state=state, pointer={"global_step": self.global_step},
                                keep=self.cfg.trainer.keep_checkpoints)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoint_root)

    def _resume_state(self) -> Path | None:
        """Restore the weights and position of the latest checkpoint; the optimiser, scheduler
        and sampler are restored by :meth:`_load_checkpoint` once the stage's are built."""
        folder = self.latest_checkpoint()
        if folder is None:
            return None
        state = read_state(folder)
        if state.get("format_version") != CHECKPOINT_VERSION:
            raise SparseConfigError(f"{folder}: checkpoint format {state.get('format_version')}, "
                                    f"expected {CHECKPOINT_VERSION}")
        now = run_signature(self.cfg)
        if state["signature"] != now:
            diff = sorted(k for k in set(now) | set(state["signature"]) if now.get(k) != state["signature"].get(k))
            raise SparseConfigError(f"{folder}: the checkpoint belongs to a different run ({', '.join(diff)} differ); "
                                    f"use another output_dir or trainer.resume=false")
        self.model.load_state_dict(join_tensors(read_tensors(folder, "model"), {})["m"])
        self.global_step = int(state["global_step"])
        self.stage_index = int(state["stage_index"])
        self.stage_step = int(state["stage_step"])
        if self.stage_step >= self.cfg.stages[self.stage_names[self.stage_index]].steps:
            self.stage_index += 1          # the checkpoint closed its stage: start the next one fresh
            self.stage_step = 0
            self._restore_rng(folder)
            self._truncate_log()
            log.info("resumed from %s (global step %d, stage finished)", folder, self.global_step)
            return None
        self._truncate_log()
        log.info("resuming from %s (global step %d)", folder, self.global_step)
        return folder

    def _load_checkpoint(self, folder: Path, opt, sched, sampler: StageSampler) -> None:
        state = read_state(folder)
        entries = join_tensors(read_tensors(folder, "optimizer"), state["optimizer"]["scalars"])
        # the optimiser moves its state tensors to each parameter's device itself
        opt.load_state_dict({"state": {int(k): v for k, v in entries.items()},
                             "param_groups": state["optimizer"]["param_groups"]})
        sched.load_state_dict(state["scheduler"])
        sampler.load_state(state["sampler"])
        self._restore_rng(folder)

    def _restore_rng(self, folder: Path) -> None:
        rng = read_tensors(folder, "rng")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _truncate_log(self) -> None:
        path = self.out / "log.jsonl"
        if not path.is_file():
            return
        keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["global_step"] <= self.global_step]
        atomic_write_text(path, "".join(line + "\n" for line in keep))


def train_from_config(path: str | Path | None = None, overrides: Iterable[str] = (), *,
                      config: SparseRunConfig | None = None, stop_at: int | None = None,
                      time_limit: float | None = None) -> dict[str, Any]:
    """Load the config (with ``a.b=c`` overrides), train, return the summary."""
    cfg = config if config is not None else load_config(path, list(overrides))
    return SparseTrainer(cfg).run(stop_at=stop_at, time_limit=time_limit)


@click.command("sparse", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML run config (see embedx/sparse/configs/).")
@click.option("--stop-at", type=click.IntRange(min=1), help="Stop (with a checkpoint) at this global step.")
@click.option("--time-limit", type=click.FloatRange(min=1), help="Stop (with a checkpoint) after this many seconds; "
              "run again to resume.")
@click.argument("overrides", nargs=-1)
def cli(config_path: Path, stop_at: int | None, time_limit: float | None, overrides: tuple[str, ...]) -> None:
    """Train an inference-free sparse document encoder. OVERRIDES are key.sub=value (values
    parsed as YAML), e.g. stages.finetune.steps=100 query.mode=binary trainer.device=cpu."""
    from embedx.data import DataFormatError

    try:
        summary = train_from_config(config_path, overrides, stop_at=stop_at, time_limit=time_limit)
    except (SparseConfigError, PreparedDataError, DataFormatError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(summary, indent=1))
    if not summary["finished"]:
        click.echo("stopped early; run the same command again to resume", err=True)


def main() -> None:  # pragma: no cover - thin wrapper
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
