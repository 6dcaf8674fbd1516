"""``embedx export dense|sparse-doc``: a torch encoder -> an ONNX encoder folder for serving."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _read_samples(path: Path, n: int) -> list[str]:
    """Sample texts for the parity check: a BEIR corpus (folder or ``corpus.jsonl[.gz]``) or a
    text file with one text per line."""
    if path.is_dir() or path.name.endswith((".jsonl", ".jsonl.gz")):
        from embedx.data import load_corpus
        from embedx.retrieval import doc_text

        texts = [doc_text(d) for d in load_corpus(path).values()]
    else:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise click.ClickException(f"{path}: no sample texts")
    return texts[:n]


def _parse_thresholds(items) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected NAME=NUMBER, got {item!r}", param_hint="--threshold") from None
    return out


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("kind", type=click.Choice(["dense", "sparse-doc"]))
@click.option("--model", default=None, help="Model folder or name (default: all-minilm-l6-v2 for dense, "
              "splade-tiny for sparse-doc).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Encoder folder to write.")
@click.option("--int8", is_flag=True, help="Dynamic int8 quantisation of the MatMul weights.")
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Token limit (default: the model's own, at most 512).")
@click.option("--space-id", default=None, help="Representation-space id (default: encoder:<hash>).")
@click.option("--pooling", type=click.Choice(["mean", "cls", "max"]), default=None,
              help="Dense pooling (default: what the model folder says, else mean).")
@click.option("--normalize/--no-normalize", default=None, help="Dense L2 normalisation (default: the folder's).")
@click.option("--prune-ratio", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
              help="Sparse: drop weights below this share of each text's largest weight.")
@click.option("--samples", type=click.Path(exists=True, path_type=Path), default=None,
              help="Parity sample texts: a BEIR corpus or a file with one text per line (default: the demo corpus).")
@click.option("--n-samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="How many texts of --samples to use.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE",
              help="Override a parity threshold, e.g. min_cosine=0.99 (max_* are upper bounds).")
@click.option("--overwrite", is_flag=True, help="Replace an existing folder (after the new one passed parity).")
def export(kind, model, out, int8, max_length, space_id, pooling, normalize, prune_ratio, samples, n_samples,
           thresholds, overwrite) -> None:
    """Export a torch encoder to ONNX (dynamic batch and sequence axes), check parity with the
    torch model, and write model.onnx, tokenizer.json and encoder.json to OUT.

    \b
    embedx export dense --model all-minilm-l6-v2 --out encoders/minilm --int8
    embedx export sparse-doc --model splade-tiny --out encoders/splade-doc --int8
    """
    from serving.encoders.base import EncoderError

    from .onnx import ExportError, export_dense, export_sparse_doc
    from .parity import ParityError

    if kind == "sparse-doc" and (pooling or normalize is not None):
        raise click.UsageError("--pooling and --normalize apply to dense encoders")
    if kind == "dense" and prune_ratio:
        raise click.UsageError("--prune-ratio applies to sparse-doc encoders")
    common = dict(int8=int8, max_length=max_length, space_id=space_id, overwrite=overwrite,
                  sample_texts=_read_samples(samples, n_samples) if samples else None,
                  thresholds=_parse_thresholds(thresholds))
    try:
        if kind == "dense":
            path = export_dense(model or "all-minilm-l6-v2", out, pooling=pooling, normalize=normalize, **common)
        else:
            path = export_sparse_doc(model or "splade-tiny", out, prune_ratio=prune_ratio, **common)
    except (ExportError, ParityError, EncoderError, FileNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    config = json.loads((path / "encoder.json").read_text())
    parity = {k: v for k, v in config["parity"].items() if k not in ("batch_shapes", "thresholds")}
    size = (path / "model.onnx").stat().st_size / 2**20
    click.echo(f"wrote {path} ({config['type']}, {'int8' if int8 else 'fp32'}, {size:.1f} MiB)")
    click.echo(f"hash {config['hash']}  space_id {config['space_id']}")
    click.echo("parity " + json.dumps(parity))
