"""A resumed sweep whose Tune experiment state names an older checkpoint than the
trial's newest on disk (the driver killed before the next snapshot recorded the newer
one), whether Tune had already deleted the recorded one (``num_to_keep``) or not yet,
or whose state records no checkpoint at all (the trial's first came after the last snapshot),
continues the trial from the newest whole checkpoint: not from scratch, not as a failed
trial, not retraining the epochs in between; a copy cut short by the kill is passed over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ray import tune

from harness.sweep.internals import dump_run_metadata, load_run_metadata
from harness.sweep.tuner import repoint_lost_checkpoints
from harness.trainables.trial_setup import CHECKPOINT_MANIFEST, is_complete_checkpoint, seal_checkpoint

EPOCHS = 4


def _counting_trainable(config):
    """Reports epochs 1..EPOCHS, each with a checkpoint holding the epoch; the first
    attempt dies after epoch 2 (a marker file says whether it ran already)."""
    start, resumed_from = 1, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resumed_from = json.loads((Path(d) / "epoch.json").read_text())
            start = resumed_from + 1
    marker = Path(config["marker"])
    for epoch in range(start, EPOCHS + 1):
        folder = Path(config["scratch"]) / f"{tune.get_context().get_trial_id()}-{epoch}"
        folder.mkdir(parents=True, exist_ok=True)  # a restart from scratch writes it again
        (folder / "epoch.json").write_text(json.dumps(epoch))
        tune.report({"epoch": epoch, "resumed_from": resumed_from},
                    checkpoint=tune.Checkpoint.from_directory(str(seal_checkpoint(folder))))
        if epoch == 2 and not marker.exists():
            marker.write_text("died once")
            raise RuntimeError("worker lost")


def _run_until_the_trial_errors(tmp_path: Path) -> Path:
    tuner = tune.Tuner(
        _counting_trainable,
        param_space={"marker": str(tmp_path / "died"), "scratch": str(tmp_path / "scratch")},
        run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "tune"), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    assert tuner.fit()[0].error is not None
    return tmp_path / "tune" / "exp"


def _lose_the_recorded_checkpoint(exp: Path, deleted: bool = True) -> Path:
    """The state the kill leaves: the recorded checkpoint (epoch 2) gone (or, killed a
    moment earlier, still there), a whole newer one (epoch 3) and a newer copy cut
    short (epoch 4, a file missing) on disk."""
    (trial_dir,) = [d for d in exp.iterdir() if d.is_dir() and list(d.glob("checkpoint_*"))]
    recorded = max(trial_dir.glob("checkpoint_*"))
    assert json.loads((recorded / "epoch.json").read_text()) == 2
    whole = trial_dir / "checkpoint_000002"
    shutil.copytree(recorded, whole)
    (whole / "epoch.json").write_text(json.dumps(3))
    seal_checkpoint(whole)
    cut = trial_dir / "checkpoint_000003"
    shutil.copytree(whole, cut)
    (cut / "epoch.json").write_text(json.dumps(4))
    seal_checkpoint(cut)
    (cut / "epoch.json").unlink()
    if deleted:
        shutil.rmtree(recorded)
    assert is_complete_checkpoint(whole) and not is_complete_checkpoint(cut)
    assert (cut / CHECKPOINT_MANIFEST).is_file()
    return trial_dir


def _record_no_checkpoint(exp: Path) -> None:
    """The state of a snapshot taken before the trial's first checkpoint."""
    (state_file,) = exp.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        metadata = load_run_metadata(entry[1])
        manager = metadata.checkpoint_manager
        metadata.checkpoint_manager = type(manager)(checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
        entry[1] = dump_run_metadata(metadata)
    state_file.write_text(json.dumps(state))


def _newest_epoch(trial_dir: Path) -> int:
    """The epoch in the trial's newest whole checkpoint."""
    newest = max(d for d in trial_dir.glob("checkpoint_*") if is_complete_checkpoint(d))
    return json.loads((newest / "epoch.json").read_text())


def _resume(exp: Path):
    return tune.Tuner.restore(str(exp), _counting_trainable, resume_errored=True).fit()[0]


@pytest.mark.parametrize("recorded", ["deleted", "kept", "none"],
                         ids=["recorded-deleted", "recorded-kept", "none-recorded"])
def test_resume_continues_from_the_newest_whole_checkpoint(ray_session, tmp_path, recorded):
    exp = _run_until_the_trial_errors(tmp_path)
    trial_dir = _lose_the_recorded_checkpoint(exp, deleted=recorded == "deleted")
    if recorded == "none":  # the trial's first checkpoint came after the last snapshot
        _record_no_checkpoint(exp)

    repoint_lost_checkpoints(str(exp))
    result = _resume(exp)

    assert result.error is None
    assert result.metrics["resumed_from"] == 3 and result.metrics["epoch"] == EPOCHS
    # Tune's count of reports goes on from the restored checkpoint's: 3 before, 1 after
    assert result.metrics["training_iteration"] == EPOCHS
    # the checkpoint of the epoch after the restore is kept (not taken for the older one)
    assert _newest_epoch(trial_dir) == EPOCHS


def test_without_the_repair_a_trial_whose_state_records_no_checkpoint_starts_again(ray_session, tmp_path):
    exp = _run_until_the_trial_errors(tmp_path)
    _lose_the_recorded_checkpoint(exp, deleted=False)
    _record_no_checkpoint(exp)

    result = _resume(exp)

    assert result.error is None and result.metrics["resumed_from"] == 0  # epochs 1-3 trained again


def test_without_the_repair_tune_fails_the_trial(ray_session, tmp_path):
    """What the repair is for: Tune's own restore of the same state."""
    exp = _run_until_the_trial_errors(tmp_path)
    _lose_the_recorded_checkpoint(exp)

    result = _resume(exp)

    assert result.error is not None and "does not exist on storage anymore" in str(result.error)


def test_without_the_repair_tune_retrains_from_an_older_checkpoint_still_there(ray_session, tmp_path):
    exp = _run_until_the_trial_errors(tmp_path)
    _lose_the_recorded_checkpoint(exp, deleted=False)

    result = _resume(exp)

    assert result.error is None and result.metrics["resumed_from"] == 2  # epoch 3 trained again


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_a_checkpoint_with_an_unreadable_manifest_is_not_complete(tmp_path, content):
    (tmp_path / CHECKPOINT_MANIFEST).write_text(content)
    assert not is_complete_checkpoint(tmp_path)
    assert not is_complete_checkpoint(tmp_path / "missing")
