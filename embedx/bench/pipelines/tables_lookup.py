"""``tables-core`` part 3: lookup throughput of the exported, torch-free tables.

Each method's table is built on the CPU at the spec's budget (a fixed-ratio method such as
INT8 at its own floor), exported (``table.export()``) and served by
:class:`indexing.table_store.TableStore` with one thread, its arrays in the memory
``TableStore.load`` gives them (fresh cache-line aligned numpy buffers). The reference is what
a torch server would do with the uncompressed table: ``torch.nn.EmbeddingBag`` (mode ``sum``,
one id per bag) over the full float32 table in torch's own memory, with the per-field offsets
added to the ids, on one torch thread. Both get the same ``(batch, 26)`` int64 Criteo-shaped
Zipf ids; rounds of ``calls`` lookups alternate between them, and the speed-up is the median
over rounds of (EmbeddingBag time / TableStore time). TableStore's time includes its input
validation.

Page size is part of the result: numpy asks the kernel for 2 MB pages for large arrays, torch
does not by default, and a gather over a 2 GB table on 4 KB pages misses the TLB on most
rows. So a second reference runs the same EmbeddingBag over a numpy-allocated copy of the
table (``bag_hugepages``: huge pages for both sides), reported as
``lookup_speedup_hugepages_<method>``; the bar uses torch's default.

Both run on the calling thread, so by default (``clock: thread``) each call is timed in this
thread's CPU time: on a shared machine wall time would also count the time slices another
process held the core, which swamps a 2 ms call (``clock: wall`` measures wall time). The
references first read every batch twice, so first touches of their tables are not timed.
"""

from __future__ import annotations

import logging
import time
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


