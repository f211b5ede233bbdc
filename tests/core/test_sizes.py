"""Sizes that cannot fit the device: one ConfigError line naming the key and the estimate,
before anything is allocated (harness/core/sizes.py), instead of an allocator traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import harness.search_spaces
import torch
import yaml
from pytorch_metric_learning.losses import ContrastiveLoss

from harness.config import build_config
from harness.core.memory import CrossBatchMemory
from harness.core.sizes import check_sizes, estimate_terms, host_available
from harness.errors import ConfigError
from harness.sweep.experiment import load_experiment

from fixtures.configs import tiny_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("overrides, key", [
    (["memory.kind=xbm", "memory.size=2000000000"], "memory.size=2000000000"),
    (["model.embedding_size=2000000000"], "model.embedding_size=2000000000"),
    (["data.image_size=300000"], "data.image_size=300000"),
    (["train.batch_size=8000000"], "train.batch_size=8000000"),
    (["train.eval_batch_size=400000000"], "train.eval_batch_size=400000000"),
    (["xml.enabled=true", "model.prototypes.count=20000000"], "model.prototypes.count=20000000"),
])
def test_train_with_an_impossible_size_is_one_line_exit_2_nothing_written(tmp_path, harness_cli, overrides, key):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "run"
    args = ["train", str(cfg), "--out", str(out)]
    for o in overrides:
        args += ["--set", o]
    code, stdout, err = harness_cli(args)
    assert code == 2, err
    err = " ".join(err.split())  # rich may wrap the one line
    assert key in err and "at least" in err and "available" in err and "lower " in err, err
    assert "Traceback" not in err and "allocate" not in err
    assert not (out / "checkpoints").exists()


def test_memory_fraction_is_checked_once_the_data_size_is_known():
    config = build_config(tiny_config(memory={"kind": "xbm", "fraction": 10.0}))
    check_sizes(config, CPU, available=(10**9, "test: 1 GB"))  # unknown capacity: nothing to count yet
    with pytest.raises(ConfigError, match=r"memory.fraction=10.0: a memory of 50000000 embeddings of 16 .*"
                                          r"at least .* but test: 1 GB \(cpu\); lower memory.fraction"):
        check_sizes(config, CPU, memory_capacity=50_000_000, available=(10**9, "test: 1 GB"))


@pytest.mark.parametrize("kind", ["xbm", "xbn", "axbn"])
def test_memory_estimate_counts_at_least_the_buffers_the_memory_allocates(kind):
    config = build_config(tiny_config(memory={"kind": kind, "size": 4096}, model={"embedding_size": 128}))
    term = next(t for t in estimate_terms(config) if t.keys == "memory.size")
    memory = CrossBatchMemory(ContrastiveLoss(), 128, 4096, kind=kind)
    held = sum(b.numel() * b.element_size() for b in memory.buffers())
    assert term.nbytes >= held
    assert term.nbytes < 100 * held  # a lower bound, not a wild guess


def test_every_shipped_experiment_fits_a_16_gb_machine():
    # The check must never refuse what the project ships (SOP at 224 px, batch 64-256, ...).
    names = sorted(p.stem for p in Path(harness.search_spaces.__file__).parent.glob("*.yaml"))
    assert len(names) >= 10
    for name in names:
        exp = load_experiment(name)
        for label in exp.compare_labels:
            config = exp.run_config(exp.compare_overrides(label))
            check_sizes(config, CPU, available=(16 * 10**9, "test: 16 GB"))


def test_host_available_is_positive_and_below_the_machine():
    free = host_available()
    assert 0 < free <= 2**62
