"""The ``embedx`` command line: index, search, eval, bench and demo (train/export/serve come
with their capabilities). Every command has ``--help``."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from indexing.errors import EmbedxIndexError

log = logging.getLogger("embedx")

DENSE_METRICS = ("ip", "l2", "cosine")
# commands owned by a capability, imported only when called
TOP_LEVEL_LAZY: dict[str, str] = {"serve": "serving.cli:serve", "sparse": "embedx.sparse.cli:sparse",
                                   "export": "embedx.export.cli:export"}


class _LazyGroup(click.Group):
    """Subcommands imported on first use, so `embedx --help` and the index commands never
    pay for importing torch."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


class _UserErrors(_LazyGroup):
    """Turn the library's user-facing errors into a clean one-line CLI error (exit 2)."""

    def invoke(self, ctx):
        from .bench.spec import SpecError
        from .data.errors import DataFormatError
        from .eval import EvaluationError
        try:
            return super().invoke(ctx)
        except (EmbedxIndexError, DataFormatError, EvaluationError, SpecError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_UserErrors, lazy=TOP_LEVEL_LAZY, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="embedx")
def main(verbose: int) -> None:
    """embedx: embedding tables, learned sparse retrieval, compatible representations,
    composed image retrieval, and one index-and-serve layer."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- index
@main.group()
def index() -> None:
    """Build and inspect index bundles."""


@index.command("build")
@click.option("--corpus", "corpus_path", type=click.Path(exists=True, path_type=Path),
              help="BEIR corpus (folder or corpus.jsonl[.gz]); its title and text are stored for display.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle path to write (atomically).")
@click.option("--kind", type=click.Choice(["sparse", "lucene-impact", "lucene-bm25", "dense"]), default="sparse",
              show_default=True, help="Index kind. Lexical kinds compute BM25 from the corpus unless --vectors is given.")
@click.option("--vectors", type=click.Path(exists=True, path_type=Path),
              help="Precomputed document vectors: .npy (dense) or .npz (scipy.sparse, with --vocab).")
@click.option("--ids", "ids_path", type=click.Path(exists=True, path_type=Path),
              help="Text file with one document id per line (default: the corpus order).")
@click.option("--vocab", "vocab_path", type=click.Path(exists=True, path_type=Path),
              help="JSON list of vocabulary terms for sparse .npz vectors.")
@click.option("--factory", default="Flat", show_default=True, help="FAISS factory string for dense indexes.")
@click.option("--metric", type=click.Choice(DENSE_METRICS), default="ip", show_default=True)
@click.option("--quantize", type=click.Choice(["none", "uint8"]), default="uint8", show_default=True,
              help="Impact quantisation of sparse indexes.")
@click.option("--k1", default=0.9, show_default=True, help="BM25 k1.")
@click.option("--b", default=0.4, show_default=True, help="BM25 b.")
def index_build(corpus_path, out, kind, vectors, ids_path, vocab_path, factory, metric, quantize, k1, b) -> None:
    """Build an index bundle from a corpus (BM25) or from precomputed vectors."""
    from indexing.bundle import write_bundle

    from .data import load_corpus
    from .retrieval import build_lexical_bundle, load_vectors

    corpus = load_corpus(corpus_path) if corpus_path else None
    t0 = time.perf_counter()
    if vectors is None:
        if kind == "dense":
            raise click.UsageError("a dense index needs --vectors (a .npy file)")
        if corpus is None:
            raise click.UsageError("give --corpus (to compute BM25) or --vectors")
        path = build_lexical_bundle(corpus, out, kind=kind, k1=k1, b=b,
                                    quantize=None if quantize == "none" else quantize)
    else:
        if ids_path:
            ids = [line.strip() for line in ids_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif corpus is not None:
            ids = list(corpus)
        else:
            raise click.UsageError("give --ids or --corpus so vectors get document ids")
        mat = load_vectors(vectors)
        docs = ((i, {"title": corpus[i].get("title", ""), "text": corpus[i].get("text", "")})
                for i in ids if i in corpus) if corpus else None
        if kind == "dense":
            from indexing.dense import DenseIndex
            arr = mat
            if getattr(arr, "ndim", 0) != 2:
                raise click.UsageError(f"{vectors}: dense vectors must be a 2-D .npy array")
            idx = DenseIndex(arr.shape[1], factory=factory, metric=metric)
            idx.add(ids, arr)
        elif kind == "sparse":
            from indexing.sparse import ImpactIndex
            vocab = json.loads(vocab_path.read_text()) if vocab_path else None
            idx = ImpactIndex.build(ids, mat, quantize=None if quantize == "none" else quantize, vocab=vocab)
        else:
            raise click.UsageError(f"--vectors with --kind {kind} is not supported; use dense or sparse")
        path = write_bundle(out, idx, docs)
    click.echo(f"wrote {path} ({kind}) in {time.perf_counter() - t0:.2f} s")


@index.command("info")
@click.argument("bundle_path", type=click.Path(exists=True, path_type=Path))
def index_info(bundle_path) -> None:
    """Print a bundle's manifest (after verifying it)."""
    from indexing.bundle import load_bundle
    b = load_bundle(bundle_path)
    click.echo(json.dumps(b.manifest, indent=2))


