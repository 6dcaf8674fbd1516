"""Training checkpoints on disk, shared by the table and sparse trainers.

A checkpoint is a folder under ``root`` holding one safetensors file per tensor group
(weights, optimiser state, RNG) and ``state.json`` for everything else; ``root/latest.json``
points at the newest complete one. The folder is written in a temporary sibling and renamed
into place, then the pointer is replaced atomically, so a crash leaves either the old or the
new checkpoint, never half of one. Only the newest ``keep`` folders are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from indexing.fsutil import atomic_directory, atomic_write_text

log = logging.getLogger(__name__)

POINTER = "latest.json"
STATE = "state.json"


def write_checkpoint(root: Path, name: str, *, tensors: Mapping[str, Mapping[str, torch.Tensor]],
                     state: Mapping[str, Any], pointer: Mapping[str, Any], keep: int) -> Path:
    """Write ``root/name`` (``<group>.safetensors`` for each of ``tensors``, and ``state.json``),
    point ``latest.json`` at it (with ``pointer``'s extra fields) and delete all but the newest
    ``keep`` checkpoints. Checkpoint names must sort in training order."""
    root = Path(root)
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    with atomic_directory(folder) as tmp:
        for group, values in tensors.items():
            (tmp / f"{group}.safetensors").write_bytes(st_save(dict(values)))
        (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")
    atomic_write_text(root / POINTER, json.dumps({"checkpoint": name, **pointer}))
    prefix = name.split("-", 1)[0] + "-"
    for old in sorted(p for p in root.glob(prefix + "*") if p.is_dir())[:-max(int(keep), 1)]:
        shutil.rmtree(old, ignore_errors=True)
    log.debug("checkpoint written: %s", folder)
    return folder


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``latest.json`` points at, or None when there is no complete checkpoint."""
    pointer = Path(root) / POINTER
    if not pointer.is_file():
        return None
    folder = Path(root) / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    return folder if (folder / STATE).is_file() else None


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / STATE).read_text(encoding="utf-8"))


def read_tensors(folder: Path, group: str) -> dict[str, torch.Tensor]:
    return st_load((Path(folder) / f"{group}.safetensors").read_bytes())


def detached(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies: what safetensors needs (copies also untie shared tensors, such as
    tied embeddings, which safetensors refuses)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}


def split_tensors(nested: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``{outer: {inner: value}}`` (an optimiser's ``state``) -> (``"outer.inner"`` -> tensor
    copy, ``"outer.inner"`` -> JSON scalar): what safetensors and ``state.json`` hold."""
    tensors, scalars = {}, {}
    for outer, entries in nested.items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{outer}.{key}"] = value
            else:
                scalars[f"{outer}.{key}"] = value
    return detached(tensors), scalars


def join_tensors(tensors: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The inverse of :func:`split_tensors` (outer keys stay strings)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *scalars.items()]:
        outer, key = name.split(".", 1)
        out.setdefault(outer, {})[key] = value
    return out
