"""trainables/distributed.py without Ray running: what the N-worker trial hands its
TorchTrainer. A best-config reproduction asks rank 0 to save the report's retrieval
files (rank 0 runs the trial runner both trainables share, ``run_trial``; the recorder copies them out of the
Ray Train checkpoint: tests/sweep/test_recorder.py); a search trial does not."""

from __future__ import annotations

import pytest
import ray.train.torch
from ray import tune

from fixtures.configs import tiny_config
from harness.trainables import distributed
from harness.trainables.distributed import train_retrieval_distributed


class FakeTrainer:
    seen: list[dict] = []

    def __init__(self, loop, train_loop_config, **kwargs):
        FakeTrainer.seen.append({"config": train_loop_config, **kwargs})

    def fit(self):
        return None


class NoTuneSession(ray.train.UserCallback):
    """TuneReportCallback without the Tune session it checks for."""


class FakeContext:
    def get_trial_name(self):
        return "reproduction-none-s1"

    def get_trial_id(self):
        return "abc123"


@pytest.mark.parametrize("spec, pictures", [
    ({"phase": "reproduction", "seed": 1, "best_config": True}, True),
    ({"phase": "reproduction", "seed": 1, "best_config": False}, False),
    ({"phase": "search", "seed": 0}, False),
])
def test_the_trial_asks_rank_0_for_retrieval_pictures_of_best_reproductions(monkeypatch, spec, pictures):
    FakeTrainer.seen = []
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FakeTrainer)
    monkeypatch.setattr(tune, "get_context", lambda: FakeContext())
    monkeypatch.setattr(distributed, "TuneReportCallback", NoTuneSession)

    train_retrieval_distributed({"spec": {**spec, "overrides": {}}}, base=tiny_config(), workers=2)

    (call,) = FakeTrainer.seen
    assert call["config"]["save_retrievals"] is pictures
    assert call["config"]["run_config"]["train"]["workers"] == 2
    assert call["scaling_config"].num_workers == 2
