"""Checkpoints across devices, made visible on the CPU (harness/core/checkpoint.py and the
trainer's resume): a checkpoint written on a GPU node (tensors tagged ``cuda:N``) loads on
a CPU machine, every state tensor is on the training device after a resume, a run saved
without a grad scaler resumes with fp16 loss scaling, RNG states of more GPUs than present.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from harness.config import build_config
from harness.core.checkpoint import load_checkpoint, save_checkpoint, set_rng_states, rng_states
from harness.core.train import run_training
from harness.core.trainer import Trainer, load_scaler_state
from harness.doctor.fixtures import misplaced_state, tensors_in, tiny_config

@contextmanager
def saved_as_if_on(location: str):
    """torch.save tags every storage with ``location`` (e.g. "cuda:1"), as on a GPU node."""
    entry = (1, lambda storage: location, lambda storage, loc: None)
    torch.serialization._package_registry.append(entry)
    torch.serialization._package_registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def resave_as_gpu_checkpoint(path: Path, location: str = "cuda:1") -> None:
    state = load_checkpoint(path)
    with saved_as_if_on(location):
        save_checkpoint(state, path)


# ---------------------------------------------------------------- checkpoints / resume


def test_checkpoint_from_a_gpu_node_loads_on_a_cpu_machine(tmp_path, monkeypatch):
    path = tmp_path / "gpu.pt"
    with saved_as_if_on("cuda:1"):
        save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}, "probe_prev": torch.zeros(2, 2)}, path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, on any machine
    # the simulation is real: torch's own default restores to the saved device
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=False)
    state = load_checkpoint(path)
    assert {t.device.type for _, t in tensors_in(state)} == {"cpu"}
    assert torch.equal(state["model"]["w"], torch.ones(3))


@pytest.mark.slow
def test_resume_of_a_gpu_checkpoint_places_every_state_tensor(tmp_path):
    """A last.pt written on cuda:1 resumes here: the state is on the training device,
    the drift probe on the CPU, and the resumed epoch's drift is finite."""
    cfg = build_config(tiny_config("axbn", "auto", epochs=1))
    run_training(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    resave_as_gpu_checkpoint(last)
    trainer = Trainer(cfg, tmp_path)
    trainer.load_state_dict(load_checkpoint(last))
    assert misplaced_state(trainer, trainer.device) == []
    assert trainer.probe_prev is not None and trainer.probe_prev.device.type == "cpu"
    assert trainer.memory.kalman.mean.device == trainer.device
    # every tensor of the state is visited (the check can fail)
    paths = [p for p, _ in tensors_in(trainer.state_dict())]
    assert "probe_prev" in paths and any(p.startswith("memory.") for p in paths)
    trainer.close()
    seen = {}
    result = run_training(build_config(tiny_config("axbn", "auto", epochs=2)), tmp_path,
                          on_epoch=lambda e, m: seen.__setitem__(e, m))
    assert result.status == "completed" and list(seen) == [2]
    assert math.isfinite(seen[2]["drift_mean"]) and seen[2]["drift_mean"] > 0


def test_misplaced_state_reports_tensors_off_the_device():
    class Fake:
        memory = type("Mem", (), {"kalman": None})()

        def state_dict(self):
            return {"model": {"w": torch.zeros(1, device="meta")}, "rng": {"torch": torch.zeros(1)},
                    "optimizer": {"state": {0: {"step": torch.zeros(()), "exp_avg": torch.zeros(1)}}},
                    "probe_prev": torch.zeros(1)}

    assert misplaced_state(Fake(), torch.device("cpu")) == ["model.w@meta"]


def test_scaler_less_checkpoint_resumes_with_fp16_loss_scaling(tmp_path, monkeypatch):
    """Saved in fp32 or bf16 (empty scaler state), resumed where fp16 + GradScaler is used."""
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})  # what used to happen
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    load_scaler_state(scaler, {})
    assert scaler.get_scale() == 2.0**16

    run_training(build_config(tiny_config("xbm", "cpu", epochs=1)), tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"] == {}
    import harness.core.trainer as T

    monkeypatch.setattr(T, "needs_grad_scaler", lambda dtype: True)  # as with fp16 on a T4
    result = run_training(build_config(tiny_config("xbm", "cpu", epochs=2)), tmp_path)
    assert result.status == "completed" and result.epochs_run == 2
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"]["scale"] > 0


def test_rng_restore_with_fewer_gpus_than_saved(monkeypatch):
    states = rng_states()
    states["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: calls.append((int(s[0]), device)))
    set_rng_states(states)
    assert calls == [(0, 0)]  # GPU 0 restored, the saved state of GPU 1 dropped
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    calls.clear()
    set_rng_states(states)
    assert calls == [(0, 0), (1, 1)]  # GPUs 2, 3 keep their state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls.clear()
    set_rng_states(states)  # a CPU node
    assert calls == []


