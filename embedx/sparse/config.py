"""The YAML format of a sparse training run, with command-line overrides ``a.b=c``.

::

    name: idf-flops-ensemble
    seed: 0
    output_dir: runs/sparse/idf-flops-ensemble
    data:    {prepared: runs/sparse/scifact-train.npz, corpus: ../shared/data/scifact}
    model:   {path: splade-tiny, max_length: 256}
    query:   {mode: idf}                       # idf | binary | learnable (+ lr for learnable)
    distill: {teachers: [dense, sparse], scale: 30, temperature: 1.0}
    trainer: {device: auto, precision: auto, checkpoint_every: 500}
    stages:                                    # run in this order; each has its own optimiser
      pretrain: {data: unsupervised, steps: 2000, lr: 5e-5, batch_size: 32, negatives: 3,
                 losses: {infonce: 1.0}, lambda_d: 1e-3, flops_T: 1000}
      finetune: {data: supervised, steps: 1000, lr: 2e-5, batch_size: 32, negatives: 3,
                 losses: {kl: 1.0}, lambda_d: 2e-3, flops_T: 200}

Every block is checked against its dataclass, so a misspelt key or a value of the wrong type
fails at load time with the accepted keys in the message. Overrides use the same dotted
paths, e.g. ``stages.finetune.steps=100 query.mode=binary``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from embedx.config import ConfigError, build_dataclass, read_config, reraise_as

from .losses import LOSS_NAMES
from .query import QUERY_MODES

TEACHER_NAMES = ("dense", "sparse", "bm25")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


class SparseConfigError(ConfigError):
    """A training configuration that cannot be used (the message says what and where).
    A ``ValueError``, like every :class:`embedx.config.ConfigError`."""


@dataclass
class DataConfig:
    prepared: str                 # the file `embedx sparse prepare` wrote (.npz)
    corpus: str                   # the BEIR folder (or corpus.jsonl[.gz]) the prepared file was made from;
                                  # a relative path that does not exist is looked up under $EMBEDX_DATA

    def corpus_path(self) -> Path:
        from embedx.paths import data_root

        p = Path(self.corpus).expanduser()
        if p.exists() or p.is_absolute():
            return p
        return data_root() / p


@dataclass
class ModelConfig:
    path: str = "splade-tiny"     # start point: a masked-LM folder or a known short name
    max_length: int = 256         # document tokens, special tokens included


@dataclass
class QueryConfig:
    mode: str = "idf"             # idf | binary | learnable
    lr: float | None = None       # learning rate of a learnable IDF table (default: the stage's lr)
    min_idf: float = 0.0          # queries drop tokens whose corpus IDF is below this (stopword-like)


@dataclass
class DistillConfig:
    teachers: list[str] = field(default_factory=lambda: ["dense", "sparse"])
    scale: float = 30.0           # S: the ensemble's normalised scores are multiplied by it
    temperature: float = 1.0      # tau of the KL loss (and of MarginMSE's inputs)


@dataclass
class StageConfig:
    data: str | None = None       # split of the prepared file (default: the stage's own name)
    steps: int = 1000
    batch_size: int = 32          # queries per step
    lr: float = 5e-5
    warmup_steps: int = 100       # linear warm-up, then linear decay to 0 at `steps`
    negatives: int = 3            # hard negatives per query, sampled from its candidates
    neg_pool: int | None = None   # sample them among the first N candidates only (default: all)
    in_batch_negatives: bool = True   # InfoNCE also scores the other queries' documents
    losses: dict[str, float] = field(default_factory=lambda: {"infonce": 1.0})
    lambda_d: float = 1e-3        # FLOPS weight after warm-up
    flops_T: int = 1000           # FLOPS warm-up steps (quadratic)
    flops_threshold: int | None = None   # penalise only documents longer than this many terms


@dataclass
class TrainerConfig:
    device: str = "auto"          # auto (cuda when available) | cpu | cuda
    precision: str = "auto"       # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    weight_decay: float = 0.01
    grad_clip: float | None = None
    log_every: int = 10           # steps between log lines (log.jsonl, progress bar)
    checkpoint_every: int = 500   # steps between checkpoints (and one at every stage end)
    keep_checkpoints: int = 2
    resume: bool = True           # continue from output_dir's latest checkpoint when there is one
    progress: bool = True
    threads: int | None = None    # torch CPU threads (default: torch's choice)


@dataclass
class SparseRunConfig:
    data: DataConfig
    stages: dict[str, StageConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    output_dir: str | None = None
    name: str | None = None

    def stage_data(self, name: str) -> str:
        return self.stages[name].data or name

    def uses_teachers(self) -> bool:
        return any(s.losses.get(n, 0) > 0 for s in self.stages.values() for n in ("kl", "marginmse"))


_BLOCKS = {"data": DataConfig, "model": ModelConfig, "query": QueryConfig, "distill": DistillConfig,
           "trainer": TrainerConfig}
_TOP_KEYS = {*_BLOCKS, "stages", "seed", "output_dir", "name"}


_build = reraise_as(SparseConfigError)(build_dataclass)


def config_from_dict(raw: Mapping[str, Any]) -> SparseRunConfig:
    """Validate a raw mapping into a :class:`SparseRunConfig`."""
    if not isinstance(raw, Mapping):
        raise SparseConfigError(f"a config is a mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise SparseConfigError(f"unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                                f"expected some of: {', '.join(sorted(_TOP_KEYS))}")
    if not isinstance(raw.get("data"), Mapping):
        raise SparseConfigError("the config needs a `data:` block with `prepared` and `corpus`")
    stages_raw = raw.get("stages")
    if isinstance(stages_raw, Mapping):   # a stage set to null is switched off (`stages.pretrain=null`)
        stages_raw = {n: s for n, s in stages_raw.items() if s is not None}
    if not isinstance(stages_raw, Mapping) or not stages_raw:
        raise SparseConfigError("the config needs a `stages:` block: stage name -> settings, run in order "
                                "(at least one stage not set to null)")
    blocks = {name: _build(cls, raw.get(name), name) for name, cls in _BLOCKS.items()}
    stages = {str(n): _build(StageConfig, s, f"stages.{n}") for n, s in stages_raw.items()}
    top = {}
    for key, tp in (("seed", int), ("output_dir", str), ("name", str)):
        if raw.get(key) is not None:
            if not isinstance(raw[key], tp) or isinstance(raw[key], bool):
                raise SparseConfigError(f"{key}: expected {tp.__name__}, got {raw[key]!r}")
            top[key] = raw[key]
    cfg = SparseRunConfig(stages=stages, **blocks, **top)
    _check_values(cfg)
    return cfg


def _check_values(cfg: SparseRunConfig) -> None:
    def fail(msg: str) -> None:
        raise SparseConfigError(msg)

    if cfg.model.max_length < 8:
        fail(f"model.max_length must be at least 8, got {cfg.model.max_length}")
    if cfg.query.mode not in QUERY_MODES:
        fail(f"query.mode must be one of {', '.join(QUERY_MODES)}, got {cfg.query.mode!r}")
    if cfg.query.lr is not None and cfg.query.lr <= 0:
        fail(f"query.lr must be positive, got {cfg.query.lr}")
    if cfg.query.lr is not None and cfg.query.mode != "learnable":
        fail("query.lr only applies to query.mode: learnable")
    if not 0 <= cfg.query.min_idf < float("inf"):
        fail(f"query.min_idf must be finite and >= 0, got {cfg.query.min_idf}")
    bad = [t for t in cfg.distill.teachers if t not in TEACHER_NAMES]
    if bad:
        fail(f"distill.teachers: unknown teacher(s) {bad}; choose from {', '.join(TEACHER_NAMES)}")
    if len(set(cfg.distill.teachers)) != len(cfg.distill.teachers):
        fail(f"distill.teachers lists a teacher twice: {cfg.distill.teachers}")
    if cfg.distill.scale <= 0 or cfg.distill.temperature <= 0:
        fail("distill.scale and distill.temperature must be positive")
    if cfg.uses_teachers() and not cfg.distill.teachers:
        fail("the kl / marginmse losses need at least one teacher in distill.teachers")
    t = cfg.trainer
    if t.device not in DEVICES:
        fail(f"trainer.device must be one of {', '.join(DEVICES)}, got {t.device!r}")
    if t.precision not in PRECISIONS:
        fail(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, name) <= 0:
            fail(f"trainer.{name} must be positive, got {getattr(t, name)}")
    if t.weight_decay < 0 or (t.grad_clip is not None and t.grad_clip <= 0):
        fail("trainer.weight_decay must be >= 0 and trainer.grad_clip positive")
    for n, s in cfg.stages.items():
        where = f"stages.{n}"
        for key in ("steps", "batch_size", "flops_T"):
            if getattr(s, key) <= 0:
                fail(f"{where}.{key} must be positive, got {getattr(s, key)}")
        if s.lr <= 0 or s.lambda_d < 0 or s.warmup_steps < 0 or s.negatives < 0:
            fail(f"{where}: lr must be positive; lambda_d, warmup_steps and negatives >= 0")
        if s.neg_pool is not None and s.neg_pool < max(s.negatives, 1):
            fail(f"{where}.neg_pool ({s.neg_pool}) must be at least negatives ({s.negatives})")
        if s.flops_threshold is not None and s.flops_threshold < 0:
            fail(f"{where}.flops_threshold must be >= 0")
        unknown = sorted(set(s.losses) - set(LOSS_NAMES))
        if unknown:
            fail(f"{where}.losses: unknown loss(es) {unknown}; choose from {', '.join(LOSS_NAMES)}")
        if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in s.losses.values()):
            fail(f"{where}.losses: weights must be numbers >= 0, got {s.losses}")
        if not any(w > 0 for w in s.losses.values()):
            fail(f"{where}.losses: give at least one loss a positive weight")
        s.losses = {k: float(v) for k, v in s.losses.items()}
        needs_negs = s.losses.get("kl", 0) > 0 or s.losses.get("marginmse", 0) > 0
        if needs_negs and s.negatives < 1:
            fail(f"{where}: the kl / marginmse losses rank a query's own candidates: negatives must be >= 1")
        if s.losses.get("infonce", 0) > 0 and s.negatives == 0 and not (s.in_batch_negatives and s.batch_size > 1):
            fail(f"{where}: infonce needs negatives: hard negatives (negatives >= 1) or in-batch ones "
                 f"(in_batch_negatives with batch_size > 1)")


# ---------------------------------------------------------------- loading
def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                raw: Mapping[str, Any] | None = None) -> SparseRunConfig:
    """Read a YAML config (or take ``raw``), apply ``a.b=c`` overrides, validate."""
    with reraise_as(SparseConfigError):
        raw = read_config(path, overrides, raw)
    return config_from_dict(raw)


def config_to_dict(cfg: SparseRunConfig) -> dict[str, Any]:
    """The plain mapping :func:`config_from_dict` reads back."""
    out = {"name": cfg.name, "seed": cfg.seed, "output_dir": cfg.output_dir}
    for name in _BLOCKS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    out["stages"] = {n: dataclasses.asdict(s) for n, s in cfg.stages.items()}
    return out


def run_signature(cfg: SparseRunConfig) -> dict[str, Any]:
    """What a checkpoint's weights depend on; resuming under anything else is refused."""
    d = config_to_dict(cfg)
    return {"seed": d["seed"], "data": d["data"], "model": d["model"], "query": d["query"],
            "distill": d["distill"], "stages": d["stages"]}
