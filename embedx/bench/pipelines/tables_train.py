"""``tables-core`` part 4: training throughput and peak memory of each table method.

Each method trains in a fresh Python process (``python -m embedx.bench.pipelines.tables_train
CONFIG_JSON``), so its peak resident set is its own: a 2 GB full table trained first cannot
inflate the peak of the hashed table after it. The child streams the Criteo-shaped
generator's ``train`` stream of ``rows`` rows (1M by default: one pass over all of them, in
batches of ``batch_size``), builds the table at the budget (a fixed-ratio method at its own
floor) and the CTR model, and runs the trainer's step (forward, BCE on logits, backward,
optimizer step, the table's ``post_step``) with the trainer's optimizers: with
``table_optimizer`` (``sparse_adam`` / ``rowwise_adagrad``) the table's gathered rows get
sparse gradients, which is how a 33M-row table is trained at all (dense Adam keeps a dense
gradient and two dense moments of the table and rewrites them every step). Samples/s counts
the training steps only (rows are generated between steps, outside the timings), in wall
time and, as ``cpu_samples_per_s``, in this thread's CPU time (one torch thread: the rate a
core delivers, whatever else shares the machine); the first
``warmup_batches`` steps (first-touch allocation of optimizer state) are trained but not
timed. A method too slow for every row on a small machine gets its own ``rows`` in
``per_method`` with a ``note`` saying why, recorded in the results. It prints one JSON line:
samples/s, median step time, rows trained, and the RSS at each stage (the child's own
``VmHWM``, see :func:`peak_rss`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)


def peak_rss() -> int:
    """This process's own peak resident set in bytes.

    ``VmHWM`` from ``/proc/self/status`` where there is one: it belongs to the address space
    made by ``exec``. ``ru_maxrss`` is not used there because Linux carries the parent's high
    water mark across fork + exec, so a child of a big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    from embedx.tables.trainer import peak_rss_bytes
    return peak_rss_bytes()


