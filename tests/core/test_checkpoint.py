"""Checkpoints: atomic writes, one-line errors for bad files, RNG round trip, load_model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from harness.config import build_config
from harness.core import checkpoint as ckpt
from harness.core.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from harness.errors import HarnessError

TINY = {"model": {"backbone": "tiny_cnn_small", "embedding_size": 16}}


def test_save_then_load_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}, "config": {}, "epoch": 2}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "config": {}, "epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"model": {}, "config": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", None])
def test_bad_checkpoint_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert isinstance(e.value, HarnessError) and "\n" not in str(e.value)
    assert str(path) in str(e.value)


def test_truncated_and_foreign_checkpoints(tmp_path):
    path = tmp_path / "full.pt"
    save_checkpoint({"model": {"w": torch.randn(100, 100)}, "config": {}}, path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(CheckpointError, match="not a harness checkpoint"):
        load_checkpoint(foreign)


def test_rng_states_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    states = rng_states()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_states(states)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_load_model_rebuilds_and_loads_weights(tmp_path):
    from harness.core.components import build_model

    cfg = build_config(TINY)
    torch.manual_seed(3)
    model = build_model(cfg)
    path = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.model_dump(mode="json")}, path)
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x).embeddings, model(x).embeddings)


def test_load_model_with_mismatched_weights(tmp_path):
    from harness.core.components import build_model

    cfg = build_config(TINY)
    other = build_config({"model": {**TINY["model"], "embedding_size": 8}})
    path = tmp_path / "best.pt"
    save_checkpoint({"model": build_model(other).state_dict(), "config": cfg.model_dump(mode="json")}, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)
