"""The training loop on tiny digits runs (CPU): files, callbacks, resume, divergence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fixtures.configs import tiny_config
from harness.config import build_config
from harness.core.checkpoint import load_checkpoint
from harness.core.components import build_model, build_optimizers, seed_everything
from harness.core.train import RunResult, run_training

EPOCH_KEYS = {
    "loss", "loss.batch", "loss.memory", "val.recall@1", "val.recall@10", "val.map@r",
    "val.r_precision", "lr", "memory_fill", "drift_mean", "drift_max", "epoch_seconds",
    "skipped_images",
}  # fmt: skip


def tiny(**sections) -> dict:
    """A seconds-long digits run: the shared tiny run (tests/fixtures/configs.py) at 32×32,
    evaluated before training (the default), with ``sections`` updating its sections."""
    raw = tiny_config(
        data={"image_size": 32},
        # No miner: an untrained net's embeddings lie within the pair-margin miner's
        # positive margin, which would mine no positives and give a zero loss.
        loss={"miner": None},
        memory={"kind": "none", "size": 64},
        optim={"lr": 1e-3},
        train={"eval_batch_size": 128},
    )
    del raw["train"]["eval_untrained"]
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def test_run_writes_files_and_calls_on_epoch_after_checkpoint(tmp_path):
    cfg = build_config(tiny(memory={"kind": "xbm", "size": 64}, train={"epochs": 2}))
    seen = []

    def on_epoch(epoch, metrics):
        # last.pt of this epoch exists when the callback runs
        assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == epoch
        seen.append((epoch, dict(metrics)))

    result = run_training(cfg, tmp_path, on_epoch=on_epoch)
    assert isinstance(result, RunResult) and result.status == "completed"
    assert result.epochs_run == 2 and result.device == "cpu" and result.best_epoch in (1, 2)
    assert [e for e, _ in seen] == [1, 2]
    for _, m in seen:
        assert EPOCH_KEYS <= set(m), EPOCH_KEYS - set(m)
        assert all(isinstance(v, float) for v in m.values())
        assert math.isfinite(m["loss"]) and m["loss"] > 0 and m["loss.memory"] > 0
        assert m["drift_mean"] > 0 and m["drift_max"] >= m["drift_mean"]
        assert 0 < m["memory_fill"] <= 64
    for name in ("config.yaml", "checkpoints/last.pt", "checkpoints/best.pt", "epochs.jsonl", "summary.json"):
        assert (tmp_path / name).is_file(), name
    lines = [json.loads(x) for x in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and lines[1]["loss"] == seen[1][1]["loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best_epoch"] == result.best_epoch
    for key in ("val.recall@1", "test.recall@1", "test.map@r", "test_untrained.recall@1"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["val.recall@1"] == max(m["val.recall@1"] for _, m in seen)
    # best.pt holds the selected epoch and the test metrics are that checkpoint's
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == result.best_epoch


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Interrupt after epoch 2 (a crash in the callback), resume: epoch 3 matches exactly."""
    raw = tiny(
        memory={"kind": "axbn", "size": 48},
        xml={"enabled": True, "weight": 0.5},
        data={"augment": "standard", "workers": 0},  # augmentation draws from torch's RNG
        optim={"warmup_epochs": 1, "lr_decay_every": 1, "lr_decay": 0.5},
        train={"epochs": 3},
    )
    cfg = build_config(raw)
    full: dict[int, dict] = {}
    run_training(cfg, tmp_path / "full", on_epoch=lambda e, m: full.__setitem__(e, m))

    class Interrupt(Exception):
        pass

    def crash_after_two(epoch, metrics):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(cfg, tmp_path / "cut", on_epoch=crash_after_two)
    resumed: dict[int, dict] = {}
    result = run_training(cfg, tmp_path / "cut", on_epoch=lambda e, m: resumed.__setitem__(e, m))
    assert list(resumed) == [3] and result.epochs_run == 3
    assert full[3]["loss.xml"] > 0 and full[3]["loss.memory"] > 0
    for key in ("loss", "loss.batch", "loss.memory", "loss.xml", "memory_fill", "lr", "drift_mean"):
        assert resumed[3][key] == pytest.approx(full[3][key], rel=1e-6, abs=1e-7), key
    assert resumed[3]["val.recall@1"] == full[3]["val.recall@1"]
    lines = (tmp_path / "cut" / "epochs.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_resume_with_another_config_is_refused(tmp_path):
    from harness.errors import ConfigError

    run_training(build_config(tiny(train={"epochs": 1})), tmp_path)
    # more epochs is a continuation ...
    assert run_training(build_config(tiny(train={"epochs": 2})), tmp_path).epochs_run == 2
    # ... another learning rate is another run
    with pytest.raises(ConfigError, match="optim.lr"):
        run_training(build_config(tiny(train={"epochs": 3}, optim={"lr": 0.1})), tmp_path)
    assert run_training(build_config(tiny(train={"epochs": 1}, optim={"lr": 0.1})), tmp_path, resume=False).epochs_run == 1


@pytest.mark.parametrize("bad_epoch", [1, 2])
def test_nonfinite_loss_ends_the_run_as_diverged(tmp_path, monkeypatch, bad_epoch):
    from harness.core.memory import CrossBatchMemory

    calls = {"n": 0}
    original = CrossBatchMemory.forward

    def nan_from(self, embeddings, labels, sources=None):
        calls["n"] += 1
        loss = original(self, embeddings, labels, sources)
        return loss * float("nan") if calls["n"] > 3 * (bad_epoch - 1) else loss

    monkeypatch.setattr(CrossBatchMemory, "forward", nan_from)
    seen = []
    result = run_training(build_config(tiny(train={"epochs": 3})), tmp_path, on_epoch=lambda e, m: seen.append(e))
    assert result.status == "diverged" and result.epochs_run == bad_epoch - 1
    assert seen == list(range(1, bad_epoch)) and result.test == {}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "test.recall@1" not in summary


def test_huge_learning_rate_diverges_without_crashing(tmp_path):
    cfg = build_config(tiny(optim={"lr": 1e30}, train={"epochs": 3}))
    result = run_training(cfg, tmp_path)
    assert result.status == "diverged"


def test_warmup_trains_only_the_new_layers(tmp_path):
    cfg = build_config(tiny(optim={"warmup_epochs": 1, "warmup_lr": 0.1}, train={"epochs": 1}))
    seed_everything(cfg.seed)
    initial = build_model(cfg).state_dict()
    run_training(cfg, tmp_path)
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    model = build_model(cfg)
    new = {id(p) for p in model.new_parameters()}
    new_names = {n for n, p in model.named_parameters() if id(p) in new}
    assert new_names and any(n.startswith("head") for n in new_names)
    for name, value in initial.items():
        changed = not torch.equal(value, after[name])
        if name in new_names:
            assert changed, name
        else:  # backbone weights and BN statistics stay as initialised
            assert not changed, name


def test_lr_schedule_and_proxy_group():
    cfg = build_config(tiny(optim={"lr": 1e-3, "lr_decay": 0.5, "lr_decay_every": 2}, loss={"proxy_lr": 0.05}))
    model = build_model(cfg)
    proxies = [torch.nn.Parameter(torch.zeros(3, 16))]
    optimizer, warmup, scheduler = build_optimizers(cfg, model, proxies)
    assert warmup is None
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 0.05]
    assert optimizer.param_groups[1]["params"] == proxies
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])


