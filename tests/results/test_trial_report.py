"""The trial report's one encoder and one decoder (harness/results/trial_report.py): what a
trainable reports is what the recorder and the trackers read back."""

from __future__ import annotations

import math

from harness.results.contract import OBJECTIVE_KEY
from harness.sweep.recorder import epoch_of_result
from harness.tracking.runs import result_metrics
from harness.results.trial_report import TrialReport, TrialSummary

SUMMARY = TrialSummary(
    status="completed", epochs_run=3, best_epoch=2, best_val={"val.recall@1": 0.5},
    test={"test.recall@1": 0.4}, test_untrained={"test_untrained.recall@1": 0.1}, wall_seconds=2.5,
    device="cpu", started_at="2026-12-07T00:00:00Z", finished_at="2026-12-07T00:01:00Z", restarts=1,
    versions={"torch": "2.14.1"}, host="h", epochs=[{"epoch": 1, "val.recall@1": 0.3}],
    units=[{"fold": 0, "seed": 0, "value": 0.5}],
)


def test_a_final_report_survives_tune_unchanged():
    report = TrialReport.finished(SUMMARY, objective=0.5)
    as_tune_gives_it_back = {**report.encode(), "training_iteration": 4, "trial_id": "t", "hostname": "h"}
    assert TrialReport.decode(as_tune_gives_it_back) == report


def test_a_progress_report_is_flat_and_keeps_only_numbers():
    report = TrialReport.progress(2, {"val.recall@1": 0.25, "loss": 1.5, "note": "x", "ok": True}, 0.3, "t0")
    encoded = report.encode()
    assert encoded["val.recall@1"] == 0.25 and encoded[OBJECTIVE_KEY] == 0.3 and encoded["final"] is False
    assert "note" not in encoded and "ok" not in encoded
    assert epoch_of_result({**encoded, "training_iteration": 2}) == {"val.recall@1": 0.25, "loss": 1.5, "epoch": 2}


def test_a_failed_report_carries_its_reason_and_the_worst_objective():
    report = TrialReport.failed("ConfigError: train.nope is not a key", 0, "min", "t0")
    back = TrialReport.decode(report.encode())
    assert back.final and back.status == "failed" and back.error.startswith("ConfigError")
    assert back.objective == math.inf and back.summary is None


def test_the_trackers_read_the_final_test_metrics_from_the_summary():
    step, metrics = result_metrics(TrialReport.finished(SUMMARY, 0.5).encode())
    assert step == 3
    assert metrics["test.recall_at_1"] == 0.4 and metrics["test_untrained.recall_at_1"] == 0.1
    assert "summary_json" not in metrics and "status" not in metrics
