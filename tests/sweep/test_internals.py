"""harness/sweep/internals.py on the installed Ray and Optuna: every private API the sweep
uses is still there and does what the harness expects of it. After an upgrade, a failure
here names the function to rewrite (the versions it was written for: constraints.txt)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pyarrow.fs
import pytest
import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from harness.sweep import internals

ROOT = Path(__file__).resolve().parents[2]


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("==")[1].split()[0]
    raise AssertionError(f"constraints.txt pins no {name}")


@pytest.mark.parametrize("module", [ray, optuna])
def test_the_installed_versions_are_the_pinned_ones(module):
    assert module.__version__ == pinned(module.__name__), (
        f"{module.__name__} {module.__version__} is installed but constraints.txt pins "
        f"{pinned(module.__name__)}: check harness/sweep/internals.py against it first")


def test_a_tuner_s_settings_and_pickled_state(tmp_path):
    class Marker(tune.Callback):
        pass

    marker = Marker()
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(num_samples=3),
                       run_config=tune.RunConfig(name="x", storage_path=str(tmp_path), callbacks=[marker]))
    assert internals.tuner_tune_config(tuner).num_samples == 3
    run_config = internals.tuner_run_config(tuner)
    assert run_config.callbacks == [marker]
    run_config.callbacks = []  # what _use_callbacks does to a restored Tuner
    assert internals.tuner_run_config(tuner).callbacks == []
    assert set(internals.TUNER_STATE_FIRST_START_KEYS) <= set(internals.tuner_state(tuner))


def test_storage_resolution_and_the_record_of_the_last_upload(tmp_path):
    from ray.train._internal.storage import StorageContext  # the object Tune pickles

    fs, path = internals.fs_and_path(str(tmp_path))
    assert isinstance(fs, pyarrow.fs.LocalFileSystem) and Path(path) == tmp_path
    storage = StorageContext(storage_path=str(tmp_path / "store"), experiment_dir_name="exp")
    assert internals.last_upload_target(storage) is None and not internals.forget_last_upload(storage)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "f.txt").write_text("x")
    storage.syncer.sync_up(str(tmp_path / "local"), str(tmp_path / "store" / "exp"))
    storage.syncer.wait()
    assert internals.last_upload_target(storage) == str(tmp_path / "store" / "exp")
    assert internals.forget_last_upload(storage) and internals.last_upload_target(storage) is None


def _checkpointing_trainable(config):
    folder = Path(config["scratch"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.txt").write_text("1")
    tune.report({"epoch": 1}, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def test_run_metadata_names_the_checkpoint_a_restore_continues_from(ray_session, tmp_path):
    tune.Tuner(_checkpointing_trainable, param_space={"scratch": str(tmp_path / "scratch")},
               run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    (state_file,) = (tmp_path / "tune" / "exp").glob("experiment_state-*.json")
    ((trial_json, metadata_json),) = json.loads(state_file.read_text())["trial_data"]
    metadata = internals.load_run_metadata(metadata_json)
    latest = metadata.checkpoint_manager.latest_checkpoint_result
    assert Path(latest.checkpoint.path).name == "checkpoint_000000" and Path(latest.checkpoint.path).is_dir()
    assert latest.metrics["training_iteration"] == 1
    again = internals.load_run_metadata(internals.dump_run_metadata(metadata))
    assert again.checkpoint_manager.latest_checkpoint_result.checkpoint.path == latest.checkpoint.path
    # the trial's folder, named by the trial's own state
    assert internals.trial_dir_name(trial_json) == Path(latest.checkpoint.path).parent.name
    # the index of the trial's last checkpoint, as a restored trial reads it
    from ray.tune.experiment.trial import Trial

    assert Trial.from_json_state(trial_json, stub=True).storage.current_checkpoint_index == 0
    moved_on = internals.set_last_checkpoint_index(trial_json, 5)
    assert Trial.from_json_state(moved_on, stub=True).storage.current_checkpoint_index == 5
    # a checkpoint recorded by the harness is the one a restore continues from, after a dump
    other = tmp_path / "other"
    other.mkdir()
    internals.record_checkpoint(metadata, tune.Checkpoint(path=str(other)), {"training_iteration": 7})
    again = internals.load_run_metadata(internals.dump_run_metadata(metadata))
    recorded = again.checkpoint_manager.latest_checkpoint_result
    assert recorded.checkpoint.path == str(other) and recorded.metrics["training_iteration"] == 7


def test_the_gcs_probe_and_the_autoscaler_config_on_a_live_ray(ray_session):
    address = ray.get_runtime_context().gcs_address
    probe = subprocess.run([sys.executable, "-c", internals.GCS_PROBE, address],
                           capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().splitlines()[-1] == "RAY", probe.stderr[-2000:]
    config = internals.autoscaler_config()  # a local Ray: none, or one without node groups
    assert config is None or not config.node_group_configs


def test_optuna_trials_by_storage_id_and_failing_one():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    asked = study.ask()
    trial_id = internals.optuna_trial_id(asked)
    assert internals.optuna_trial_id(study.get_trials(deepcopy=False)[0]) == trial_id
    assert internals.optuna_trial_state(study, trial_id) == optuna.trial.TrialState.RUNNING
    internals.fail_optuna_trial(study, trial_id)
    assert internals.optuna_trial_state(study, trial_id) == optuna.trial.TrialState.FAIL


def test_optuna_search_keeps_the_attributes_the_stored_searcher_extends():
    search = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                          metric="objective", mode="max", study_name="s")
    assert search.suggest("t1") is not None
    missing = [a for a in internals.OPTUNA_SEARCH_ATTRIBUTES if not hasattr(search, a)]
    assert not missing, f"ray.tune.search.optuna.OptunaSearch lost {missing}: see StoredOptunaSearch"
    assert "t1" in search._ot_trials and search._study_name == "s"


def test_uploads_into_a_local_storage_are_atomic_per_file(tmp_path, monkeypatch):
    """A driver killed in the middle of copying its experiment state leaves the old,
    whole files, not truncated ones (Tune would start the experiment anew)."""
    from ray.train._internal import storage as ray_storage

    # restored after the test (an in-process sweep of an earlier test may have installed it)
    monkeypatch.setattr(ray_storage, "_upload_to_fs_path", ray_storage._upload_to_fs_path)
    internals.atomic_local_uploads()
    upload = ray_storage._upload_to_fs_path
    internals.atomic_local_uploads()
    assert upload.harness_atomic and ray_storage._upload_to_fs_path is upload  # idempotent

    source, dest = tmp_path / "staging", tmp_path / "storage" / "search"
    (source / "search-1").mkdir(parents=True)
    (source / "experiment_state-a.json").write_text('{"new": true}')
    (source / "search-1" / "result.json").write_text("new")
    (source / "skip.tmp").write_text("excluded")
    dest.mkdir(parents=True)
    (dest / "experiment_state-a.json").write_text('{"old": true}')
    local = pyarrow.fs.LocalFileSystem()

    upload(local_path=str(source), fs=local, fs_path=str(dest), exclude=["*.tmp"])
    assert json.loads((dest / "experiment_state-a.json").read_text()) == {"new": True}
    assert (dest / "search-1" / "result.json").read_text() == "new" and not (dest / "skip.tmp").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["search"]  # no temporary copy left

    # the kill: Ray's copy dies after writing part of a file
    (source / "experiment_state-a.json").write_text('{"newer": true, "long": "' + "x" * 1000 + '"}')

    def dies_midway(source, destination, source_filesystem=None, destination_filesystem=None, **kw):
        Path(destination).mkdir(parents=True, exist_ok=True)
        (Path(destination) / "experiment_state-a.json").write_text('{"newer": tr')
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ray_storage, "_pyarrow_fs_copy_files", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        upload(local_path=str(source), fs=local, fs_path=str(dest))
    assert json.loads((dest / "experiment_state-a.json").read_text()) == {"new": True}
    # Ray's own copy dies the same way in place: the state file is left truncated
    with pytest.raises(KeyboardInterrupt):
        ray_storage._pyarrow_fs_copy_files(str(source), str(dest))
    with pytest.raises(json.JSONDecodeError):
        json.loads((dest / "experiment_state-a.json").read_text())
