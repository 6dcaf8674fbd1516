"""Command line of the sparse capability (imported lazily by ``embedx``; torch loads per command).

- ``embedx train sparse --config X`` is :func:`embedx.sparse.train.cli` (also
  ``python -m embedx.sparse.train --config X``);
- ``embedx sparse prepare``: mine candidates and teacher scores into the training file;
- ``embedx sparse describe``: counts and teacher agreement of a prepared file;
- ``embedx sparse encode``: a corpus into document vectors (where torch runs, e.g. a GPU);
- ``embedx sparse evaluate``: NDCG@10 / Recall@100 / FLOPS in the native index and Lucene;
- ``embedx sparse train``: the same as ``embedx train sparse``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedx.data.errors import DataFormatError

_CTX = {"help_option_names": ["-h", "--help"]}


class _SparseGroup(click.Group):
    """Clean one-line errors for the capability's user errors; ``train`` loaded on first use."""

    def get_command(self, ctx, name):
        if name == "train":
            from .train import cli as train_cli
            return train_cli
        return super().get_command(ctx, name)

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), "train"})

    def invoke(self, ctx):
        from .config import SparseConfigError
        from .dataset import PreparedDataError
        try:
            return super().invoke(ctx)
        except (SparseConfigError, PreparedDataError, DataFormatError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None


@click.group("sparse", cls=_SparseGroup, context_settings=_CTX)
def sparse() -> None:
    """Inference-free learned sparse retrieval: prepare training data, train, evaluate."""


@sparse.command("prepare")
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The training file to write (.npz).")
@click.option("--split", "splits", multiple=True, type=click.Choice(["unsupervised", "supervised"]),
              default=("unsupervised", "supervised"), show_default=True, help="Which training splits to build.")
@click.option("--teacher", "teachers", multiple=True, type=click.Choice(["bm25", "dense", "sparse"]),
              default=("bm25", "dense", "sparse"), show_default=True,
              help="Teachers that mine candidates and score them (repeat the option).")
@click.option("--top-k", default=20, show_default=True, help="Candidates mined per teacher (union, positives removed).")
@click.option("--qrels-split", default="train", show_default=True, help="Judgements of the supervised split.")
@click.option("--dense-model", default="all-minilm-l6-v2", show_default=True)
@click.option("--sparse-model", default="splade-tiny", show_default=True)
@click.option("--sparse-max-length", default=512, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Encoding cache (default: $EMBEDX_CACHE/sparse/encodings or ~/.cache/embedx/sparse/encodings).")
def prepare_cmd(dataset, out, splits, teachers, top_k, qrels_split, dense_model, sparse_model, sparse_max_length,
                cache_dir) -> None:
    """Mine hard negatives and precompute teacher scores into one self-contained training file."""
    from .prepare import describe, prepare

    if top_k <= 0:
        raise click.BadParameter("must be positive", param_hint="--top-k")
    data = prepare(dataset, out, splits=splits, teachers=teachers, top_k=top_k, qrels_split=qrels_split,
                   cache_dir=cache_dir, dense_model=dense_model, sparse_model=sparse_model,
                   sparse_max_length=sparse_max_length)
    click.echo(json.dumps({"out": str(out), "bytes": out.stat().st_size, **describe(data)}, indent=1))


@sparse.command("describe")
@click.argument("prepared", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def describe_cmd(prepared) -> None:
    """Counts and teacher agreement of a prepared training file."""
    from .dataset import PreparedData
    from .prepare import describe

    data = PreparedData.load(prepared)
    click.echo(json.dumps({"meta": data.meta, **describe(data)}, indent=1))


@sparse.command("encode")
@click.option("--model", required=True, help="A training output folder, a masked-LM folder or a short name.")
@click.option("--corpus", required=True, type=click.Path(exists=True, path_type=Path),
              help="BEIR folder or corpus.jsonl[.gz]; documents read as title and text.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .npz to write.")
@click.option("--max-length", default=512, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def encode_cmd(model, corpus, out, max_length, batch_size, device) -> None:
    """Encode a corpus into document vectors (e.g. on a GPU); `evaluate --model FILE.npz` scores them."""
    from .evaluate import encode_corpus

    try:
        result = encode_corpus(model, corpus, out, max_length=max_length, batch_size=batch_size, device=device)
    except ValueError as e:   # a bad model folder or corpus file: the library says which
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(result, indent=1))


@sparse.command("evaluate")
@click.option("--model", required=True, help="A training output folder (model/ + query_encoder/), a masked-LM "
              "folder, a short name (splade-tiny) or document vectors from `encode` (.npz).")
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True)
@click.option("--query-encoder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Query encoder folder (default: the run's own, else IDF over the corpus).")
@click.option("--engine", "engines", multiple=True, type=click.Choice(["native", "native-uint8", "lucene"]),
              default=("native", "lucene"), show_default=True)
@click.option("--max-length", default=512, show_default=True, help="Document tokens when encoding.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--prune-ratio", default=0.0, show_default=True,
              help="Drop document weights below this fraction of the document's largest weight.")
@click.option("--min-idf", default=0.0, show_default=True,
              help="Queries drop tokens whose IDF over the corpus is below this (1.0: stopwords, punctuation).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Encoding cache folder.")
@click.option("--no-cache", is_flag=True, help="Encode the corpus even when a cached encoding exists.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the numbers here.")
def evaluate_cmd(model, dataset, split, query_encoder, engines, max_length, batch_size, prune_ratio, min_idf,
                 cache_dir, no_cache, json_out) -> None:
    """Score a sparse model with IDF queries: NDCG@10, Recall@100, FLOPS, term counts."""
    from indexing.fsutil import atomic_write_text

    from .evaluate import evaluate_sparse

    if not 0.0 <= prune_ratio < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--prune-ratio")
    if not 0.0 <= min_idf < float("inf"):
        raise click.BadParameter("must be finite and >= 0", param_hint="--min-idf")
    try:
        result = evaluate_sparse(model, dataset, split=split, query_encoder=query_encoder, engines=engines,
                                 cache_dir=False if no_cache else cache_dir, max_length=max_length,
                                 batch_size=batch_size, prune_ratio=prune_ratio, min_idf=min_idf)
    except ValueError as e:   # mismatched encoders, bad files, index errors: one line, no traceback
        raise click.ClickException(str(e)) from None
    text = json.dumps(result, indent=1)
    if json_out:
        atomic_write_text(json_out, text)
    click.echo(text)


if __name__ == "__main__":  # pragma: no cover
    sparse()
