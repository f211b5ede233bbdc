"""train.checkpoint_every: a trial hands its run folder to Tune (an upload of the whole
folder to the sweep's storage, S3 on the cluster) every K epochs and at the last one,
not every epoch. Every epoch is still reported."""

from __future__ import annotations

from pathlib import Path

from harness.config import build_config
from harness.core.run_result import RunResult
from harness.trainables.trial_runner import run_trial


def _train_fn(epochs: int):
    def train(config, out_dir, on_epoch=None, resume=True):
        for epoch in range(1, epochs + 1):
            on_epoch(epoch, {"val.recall@1": 0.1 * epoch, "loss": 1.0 / epoch})
        return RunResult("completed", epochs, epochs, {"val.recall@1": 0.1 * epochs}, {}, 1.0, "cpu", out_dir)
    return train


def _checkpointed_epochs(tmp_path: Path, every: int | None, epochs: int = 5) -> list:
    train = {"epochs": epochs} | ({} if every is None else {"checkpoint_every": every})
    config = build_config({"train": train})
    reports = []
    out = tmp_path / f"every{every}"
    out.mkdir()
    run_trial(config, out, "val.recall@1", "max", _train_fn(epochs),
              lambda report, folder: reports.append((report, folder)))
    epoch_reports = [(r.epoch, f) for r, f in reports if not r.final]
    assert [e for e, _ in epoch_reports] == list(range(1, epochs + 1))  # every epoch reported
    assert reports[-1][0].final and reports[-1][1] == out
    return [e for e, f in epoch_reports if f is not None]


def test_the_run_folder_is_a_checkpoint_every_k_epochs_and_at_the_last(tmp_path):
    assert _checkpointed_epochs(tmp_path, None) == [1, 2, 3, 4, 5]  # default: every epoch
    assert _checkpointed_epochs(tmp_path, 2) == [2, 4, 5]
    assert _checkpointed_epochs(tmp_path, 10) == [5]
