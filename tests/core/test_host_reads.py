"""No host reads on the training hot path (harness/core/memory.py, xml.py, trainer.py) and
the persistent training loader, deterministic per batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fixtures.host_reads import host_reads
from harness.config import build_config
from harness.core.trainer import Trainer
from harness.doctor.fixtures import tiny_config

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- hot-path host reads


@pytest.mark.parametrize("kind", ["xbm", "xbn", "axbn"])
def test_memory_and_xml_steps_read_nothing_on_the_host(kind):
    from pytorch_metric_learning import losses, miners

    from harness.core.memory import CrossBatchMemory
    from harness.core.xml import PrototypePooling, XMLLoss, split_halves
    from harness.core.model import ModelOutput

    torch.manual_seed(0)
    mem = CrossBatchMemory(losses.SupConLoss(), 16, 64, kind=kind, miner=miners.PairMarginMiner(0.2, 0.8))
    pool = PrototypePooling(8, 6)
    xml = XMLLoss(losses.SupConLoss(), alpha=1.0)
    head = torch.nn.Linear(8, 16)
    core = str(ROOT / "harness" / "core")
    for step in range(40):
        labels = torch.arange(8).repeat_interleave(4)
        halves = split_halves(labels)  # the training loop does this on the CPU labels
        feats = torch.randn(32, 8, 3, 3)
        with host_reads(core) as reads:
            pooled, gap, hist = pool(feats)
            emb = torch.nn.functional.normalize(head(pooled), dim=1)
            out = ModelOutput(emb, pooled, gap, hist)
            loss = mem(emb, labels) + xml(out, labels, pool.prototypes, lambda g: torch.nn.functional.normalize(head(g), dim=1), halves)
            loss.backward()
        # the affine's range check: one read every range_check_interval adaptations
        allowed = 1 if kind != "xbm" and mem._since_fold and mem._since_fold % mem.range_check_interval == 0 else 0
        assert len(reads) <= allowed, reads
    assert float(mem.last_parts["loss.memory"]) > 0


def test_train_step_reads_the_host_once(tmp_path):
    cfg = build_config(tiny_config("axbn", "cpu", epochs=1))
    trainer = Trainer(cfg, tmp_path)
    trainer._set_stage(False)
    loader = trainer.train_loader
    loader.batch_sampler.set_epoch(1)
    images, labels, *_ = next(iter(loader))
    from harness.core.xml import split_halves

    halves = split_halves(labels)
    labels = torch.searchsorted(trainer.classes, labels)
    trainer.train_step(images, labels, trainer.optimizer, halves)  # prototypes initialised
    with host_reads(str(ROOT / "harness")) as reads:
        parts = trainer.train_step(images, labels, trainer.optimizer, halves)
    assert reads == [r for r in reads if "trainer.py" in r] and len(reads) == 1, reads
    assert set(parts) == {"loss", "loss.batch", "loss.memory", "loss.xml"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
    trainer.close()


# ---------------------------------------------------------------- loaders


@pytest.mark.slow
def test_persistent_training_loader_is_deterministic_per_batch(tmp_path):
    """Augmented batches depend on (seed, epoch, batch) only: not on the worker count,
    nor on whether the loader lived through earlier epochs (a resumed run)."""
    from harness.core.loaders import training_loader
    from harness.data.registry import create_datasets
    from harness.data.sampler import ClassBalancedBatchSampler

    cfg = build_config(tiny_config("none", "cpu", epochs=1))
    data = create_datasets(cfg.data.model_copy(update={"augment": "standard"}), 0, (0.5,) * 3, (0.25,) * 3)

    def epoch_batches(loader, epoch):
        loader.batch_sampler.set_epoch(epoch)
        return [batch[0] for batch in loader]

    def new_loader(workers):
        sampler = ClassBalancedBatchSampler(data.train.labels, 16, 4, seed=0, iters_per_epoch=3)
        return training_loader(data.train, sampler, seed=0, workers=workers, pin_memory=False)

    persistent = new_loader(2)
    first, second = epoch_batches(persistent, 1), epoch_batches(persistent, 2)
    resumed = epoch_batches(new_loader(1), 2)
    assert len(second) == 3 and all(torch.equal(a, b) for a, b in zip(second, resumed))
    assert not torch.equal(first[0], second[0])  # epochs differ
    assert persistent._iterator is not None and persistent._iterator._workers  # workers kept