# ---------------------------------------------------------------- search
@main.command()
@click.argument("bundle_path", type=click.Path(exists=True, path_type=Path))
@click.argument("queries", nargs=-1)
@click.option("-k", "--k", default=10, show_default=True, help="Hits per query.")
@click.option("--vectors", type=click.Path(exists=True, path_type=Path),
              help="Query vectors (.npy dense / .npz sparse) instead of query texts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--field", "fields", multiple=True, default=("title",), show_default=True,
              help="Stored fields to show.")
def search(bundle_path, queries, k, vectors, as_json, fields) -> None:
    """Search a bundle with query texts (lexical bundles) or query vectors."""
    from indexing.bundle import load_bundle

    from .retrieval import load_vectors, search_texts

    bundle = load_bundle(bundle_path)
    t0 = time.perf_counter()
    if vectors is not None:
        results = bundle.search(load_vectors(vectors), k)
        labels = [f"vector {i}" for i in range(len(results))]
    else:
        if not queries:
            raise click.UsageError("give query texts or --vectors")
        results = search_texts(bundle, queries, k)
        labels = list(queries)
    elapsed = time.perf_counter() - t0
    for i, label in enumerate(labels):
        hits = results.hits(i)
        stored = bundle.fields([h[0] for h in hits]) if bundle.store is not None else [None] * len(hits)
        if as_json:
            click.echo(json.dumps({"query": label, "hits": [
                {"id": d, "score": s, **{f: (st or {}).get(f) for f in fields}}
                for (d, s), st in zip(hits, stored)]}))
            continue
        click.echo(f"\n{label}")
        for rank, ((d, s), st) in enumerate(zip(hits, stored), 1):
            shown = " | ".join(str((st or {}).get(f, ""))[:80] for f in fields)
            click.echo(f"  {rank:>3}. {s:9.4f}  {d}  {shown}")
    log.info("searched %d queries in %.2f ms", len(labels), elapsed * 1e3)


# ---------------------------------------------------------------- eval
@main.command("eval")
@click.option("--dataset", type=click.Path(exists=True, path_type=Path),
              help="BEIR folder (queries.jsonl and qrels/<split>.tsv).")
@click.option("--split", default="test", show_default=True)
@click.option("--qrels", "qrels_path", type=click.Path(exists=True, path_type=Path),
              help="A qrels file (BEIR .tsv or TREC 4-column) instead of --dataset's.")
@click.option("--run", "run_path", type=click.Path(exists=True, path_type=Path), help="A TREC run file to score.")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True, path_type=Path),
              help="Search this bundle with the data set's queries, then score.")
@click.option("--metric", "metrics", multiple=True, default=("ndcg@10", "recall@100", "mrr@10", "map"),
              show_default=True)
@click.option("--depth", default=1000, show_default=True, help="Hits per query when searching a bundle.")
@click.option("--save-run", type=click.Path(path_type=Path), help="Write the bundle's run as a TREC file.")
def eval_cmd(dataset, split, qrels_path, run_path, bundle_path, metrics, depth, save_run) -> None:
    """Score a TREC run, or a bundle on a BEIR data set, with standard IR metrics (ranx)."""
    from .data import load_beir
    from .data.trec import read_run, write_run
    from .eval import evaluate

    if (run_path is None) == (bundle_path is None):
        raise click.UsageError("give exactly one of --run or --bundle")
    if qrels_path is not None:
        qrels = _read_any_qrels(qrels_path)
        queries = None
    elif dataset is not None:
        ds = load_beir(dataset, split=split)
        qrels, queries = ds.qrels, ds.queries
    else:
        raise click.UsageError("give --dataset or --qrels")
    if run_path is not None:
        run = read_run(run_path)
    else:
        if queries is None:
            raise click.UsageError("--bundle needs --dataset (for the queries)")
        from indexing.bundle import load_bundle

        from .retrieval import search_texts
        bundle = load_bundle(bundle_path)
        qids = [q for q in qrels if q in queries]
        t0 = time.perf_counter()
        run = search_texts(bundle, [queries[q] for q in qids], depth).to_run(qids)
        log.info("searched %d queries in %.2f s", len(qids), time.perf_counter() - t0)
        if save_run:
            write_run(save_run, run)
    scores = evaluate(qrels, run, metrics)
    for name, value in scores.items():
        click.echo(f"{name:>12}  {value:.4f}")


def _read_any_qrels(path: Path):
    from .data import load_qrels
    from .data.trec import read_qrels_trec
    first = path.read_text(encoding="utf-8").split("\n", 1)[0].split()
    if len(first) == 4:
        return read_qrels_trec(path)
    return load_qrels(path)


# ---------------------------------------------------------------- bench
@main.group()
def bench() -> None:
    """Benchmark suite: YAML specs in benchmarks/specs, results in benchmarks/results."""