def hugepage_mode() -> str:
    """The kernel's transparent huge page setting (``always``, ``madvise``, ``never``), or ``unknown``."""
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii").read()
    except OSError:
        return "unknown"
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def lookup_speed(methods: Sequence[str], p: Mapping[str, Any], dim: int) -> tuple[dict, dict]:
    """Speed-up of every method's TableStore over EmbeddingBag on the full table."""
    import torch

    from embedx.tables.registry import build_table
    from indexing.table_lookups import aligned_empty
    from indexing.table_store import TableStore

    from .tables_budget import criteo_cardinalities

    torch.set_num_threads(int(p.get("threads", 1)))
    cards = criteo_cardinalities(p.get("cardinalities", "criteo"), p.get("max_cardinality"))
    b, nb = int(p.get("batch", 4096)), int(p.get("batches", 8))
    batches = criteo_batches(cards, b, nb, float(p.get("zipf", 1.1)), int(p.get("seed", 0)))
    full = build_table("full", cards, dim, 1.0)
    torch_weight = full.weight.detach().numpy()  # torch's allocator, as a torch server holds the table
    served_weight = aligned_empty(torch_weight.shape, torch_weight.dtype)  # as TableStore.load holds it
    served_weight[...] = torch_weight
    references = {"bag": embedding_bag_lookup(torch_weight, cards),
                  "bag_hugepages": embedding_bag_lookup(served_weight, cards)}
    for batch in batches * 2:  # first touches of the 2 GB tables are not lookups: keep them out of the timings
        for ref in references.values():
            ref(batch)
    default_calls, default_rounds = int(p.get("calls", 8)), int(p.get("rounds", 7))
    clock_name = p.get("clock", "thread")
    if clock_name not in ("thread", "wall"):
        raise ValueError(f"lookup.clock must be 'thread' or 'wall', got {clock_name!r}")
    clock = time.thread_time if clock_name == "thread" else time.perf_counter
    slow = p.get("slow_methods", {}) or {}
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {
        "cardinalities": cards, "batch": b, "fields": len(cards), "dim": dim, "clock": clock_name,
        "distinct_batches": nb, "transparent_hugepages": hugepage_mode(),
        "reference": f"torch.nn.EmbeddingBag(mode=sum) over the full table ({torch_weight.nbytes:,} B) in "
                     "torch's allocator memory (torch's default: 4 KB pages)",
        "reference_hugepages": "the same EmbeddingBag over a numpy-allocated copy of the table, which numpy "
                               "backs with 2 MB pages where the kernel allows (as TableStore's arrays are)",
        "methods": {}}
    for method in methods:
        table = full if method == "full" else None
        try:
            if table is None:
                table, budget = build_for_lookup(method, cards, dim, float(p.get("rate", 0.01)),
                                                 (p.get("params", {}) or {}).get(method))
            else:
                budget = table.budget.bytes
            if method == "full":  # the served copy is already there
                store = TableStore("full", {"cardinalities": cards, "dim": dim}, {"weight": served_weight})
            else:
                store = table.export().to_store(copy=True)  # the memory TableStore.load would give it
            store_threads = int(p.get("store_threads", 1))
            if store_threads != 1:
                store.threads = store_threads
            # parity on a slice: the served table answers what the torch module answers
            probe = batches[0][:256]
            with torch.no_grad():
                want = table.eval()(torch.from_numpy(probe)).numpy()
            parity = float(np.max(np.abs(store.lookup(probe) - want)))
            if method == "full":
                parity = max(parity, *(float(np.max(np.abs(ref(probe).numpy() - want))) for ref in references.values()))
            memory = int(table.memory_bytes())
        except Exception as e:  # noqa: BLE001 - record and go on with the other methods
            log.warning("lookup: %s could not be built/exported: %s", method, e)
            details["methods"][method] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
            continue
        if table is not full:
            del table
        store.lookup(batches[0])  # allocate the kernel's scratch buffers before timing
        calls = int(slow.get(method, {}).get("calls", default_calls))
        rounds = int(slow.get(method, {}).get("rounds", default_rounds))
        t = alternate({"store": lambda i, s=store: s.lookup(batches[i % nb]),
                       **{name: (lambda ref: lambda i: ref(batches[i % nb]))(ref) for name, ref in references.items()}},
                      calls, rounds, clock)
        store_round = t["store"].sum(axis=1)
        speedup = paired_ratio(t["bag"].sum(axis=1), store_round)
        speedup_hp = paired_ratio(t["bag_hugepages"].sum(axis=1), store_round)
        store_s, bag_s, bag_hp_s = (float(np.median(t[k])) for k in ("store", "bag", "bag_hugepages"))
        rec = {"status": "ok", "budget_bytes": int(budget), "memory_bytes": memory, "calls": calls, "rounds": rounds,
               "store_ms_per_batch": store_s * 1e3, "embedding_bag_ms_per_batch": bag_s * 1e3,
               "embedding_bag_hugepages_ms_per_batch": bag_hp_s * 1e3,
               "store_ids_per_s": b * len(cards) / store_s, "embedding_bag_ids_per_s": b * len(cards) / bag_s,
               "speedup": speedup, "speedup_vs_hugepage_bag": speedup_hp, "parity_max_abs_diff": parity}
        details["methods"][method] = rec
        metrics[f"lookup_speedup_{method}"] = speedup
        metrics[f"lookup_speedup_hugepages_{method}"] = speedup_hp
        metrics[f"lookup_ms_{method}"] = rec["store_ms_per_batch"]
        metrics[f"lookup_parity_{method}"] = parity
        log.info("lookup %s: %.2f ms/batch vs EmbeddingBag %.2f ms (x%.2f), on huge pages %.2f ms (x%.2f)", method,
                 rec["store_ms_per_batch"], rec["embedding_bag_ms_per_batch"], speedup,
                 rec["embedding_bag_hugepages_ms_per_batch"], speedup_hp)
        del store
    for key, name in (("embedding_bag_ms_per_batch", "lookup_embedding_bag_ms"),
                      ("embedding_bag_hugepages_ms_per_batch", "lookup_embedding_bag_hugepages_ms")):
        values = [r[key] for r in details["methods"].values() if r.get("status") == "ok"]
        if values:
            metrics[name] = float(np.median(values))
    return metrics, details
