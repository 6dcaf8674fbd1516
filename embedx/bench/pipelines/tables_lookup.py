"""``tables-core`` part 3: lookup throughput of the exported, torch-free tables.

Each method's table is built on the CPU at the spec's budget (a fixed-ratio method such as
INT8 at its own floor), exported (``table.export()``) and served by
:class:`indexing.table_store.TableStore` with one thread. The reference is what a torch
server would do with the uncompressed table: ``torch.nn.EmbeddingBag`` (mode ``sum``, one id
per bag) over the full float32 table, with the per-field offsets added to the ids, on one
torch thread. Both get the same ``(batch, 26)`` int64 Criteo-shaped Zipf ids; rounds of
``calls`` lookups alternate between the two, and the speed-up is the median over rounds of
(EmbeddingBag time / TableStore time). TableStore's time includes its input validation.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from ..timing import alternate, paired_ratio

log = logging.getLogger(__name__)


def criteo_batches(cardinalities: Sequence[int], batch: int, count: int, zipf: float, seed: int) -> list[np.ndarray]:
    """``count`` batches of ``(batch, fields)`` int64 ids from the Criteo-shaped generator's test stream."""
    from embedx.tables.data.criteo_synth import CriteoSynthOptions, CriteoSynthetic

    gen = CriteoSynthetic(CriteoSynthOptions(cardinalities=list(cardinalities), zipf=zipf, seed=seed,
                                             calibration_rows=4096, chunk_rows=max(batch, 1024)))
    ids = np.concatenate([c[0] for c in gen.stream("test", batch * count).arrays()]).astype(np.int64)
    return [np.ascontiguousarray(ids[i * batch:(i + 1) * batch]) for i in range(count)]


def embedding_bag_lookup(weight: np.ndarray, cardinalities: Sequence[int]):
    """The torch reference: ``f(ids) -> (batch, fields, dim)`` through ``nn.EmbeddingBag`` over
    ``weight`` (shared, not copied)."""
    import torch

    w = torch.from_numpy(weight)
    bag = torch.nn.EmbeddingBag.from_pretrained(w, freeze=True, mode="sum")
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(cardinalities)[:-1]]), dtype=torch.long)
    dim = weight.shape[1]

    def lookup(ids: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            g = torch.from_numpy(ids) + offsets
            return bag(g.view(-1, 1)).view(ids.shape[0], ids.shape[1], dim)

    return lookup


def build_for_lookup(method: str, cardinalities: Sequence[int], dim: int, rate: float,
                     params: Mapping[str, Any] | None = None):
    """The CPU table of ``method`` at ``rate``, or at its floor when the rate is below it."""
    from embedx.tables.base import Budget
    from embedx.tables.registry import build_table, get_method

    params = dict(params or {})
    budget = Budget.from_rate(rate, cardinalities, dim).bytes
    floor = int(get_method(method).min_bytes(list(cardinalities), dim))
    return build_table(method, cardinalities, dim, max(budget, floor), **params), max(budget, floor)


def lookup_speed(methods: Sequence[str], p: Mapping[str, Any], dim: int) -> tuple[dict, dict]:
    """Speed-up of every method's TableStore over EmbeddingBag on the full table."""
    import torch

    from embedx.tables.registry import build_table

    from .tables_budget import criteo_cardinalities

    torch.set_num_threads(int(p.get("threads", 1)))
    cards = criteo_cardinalities(p.get("cardinalities", "criteo"), p.get("max_cardinality"))
    b, nb = int(p.get("batch", 4096)), int(p.get("batches", 8))
    batches = criteo_batches(cards, b, nb, float(p.get("zipf", 1.1)), int(p.get("seed", 0)))
    full = build_table("full", cards, dim, 1.0)
    full_weight = full.export().arrays["weight"]
    reference = embedding_bag_lookup(full_weight, cards)
    default_calls, default_rounds = int(p.get("calls", 8)), int(p.get("rounds", 7))
    slow = p.get("slow_methods", {}) or {}
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"cardinalities": cards, "batch": b, "fields": len(cards), "dim": dim,
                               "distinct_batches": nb, "reference": "torch.nn.EmbeddingBag(mode=sum) over the "
                               f"full table ({full_weight.nbytes:,} B)", "methods": {}}
    for method in methods:
        table = full if method == "full" else None
        try:
            if table is None:
                table, budget = build_for_lookup(method, cards, dim, float(p.get("rate", 0.01)),
                                                 (p.get("params", {}) or {}).get(method))
            else:
                budget = table.budget.bytes
            store = table.export().to_store()
            store_threads = int(p.get("store_threads", 1))
            if store_threads != 1:
                store.threads = store_threads
            # parity on a slice: the served table answers what the torch module answers
            probe = batches[0][:256]
            with torch.no_grad():
                want = table.eval()(torch.from_numpy(probe)).numpy()
            parity = float(np.max(np.abs(store.lookup(probe) - want)))
            if method == "full":
                parity = max(parity, float(np.max(np.abs(reference(probe).numpy() - want))))
            memory = int(table.memory_bytes())
        except Exception as e:  # noqa: BLE001 - record and go on with the other methods
            log.warning("lookup: %s could not be built/exported: %s", method, e)
            details["methods"][method] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
            continue
        if table is not full:
            del table
        calls = int(slow.get(method, {}).get("calls", default_calls))
        rounds = int(slow.get(method, {}).get("rounds", default_rounds))
        t = alternate({"store": lambda i: store.lookup(batches[i % nb]),
                       "bag": lambda i: reference(batches[i % nb])}, calls, rounds)
        store_round, bag_round = t["store"].sum(axis=1), t["bag"].sum(axis=1)
        speedup = paired_ratio(bag_round, store_round)
        store_s = float(np.median(t["store"]))
        bag_s = float(np.median(t["bag"]))
        rec = {"status": "ok", "budget_bytes": int(budget), "memory_bytes": memory, "calls": calls, "rounds": rounds,
               "store_ms_per_batch": store_s * 1e3, "embedding_bag_ms_per_batch": bag_s * 1e3,
               "store_ids_per_s": b * len(cards) / store_s, "embedding_bag_ids_per_s": b * len(cards) / bag_s,
               "speedup": speedup, "parity_max_abs_diff": parity}
        details["methods"][method] = rec
        metrics[f"lookup_speedup_{method}"] = speedup
        metrics[f"lookup_ms_{method}"] = rec["store_ms_per_batch"]
        metrics[f"lookup_parity_{method}"] = parity
        log.info("lookup %s: %.2f ms/batch vs EmbeddingBag %.2f ms (x%.2f)", method, rec["store_ms_per_batch"],
                 rec["embedding_bag_ms_per_batch"], speedup)
        del store
    bag_all = [r["embedding_bag_ms_per_batch"] for r in details["methods"].values() if r.get("status") == "ok"]
    if bag_all:
        metrics["lookup_embedding_bag_ms"] = float(np.median(bag_all))
    return metrics, details
