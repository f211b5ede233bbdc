"""A trial whose configuration cannot be built ends as one ``failed`` report with its
reason (not an exception Tune would retry), in the one- and the N-worker trainable."""

from __future__ import annotations

import pytest
from ray import tune

from fixtures.configs import tiny_config
from harness.results.contract import OBJECTIVE_KEY
from harness.trainables.distributed import train_retrieval_distributed
from harness.trainables.retrieval import train_retrieval

BAD_SPEC = {"spec": {"phase": "search", "seed": 0, "overrides": {"train.nope": 1}}}


@pytest.mark.parametrize("trainable", [train_retrieval, train_retrieval_distributed])
def test_a_trial_with_a_config_error_reports_failed_with_its_reason(trainable, monkeypatch):
    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))

    trainable(BAD_SPEC, base=tiny_config(), metric="val.recall@1", mode="max")

    ((metrics, checkpoint),) = reports
    assert metrics["final"] is True and metrics["status"] == "failed" and checkpoint is None
    assert "train.nope" in metrics["error"] and "\n" not in metrics["error"]
    assert metrics[OBJECTIVE_KEY] == float("-inf")  # the worst value for mode "max"
