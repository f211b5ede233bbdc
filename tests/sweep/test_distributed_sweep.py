"""A 2-worker trial inside a real sweep: Ray Tune + Ray Train's TorchTrainer (gloo, CPU).

One search with ``search.resources.workers: 2`` and the same search single-worker, both
with the real training loop, on one local Ray instance. The 2-worker trial loses a
worker once (rank 1 raises in epoch 2) and must resume from its epoch-1 checkpoint.
(That a data-parallel reproduction keeps the report's retrieval files: the rank-0 runner
is the single-worker one, tests/trainables/test_config_error.py checks the trial asks
it to, tests/sweep/test_recorder.py that its Ray Train checkpoint is copied.)
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray
import ray.cloudpickle
import yaml
from fixtures.configs import tiny_config

from harness.sweep.recorder import git_commit as _git_commit
from harness.sweep.runner import prepare_sweep, run_search

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Ray workers cannot import the tests package: ship this module's functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

EXPERIMENT = {
    "description": "data-parallel trial",
    "base": tiny_config(seed=0, memory={"kind": "axbn", "size": 64}),
    "search": {
        "algorithm": "random", "trials": 1, "metric": "val.recall@1", "mode": "max",
        "space": {"optim.lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}},
        "reproduction_seeds": [1], "max_failures": 1,
    },
}


class LoseRankOneOnce:
    """run_training, except that rank 1 dies once in epoch 2; rank 0 notes a resumption."""

    def __init__(self, marks: Path):
        self.marks = marks

    def __call__(self, config, out_dir, on_epoch=None, resume=True):
        import torch.distributed as dist

        from harness.core.train import run_training

        rank = dist.get_rank()
        last = Path(out_dir) / "checkpoints" / "last.pt"
        if rank == 0 and last.is_file():
            (self.marks / "rank0-resumed").write_text("yes")

        def epoch_hook(epoch, metrics):
            crashed = self.marks / "crashed"
            if rank == 1 and epoch == 2 and not crashed.exists():
                crashed.write_text("rank 1")
                raise RuntimeError("simulated lost worker")
            if on_epoch is not None:
                on_epoch(epoch, metrics)

        return run_training(config, out_dir, on_epoch=epoch_hook, resume=resume)


def _sweep(tmp: Path, name: str, resources: dict, train_fn=None):
    exp = copy.deepcopy(EXPERIMENT)
    exp["search"]["resources"] = resources
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp))
    plan = prepare_sweep(str(path), storage=str(tmp / "results"))
    run_search(plan, train_fn, _git_commit())
    return plan.store.trials(), plan.store.epochs()


def test_two_worker_trial_completes_with_the_single_worker_columns(ray_session, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    two, two_epochs = _sweep(tmp_path, "two-workers", {"workers": 2, "cpus_per_worker": 1},
                             train_fn=LoseRankOneOnce(marks))
    one, one_epochs = _sweep(tmp_path, "one-worker", {"cpus": 1})
    assert len(two) == len(one) == 1
    row = two.iloc[0]
    assert row["status"] == "completed", row.to_dict()
    assert row["epochs_run"] == 2 and row["val.recall@1"] > 0
    assert row["workers"] == 2 and row["config.train.workers"] == 2
    assert one.iloc[0]["workers"] == 1 and one.iloc[0]["config.train.workers"] == 1
    assert set(two.columns) == set(one.columns)
    assert set(two_epochs.columns) == set(one_epochs.columns)
    assert sorted(two_epochs["epoch"]) == [1, 2]
    # the lost worker: the trial restarted and rank 0 resumed from the epoch-1 checkpoint
    assert (marks / "crashed").is_file() and (marks / "rank0-resumed").is_file()
