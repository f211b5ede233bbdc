"""The papers' fine-tuning regime in the training core: the pre-warm-up trains with
L(B, B) alone and leaves every memory untouched, a run can start from a ``harness
train`` checkpoint, and the staleness diagnostics measure the memory as the loss uses
it (docs/METHODS.md §1 and §4)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.config import build_config
from harness.core.checkpoint import load_checkpoint
from harness.core.components import build_model
from harness.core.memory import CrossBatchMemory
from harness.core.staleness import memory_error
from harness.core.train import run_training
from harness.core.trainer import Trainer
from harness.errors import ConfigError
from harness.results.contract import MEMORY_KINDS
from fixtures.configs import tiny_config
from pytorch_metric_learning.losses import SupConLoss


NO_MINER = {"miner": None}  # an untrained net's pairs all lie inside the miner's margins


def epochs_of(out):
    return [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", [k for k in MEMORY_KINDS if k != "none"])
def test_pre_warm_up_leaves_the_memory_empty_and_unused(kind, tmp_path):
    cfg = build_config(tiny_config(memory={"kind": kind, "size": 64}, optim={"warmup_epochs": 1},
                                   train={"epochs": 1}, loss=NO_MINER))
    trainer = Trainer(cfg, tmp_path)
    parts = trainer.train_epoch(1)
    assert trainer.is_warmup(1) and parts is not None
    memory = trainer.memory
    assert parts["loss.memory"] == 0.0 and parts["loss.batch"] > 0.0 and parts["loss"] == parts["loss.batch"]
    assert memory.fill == 0 and int(memory.filled) == 0 and int(memory.iteration) == 0
    assert torch.count_nonzero(memory.embeddings) == 0 and (memory.sources == -1).all()
    if kind == "axbn":
        assert memory.kalman.mean is None  # the Kalman filter saw no batch either
    # the first fine-tuning step is the memory's first
    trainer._set_stage(False)
    parts = trainer.train_epoch(2)
    assert memory.fill == min(64, 16 * cfg.train.iters_per_epoch) and int(memory.iteration) == cfg.train.iters_per_epoch
    trainer.close()


def test_xbm_start_iteration_counts_from_the_fine_tuning_start(tmp_path):
    """start_iteration 2, one warm-up epoch of 3 steps: the memory loss starts at the
    third fine-tuning step, not at the third step of the run."""
    cfg = build_config(tiny_config(memory={"kind": "xbm", "size": 64, "start_iteration": 2},
                                   optim={"warmup_epochs": 1}, train={"epochs": 2, "iters_per_epoch": 3},
                                   loss=NO_MINER))
    trainer = Trainer(cfg, tmp_path)
    seen = []
    forward = CrossBatchMemory.forward

    def spy(self, embeddings, labels, sources=None):
        loss = forward(self, embeddings, labels, sources)
        seen.append(float(self.last_parts["loss.memory"]))
        return loss

    CrossBatchMemory.forward = spy
    try:
        trainer.train_epoch(1)
        assert seen == []  # warm-up: the memory's forward is never called
        trainer.train_epoch(2)
    finally:
        CrossBatchMemory.forward = forward
    assert seen[0] == 0.0 and seen[1] == 0.0 and seen[2] > 0.0
    trainer.close()


def test_warm_up_epochs_report_no_memory_in_epochs_log(tmp_path):
    cfg = build_config(tiny_config(memory={"kind": "xbn", "size": 64}, optim={"warmup_epochs": 1},
                                   train={"epochs": 2}, loss=NO_MINER))
    run_training(cfg, tmp_path)
    first, second = epochs_of(tmp_path)
    assert first["loss.memory"] == 0.0 and first["memory_fill"] == 0.0
    assert math.isnan(first["memory_error_mean"])  # nothing stored yet
    assert second["memory_fill"] > 0 and second["loss.memory"] > 0
    assert second["memory_error_mean"] >= 0 and 0 <= second["memory_nn_disagreement"] <= 1
    for key in ("drift_step_mean", "drift_step_max", "staleness_seconds"):
        assert math.isfinite(second[key]), key


def test_fine_tuning_from_a_harness_checkpoint_loads_exactly_its_backbone(tmp_path):
    first = tmp_path / "first"
    run_training(build_config(tiny_config(memory={"kind": "xbm", "size": 64})), first)
    for name in ("best.pt", "last.pt"):
        ckpt = first / "checkpoints" / name
        saved = load_checkpoint(ckpt)["model"]
        model = build_model(build_config(tiny_config(model={"pretrained": str(ckpt)}, seed=5)))
        backbone = model.backbone.state_dict()
        assert backbone and all(torch.equal(v, saved[f"backbone.{k}"]) for k, v in backbone.items())
        # the head is new (seed 5's initialisation), not the earlier run's
        assert not torch.equal(model.head.weight, saved["head.weight"])


def test_a_checkpoint_of_another_backbone_is_a_one_line_error(tmp_path):
    run_training(build_config(tiny_config()), tmp_path / "small")
    ckpt = tmp_path / "small" / "checkpoints" / "best.pt"
    with pytest.raises(ConfigError, match=r"harness checkpoint of backbone tiny_cnn_small, not tiny_cnn: "
                                          r"set model.backbone=tiny_cnn_small"):
        build_model(build_config(tiny_config(model={"backbone": "tiny_cnn", "pretrained": str(ckpt)})))


def test_staleness_diagnostics_do_not_change_training(tmp_path):
    runs = {}
    for every in (0, 1):
        cfg = build_config(tiny_config(memory={"kind": "axbn", "size": 64}, train={"staleness": {"every": every}}))
        out = tmp_path / str(every)
        run_training(cfg, out)
        runs[every] = epochs_of(out)
    for a, b in zip(runs[0], runs[1]):
        assert a["loss"] == b["loss"] and a["val.map@r"] == b["val.map@r"]
    assert math.isnan(runs[0][0]["drift_step_mean"]) and runs[1][0]["drift_step_mean"] > 0


@pytest.mark.parametrize("kind", ["xbn", "axbn"])
def test_memory_error_is_measured_against_the_adapted_references(kind):
    """After adaptations the stored rows differ from what was enqueued; the error is
    the distance of the adapted rows (as the loss reads them) to the fresh embeddings."""
    torch.manual_seed(0)
    memory = CrossBatchMemory(SupConLoss(), 4, 16, kind=kind)
    enqueued = {}
    for step in range(3):
        z = torch.nn.functional.normalize(torch.randn(4, 4) * (1 + step), dim=1) + step
        ids = torch.arange(4) + 4 * step
        memory(z.requires_grad_(), torch.tensor([0, 0, 1, 1]), ids)
        enqueued.update({int(i): row for i, row in zip(ids, z.detach())})
    fresh = {i: torch.randn(4) for i in enqueued}  # "the current network's embeddings"
    adapted = memory.stored_embeddings()[:memory.fill].clone()
    sources = memory.sources[:memory.fill]
    got = memory_error(memory, lambda idx: torch.stack([fresh[int(i)] for i in idx]), torch.randn(3, 4), 64, 0)
    want = torch.stack([(adapted[r] - fresh[int(s)]).norm() for r, s in enumerate(sources)])
    raw = torch.stack([(enqueued[int(s)] - fresh[int(s)]).norm() for s in sources])
    assert got["memory_error_mean"] == pytest.approx(float(want.mean()), rel=1e-5)
    assert got["memory_error_max"] == pytest.approx(float(want.max()), rel=1e-5)
    assert abs(float(raw.mean()) - got["memory_error_mean"]) > 1e-3  # not the un-adapted rows
    assert 0.0 <= got["memory_nn_disagreement"] <= 1.0