def worker(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Train one method as ``cfg`` says and measure it (runs in the child process)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from embedx.tables.config import TrainerConfig
    from embedx.tables.data.criteo_synth import CriteoSynthOptions, CriteoSynthetic
    from embedx.tables.models import build_model
    from embedx.tables.optim import optimizer_name
    from embedx.tables.trainer import Trainer, seed_everything

    from .tables_lookup import build_for_lookup

    threads = int(cfg.get("threads", 1))
    torch.set_num_threads(threads)
    rss_imports = peak_rss()
    bs, warm, rows = int(cfg["batch_size"]), int(cfg["warmup_batches"]), int(cfg["rows"])
    gen = CriteoSynthetic(CriteoSynthOptions(train_rows=rows, num_dense=int(cfg["num_dense"]),
                                             zipf=float(cfg["zipf"]), seed=int(cfg.get("seed", 0)),
                                             max_cardinality=cfg.get("max_cardinality"),
                                             cardinalities=cfg.get("cardinalities")))
    seed_everything(int(cfg.get("seed", 0)))
    table, budget = build_for_lookup(cfg["method"], gen.cardinalities, int(cfg["dim"]), float(cfg["rate"]),
                                     cfg.get("params"))
    model = build_model(cfg["model"], table, gen.num_dense, **(cfg.get("model_params") or {}))
    trainer = Trainer(model, TrainerConfig(threads=threads, progress=False, checkpoint=False,
                                           lr=float(cfg.get("lr", 1e-3)), optimizer=cfg.get("optimizer", "adam"),
                                           table_lr=cfg.get("table_lr"), table_optimizer=cfg.get("table_optimizer")))
    rss_model = peak_rss()
    opt, post = trainer.optimizer, getattr(table, "post_step", None)
    model.train()
    times, losses, trained, cpu_s = [], [], 0, 0.0
    t_loop = time.perf_counter()
    for i, batch in enumerate(gen.stream("train", rows).batches(bs)):
        t0, c0 = time.perf_counter(), time.thread_time()
        loss = F.binary_cross_entropy_with_logits(model(batch.ids, batch.dense), batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if post is not None:
            post()
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        trained += len(batch.labels)
        if i >= warm:
            times.append((dt, len(batch.labels)))
            cpu_s += dc
            losses.append(float(loss.item()))
    loop_s = time.perf_counter() - t_loop
    timed_rows = sum(n for _, n in times)
    timed_s = sum(t for t, _ in times)
    return {
        "method": cfg["method"], "status": "ok", "budget_bytes": int(budget), "memory_bytes": int(table.memory_bytes()),
        "training_memory_bytes": int(table.training_memory_bytes()),
        "table_params": int(sum(p.numel() for p in table.parameters())),
        "optimizer": optimizer_name(opt), "sparse_gradients": bool(table.sparse_grad),
        "samples_per_s": timed_rows / timed_s if timed_s > 0 else float("nan"),
        "cpu_samples_per_s": timed_rows / cpu_s if cpu_s > 0 else float("nan"),
        "step_ms_median": float(np.median([t for t, _ in times]) * 1e3) if times else float("nan"),
        "steps_timed": len(times), "rows_timed": timed_rows, "rows_trained": trained,
        "warmup_steps": min(warm, -(-rows // bs)), "loop_seconds": loop_s,
        "first_loss": losses[0] if losses else float("nan"), "final_loss": losses[-1] if losses else float("nan"),
        "peak_rss_bytes": peak_rss(), "rss_after_imports": rss_imports, "rss_after_model": rss_model,
        "cardinalities": gen.cardinalities, "stream_rows": rows, "note": cfg.get("note"),
    }


def run_isolated(cfg: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run :func:`worker` in a fresh interpreter; its result, or a status saying why not."""
    env = dict(os.environ)
    threads = str(cfg.get("threads", 1))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    cwd = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, "-m", "embedx.bench.pipelines.tables_train", json.dumps(dict(cfg))]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"method": cfg["method"], "status": "timeout", "timeout_s": timeout_s}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"method": cfg["method"], "status": "error", "returncode": proc.returncode, "error": tail}
    rec = json.loads(lines[-1])
    rec["process_wall_s"] = wall
    return rec


def training_speed(methods: Sequence[str], p: Mapping[str, Any], dim: int) -> tuple[dict, dict]:
    """Samples/s and peak RSS per method, each in its own process."""
    per = p.get("per_method", {}) or {}
    keys = ("model", "model_params", "rate", "rows", "batch_size", "warmup_batches", "num_dense", "zipf",
            "max_cardinality", "cardinalities", "seed", "lr", "optimizer", "table_lr", "table_optimizer", "threads")
    base = {"model": "dlrm", "rate": 0.01, "rows": 1_000_000, "batch_size": 4096, "warmup_batches": 2,
            "num_dense": 13, "zipf": 1.1, "max_cardinality": None, "cardinalities": None, "seed": 0, "threads": 1}
    base.update({k: p[k] for k in keys if k in p})
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"settings": base, "methods": {}}
    for method in methods:
        cfg = {**base, **(per.get(method) or {}), "method": method, "dim": dim}
        unknown = set(cfg) - set(keys) - {"method", "dim", "note", "params", "timeout_s"}
        if unknown:
            raise ValueError(f"training.per_method.{method}: unknown keys {sorted(unknown)}")
        params = (p.get("params", {}) or {}).get(method)
        if params:
            cfg["params"] = params
        rec = run_isolated(cfg, float(cfg.pop("timeout_s", p.get("timeout_s", 900))))
        details["methods"][method] = rec
        if rec.get("status") == "ok":
            metrics[f"train_samples_per_s_{method}"] = rec["samples_per_s"]
            metrics[f"train_cpu_samples_per_s_{method}"] = rec["cpu_samples_per_s"]
            metrics[f"train_peak_rss_mb_{method}"] = rec["peak_rss_bytes"] / 2**20
            metrics[f"train_rows_{method}"] = rec["rows_trained"]
            log.info("training %s: %.0f samples/s over %d rows (%s), peak RSS %.0f MB", method, rec["samples_per_s"],
                     rec["rows_trained"], rec["optimizer"], rec["peak_rss_bytes"] / 2**20)
        else:
            log.warning("training %s: %s", method, rec.get("status"))
    return metrics, details


def main() -> None:  # pragma: no cover - the child process
    logging.basicConfig(level=logging.WARNING)
    cfg = json.loads(sys.argv[1])
    print(json.dumps(worker(cfg), default=float), flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
