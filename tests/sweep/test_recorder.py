"""harness/sweep/recorder.py without Ray running: a trial's rows from its last Tune result,
the epochs buffered while it ran, and the retrieval files kept beside the tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.fs
import pytest

from harness.sweep.experiment import Experiment
from harness.sweep.recorder import ResultsRecorder, keep_retrievals, trial_rows
from harness.sweep.results import ResultsStore
from harness.results.trial_report import TrialReport, TrialSummary

EXP = Experiment.model_validate({
    "name": "rec", "base": {"data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"}},
    "search": {"trials": 2, "metric": "val.map@r", "mode": "max",
               "compare": {"key": "memory.kind", "values": ["none", "xbn"]},
               "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}},
})  # fmt: skip
SPEC = {"phase": "search", "seed": 3, "compare_value": "xbn", "trial_id": "search-xbn-0001",
        "params": {"optim.lr": 0.001}, "overrides": {"memory.kind": "xbn", "optim.lr": 0.001}}
EPOCHS = [{"epoch": 1, "val.map@r": 0.30, "loss": 2.0}, {"epoch": 2, "val.map@r": 0.25, "loss": 1.5}]


def final_result(**summary) -> dict:
    base = {"status": "completed", "best_val": {"val.map@r": 0.30}, "test": {"test.map@r": 0.2},
            "test_untrained": {}, "best_epoch": 1, "epochs_run": 2, "wall_seconds": 4.0, "device": "cpu",
            "host": "h", "started_at": "t0", "finished_at": "t1", "restarts": 0, "versions": {"torch": "x"},
            "epochs": EPOCHS}
    base.update(summary)
    return TrialReport.finished(TrialSummary(**base), objective=0.30).encode()


def test_a_finished_trial_takes_its_row_and_epochs_from_the_summary():
    units = [{"fold": 0, "seed": 3, "value": 0.2}, {"fold": 1, "seed": 3, "value": 0.4}]
    row, epochs = trial_rows(EXP, SPEC, "search-xbn-0001", final_result(units=units), False,
                             buffered_epochs=[{"epoch": 9}], git_commit="abc")
    assert (row["trial_id"], row["phase"], row["method"], row["status"]) == ("search-xbn-0001", "search", "xbn", "completed")
    assert row["error"] is None and row["seed"] == 3 and row["config.optim.lr"] == 0.001
    assert row["val.map@r"] == 0.30 and row["test.map@r"] == 0.2 and row["best_epoch"] == 1
    assert row["objective.mean"] == pytest.approx(0.3) and row["objective.std"] == pytest.approx(math.sqrt(0.02))
    assert json.loads(row["objective.runs"]) == units
    assert [e["epoch"] for e in epochs] == [1, 2]  # the summary's, not the buffered ones
    assert epochs[1]["loss"] == 1.5 and all(e["method"] == "xbn" for e in epochs)


def test_a_trial_tune_ended_with_an_error_is_failed_with_its_best_buffered_epoch():
    row, epochs = trial_rows(EXP, SPEC, "t", {"epoch": 2}, True, buffered_epochs=EPOCHS,
                             git_commit=None, reason="RuntimeError: boom")
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom"
    assert row["best_epoch"] == 1 and row["val.map@r"] == 0.30 and row["epochs_run"] == 2
    assert "objective.mean" not in row and [e["epoch"] for e in epochs] == [1, 2]


def test_a_trial_without_a_final_report_and_no_error_is_stopped():
    row, _ = trial_rows(EXP, SPEC, "t", {"epoch": 1}, False, buffered_epochs=EPOCHS[:1], git_commit=None,
                        reason="ignored")
    assert row["status"] == "stopped" and row["error"] is None


def test_a_final_failure_report_keeps_its_reason():
    last = {"final": True, "status": "failed", "error": "ConfigError: train.nope is not a key"}
    row, epochs = trial_rows(EXP, SPEC, "t", last, False, buffered_epochs=[], git_commit=None)
    assert row["status"] == "failed" and row["error"] == last["error"] and epochs == []
    assert row["best_epoch"] is None and row["epochs_run"] == 0


def test_buffered_epochs_keep_the_last_report_of_each_epoch_and_skip_finals(tmp_path):
    rec = ResultsRecorder(EXP, str(tmp_path), None)
    rec.buffer_epoch("x", {"epoch": 1, "loss": 3.0, "training_iteration": 1, "node_ip": "1.2.3.4"})
    rec.buffer_epoch("x", {"epoch": 1, "loss": 2.0})  # a restart reported epoch 1 again
    rec.buffer_epoch("x", {"final": True, "epoch": 2, "summary_json": "{}"})
    other = ResultsRecorder(EXP, str(tmp_path), None)
    other.take_buffered_epochs(rec)
    assert other._epochs == {"x": {1: {"epoch": 1, "loss": 2.0}}}


class FolderCheckpoint:
    """What keep_retrievals reads of a Tune checkpoint: its filesystem and path."""

    def __init__(self, path: Path):
        self.filesystem, self.path = pyarrow.fs.LocalFileSystem(), str(path)


def _checkpoint(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "checkpoint_000003"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_a_reproduction_s_retrieval_files_are_kept_under_the_experiment(tmp_path):
    folder = _checkpoint(tmp_path, {"config.yaml": b"seed: 1\n", "retrievals.npz": b"npz", "last.pt": b"x"})
    store = ResultsStore(str(tmp_path / "results"), "rec")
    assert keep_retrievals(store, "repro-1", FolderCheckpoint(folder))
    kept = tmp_path / "results" / "rec" / "retrievals" / "repro-1"
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == {"config.yaml": b"seed: 1\n", "retrievals.npz": b"npz"}
    # a data-parallel trial: no Tune checkpoint, its Ray Train checkpoint named in the result
    assert keep_retrievals(store, "repro-2", None, {"checkpoint_path": str(folder)})
    assert (tmp_path / "results" / "rec" / "retrievals" / "repro-2" / "retrievals.npz").is_file()


def test_a_checkpoint_without_retrieval_files_keeps_nothing(tmp_path):
    folder = _checkpoint(tmp_path, {"config.yaml": b"seed: 1\n"})
    store = ResultsStore(str(tmp_path / "results"), "rec")
    assert not keep_retrievals(store, "repro-1", FolderCheckpoint(folder))
    assert not keep_retrievals(store, "repro-1", None, {"epoch": 3})
    assert not (tmp_path / "results" / "rec" / "retrievals").exists()