def _bench_dirs(bench_dir: Path | None) -> Path:
    from .paths import benchmarks_dir
    return bench_dir or benchmarks_dir()


_bench_dir_option = click.option("--bench-dir", type=click.Path(file_okay=False, path_type=Path),
                                 help="The benchmarks folder (default: ./benchmarks).")


@bench.command("list")
@_bench_dir_option
def bench_list(bench_dir) -> None:
    """List the benchmark specs and whether a result is committed."""
    from .bench.spec import find_specs, load_spec
    d = _bench_dirs(bench_dir)
    for name, path in find_specs(d / "specs").items():
        spec = load_spec(path)
        res = d / "results" / f"{name}.json"
        status = "no result"
        if res.exists():
            r = json.loads(res.read_text())
            status = f"{'pass' if r.get('passed') else 'FAIL'} ({r.get('date', '?')})"
        click.echo(f"{name:<20} {spec.pipeline:<16} {status:<34} {spec.description.strip()[:60]}")


@bench.command("run")
@click.argument("specs", nargs=-1, required=True)
@_bench_dir_option
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Real data folder (default: $EMBEDX_DATA or ../shared/data).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec parameter (YAML value), e.g. --set repeats=5; a dotted key sets one "
                   "setting of a block: --set lookup.rounds=3.")
@click.option("--no-save", is_flag=True, help="Do not write benchmarks/results/<spec>.json.")
@click.option("--merge", is_flag=True,
              help="Keep the saved result's numbers that this run does not produce (parts switched off "
                   "with --set PART.enabled=false); the result names the run they came from.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Scratch folder for indexes (default: a temporary folder).")
def bench_run(specs, bench_dir, data_root, overrides, no_save, merge, work_dir) -> None:
    """Run specs by name (or 'all'); exit 1 if a check fails."""
    import tempfile

    import yaml

    from .bench.runner import BenchmarkSkipped, run_spec
    from .bench.spec import find_specs, load_spec
    from .paths import data_root as default_data_root

    d = _bench_dirs(bench_dir)
    known = find_specs(d / "specs")
    names = list(known) if specs == ("all",) else list(specs)
    for n in names:
        if n not in known and not Path(n).exists():
            raise click.UsageError(f"unknown spec {n!r}; known: {', '.join(known)}")
    parsed = {}
    for o in overrides:
        if "=" not in o:
            raise click.UsageError(f"--set takes KEY=VALUE, got {o!r}")
        key, value = o.split("=", 1)
        parsed[key] = yaml.safe_load(value)
    failed = False
    for n in names:
        spec = load_spec(known.get(n) or Path(n))
        with tempfile.TemporaryDirectory(prefix=f"embedx-bench-{spec.name}-") as tmp:
            try:
                rec = run_spec(spec, data_root=data_root or default_data_root(),
                               results_dir=None if no_save else d / "results",
                               work_dir=work_dir / spec.name if work_dir else Path(tmp), overrides=parsed,
                               merge=merge)
            except BenchmarkSkipped as e:
                click.echo(f"{spec.name}: skipped: {e}")
                continue
        click.echo(f"{spec.name}: {'pass' if rec['passed'] else 'FAIL'} in {rec['duration_s']} s")
        for c in rec["checks"]:
            click.echo(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['metric']:<28} {c['value']!s:<24} target {c['target']}")
        failed |= not rec["passed"]
    if failed:
        sys.exit(1)


@bench.command("report")
@_bench_dir_option
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=Path("README.md"),
              show_default=True)
def bench_report(bench_dir, readme) -> None:
    """Regenerate the README's results table from benchmarks/results/*.json."""
    from .bench.report import update_readme
    table = update_readme(readme, _bench_dirs(bench_dir) / "results")
    click.echo(table)


# ---------------------------------------------------------------- train
@main.group(cls=_LazyGroup, lazy={"tables": "embedx.tables.train:cli", "sparse": "embedx.sparse.train:cli"})
def train() -> None:
    """Train models: `tables` (CTR models over compressed embedding tables), `sparse` (inference-free
    learned sparse document encoders)."""


# ---------------------------------------------------------------- demo
@main.command()
@click.option("--corpus", "corpus_path", type=click.Path(exists=True, path_type=Path),
              help="A BEIR folder (default: the small demo corpus shipped with embedx).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out/bundle"), show_default=True,
              help="Where to write the index bundle.")
@click.option("-k", "--k", default=3, show_default=True)
@click.option("--query", "queries", multiple=True, help="Queries to run (default: the data set's own).")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="End by serving the bundle over HTTP on loopback and querying it.")
def demo(corpus_path, out, k, queries, serve) -> None:
    """The main job: index a corpus into a bundle, reload it verified, run queries, show timings,
    then serve the bundle over HTTP and query it."""
    from .demo import run_demo
    run_demo(corpus_path, out, k, list(queries), echo=click.echo, serve=serve)


if __name__ == "__main__":  # pragma: no cover
    main()
