"""The shared checkpoint folder format: atomic folders, the latest pointer, pruning, and the
optimiser-state split that safetensors needs."""

from __future__ import annotations

import json

import torch

from embedx.checkpoint import (join_tensors, latest_checkpoint, read_state, read_tensors, split_tensors,
                               write_checkpoint)


def test_write_point_and_prune(tmp_path):
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(root) is None
    for step in (1, 2, 3):
        folder = write_checkpoint(root, f"step-{step:07d}", tensors={"model": {"w": torch.full((2,), float(step))}},
                                  state={"step": step}, pointer={"global_step": step}, keep=2)
    assert folder == root / "step-0000003" and latest_checkpoint(root) == folder
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-0000002", "step-0000003"]
    assert json.loads((root / "latest.json").read_text()) == {"checkpoint": "step-0000003", "global_step": 3}
    assert read_state(folder) == {"step": 3} and read_tensors(folder, "model")["w"].tolist() == [3.0, 3.0]
    # rewriting a step replaces it whole; a pointer at a folder without state.json means none
    write_checkpoint(root, "step-0000003", tensors={}, state={"again": True}, pointer={}, keep=2)
    assert read_state(root / "step-0000003") == {"again": True}
    (root / "step-0000003" / "state.json").unlink()
    assert latest_checkpoint(root) is None


def test_split_and_join_an_optimizer_state():
    shared = torch.ones(3)
    opt_state = {0: {"step": 4, "exp_avg": shared}, 1: {"step": 4, "exp_avg": shared[:2]}}
    tensors, scalars = split_tensors(opt_state)
    assert scalars == {"0.step": 4, "1.step": 4} and set(tensors) == {"0.exp_avg", "1.exp_avg"}
    assert tensors["0.exp_avg"].data_ptr() != shared.data_ptr()  # copies: safetensors refuses shared storage
    joined = join_tensors(tensors, scalars)
    assert joined["1"]["step"] == 4 and joined["1"]["exp_avg"].tolist() == [1.0, 1.0]