def test_without_validation_the_last_epoch_is_best(tmp_path):
    result = run_training(build_config(tiny(data={"val_fraction": 0.0})), tmp_path)
    assert result.status == "completed" and result.best_epoch == 2
    assert "test.recall@1" in result.test and result.best_val == {}


def test_missing_dataset_root_is_a_data_error(tmp_path):
    from harness.errors import DataError

    cfg = build_config(tiny(data={"name": "cub", "root": str(tmp_path / "nowhere")}))
    with pytest.raises(DataError) as e:
        run_training(cfg, tmp_path / "run")
    assert "\n" not in str(e.value) and "nowhere" in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_device_helpers():
    from harness.core.device import amp_dtype, describe_device, pick_device

    cpu = torch.device("cpu")
    assert pick_device("cpu") == cpu
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "off") is None
    assert amp_dtype(cpu, "on") == torch.bfloat16
    assert describe_device(cpu) == "cpu"
    if not torch.cuda.is_available():
        from harness.errors import ConfigError

        with pytest.raises(ConfigError, match="train.device"):
            pick_device("cuda")


def test_trainer_state_is_not_global(tmp_path):
    """Two runs in one process do not share state: same config, same seed -> same losses."""
    cfg = build_config(tiny(train={"epochs": 1}))
    a, b = [], []
    run_training(cfg, tmp_path / "a", on_epoch=lambda e, m: a.append(m["loss"]))
    run_training(cfg, tmp_path / "b", on_epoch=lambda e, m: b.append(m["loss"]))
    assert a == b


def test_proxy_loss_trains_its_proxies_in_their_own_group(tmp_path):
    from harness.errors import ConfigError

    proxy = {"name": "ProxyAnchorLoss", "params": {}, "miner": None, "proxy_lr": 0.05}
    result = run_training(build_config(tiny(loss=proxy, train={"epochs": 1})), tmp_path / "ok")
    assert result.status == "completed"
    state = load_checkpoint(tmp_path / "ok" / "checkpoints" / "last.pt")
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 0.05]
    proxies = state["memory"]["loss.proxies"]
    assert proxies.shape == (3, 16)  # 3 training classes x embedding size
    with pytest.raises(ConfigError, match="memory.kind"):
        run_training(build_config(tiny(loss=proxy, memory={"kind": "xbm"})), tmp_path / "bad")


def test_autocast_path_runs_on_cpu_with_bf16(tmp_path):
    """The AMP code path (autocast + fp32 losses) on CPU; CUDA picks it by itself."""
    result = run_training(build_config(tiny(train={"epochs": 1, "amp": "on"}, xml={"enabled": True})), tmp_path)
    assert result.status == "completed" and math.isfinite(result.test["test.recall@1"])
    epoch = json.loads((tmp_path / "epochs.jsonl").read_text().splitlines()[0])
    assert math.isfinite(epoch["loss"]) and epoch["loss.xml"] > 0


@pytest.mark.slow
def test_loader_processes_are_training_and_validation_only(tmp_path):
    """With data.workers=2 a run keeps 2 training and 2 validation loader workers alive
    between epochs; the probe set (a few dozen images) is embedded in the process, not by
    a third persistent loader (21-28 processes on an 8-vCPU trial before)."""
    import os
    from pathlib import Path

    def children() -> int:
        me = os.getpid()
        return sum(len(Path(t, "children").read_text().split()) for t in Path(f"/proc/{me}/task").iterdir()
                   if Path(t, "children").exists())

    before = children()
    seen = []
    run_training(build_config(tiny(data={"workers": 2}, train={"epochs": 2, "eval_untrained": False})),
                 tmp_path, on_epoch=lambda e, m: seen.append(children() - before))
    assert seen == [4, 4]
