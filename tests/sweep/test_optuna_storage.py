"""Optuna studies in a real SQLite database, and who wins on --resume.

The searcher is driven the way Tune drives it (suggest / result / complete, a snapshot
with ``save``, a fresh searcher ``restore``d from it), without Ray: the database and
the snapshot are made to disagree on purpose. The rule (harness/sweep/optuna_storage.py):
the database wins for the history and told values; Tune's snapshot decides which
trials exist; a lost database is rebuilt from the snapshot.
"""

from __future__ import annotations

import pickle
import shutil

import optuna
import pytest
from optuna.trial import TrialState

from harness.errors import ConfigError
from harness.sweep.experiment import Experiment
from harness.sweep.optuna_storage import create_searcher, open_storage, study_name
from harness.sweep.searcher import CompareSearcher
from harness.sweep.space import create_sampler, define_by_run
from harness.results.contract import OBJECTIVE_KEY as OBJECTIVE

EXP = Experiment.model_validate({
    "name": "stored", "base": {"data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"}},
    "search": {"trials": 8, "compare": {"key": "memory.kind", "values": ["none"]},
               "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}},
})  # fmt: skip


def searcher(url: str) -> CompareSearcher:
    """What run_search builds (one compared value), as Tune unpickles it before a restore."""
    inner = create_searcher(EXP, "none", url, space=define_by_run(EXP, "none"),
                            sampler=create_sampler(EXP, "none", 0), metric=OBJECTIVE)
    return CompareSearcher({"none": inner}, {"none": 8}, OBJECTIVE, "max", seed=0,
                           phase_overrides={"none": {"memory.kind": "none"}})


def load(url: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_name("stored", "none"), storage=url)
    return {t.user_attrs["trial_id"]: t for t in study.get_trials()}


@pytest.fixture
def interrupted(tmp_path):
    """t1 completed before Tune's snapshot, t2 completed after it, t3 asked after it."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    live = searcher(url)
    for tid in ("t1", "t2"):
        assert live.suggest(tid)["spec"]["params"]["optim.lr"] > 0
    live.on_trial_result("t1", {OBJECTIVE: 0.4, "training_iteration": 1})
    live.on_trial_complete("t1", {OBJECTIVE: 0.5})
    snapshot = tmp_path / "searcher-state.pkl"
    live.save(str(snapshot))
    live.on_trial_complete("t2", {OBJECTIVE: 0.9})
    live.suggest("t3")
    return url, snapshot, tmp_path


def test_study_holds_each_told_trial_with_its_value(interrupted):
    url, _, _ = interrupted
    trials = load(url)
    assert trials["t1"].state == TrialState.COMPLETE and trials["t1"].value == 0.5
    assert trials["t2"].value == 0.9 and trials["t3"].state == TrialState.RUNNING
    assert "optim.lr" in trials["t1"].params
    study = optuna.load_study(study_name="stored:none", storage=url)
    assert study.user_attrs["compare_value"] == "none" and study.user_attrs["metric"] == "val.recall@1"


def test_resume_database_wins_over_the_older_snapshot(interrupted):
    url, snapshot, _ = interrupted
    resumed = searcher(url)
    resumed.restore(str(snapshot))  # the snapshot still has t2 running, and no t3
    # Tune restarts t2, whose final report comes again (with another value, to tell apart)
    resumed.on_trial_result("t2", {OBJECTIVE: 0.7, "training_iteration": 4})
    resumed.on_trial_complete("t2", {OBJECTIVE: 0.7})
    trials = load(url)
    assert trials["t2"].state == TrialState.COMPLETE and trials["t2"].value == 0.9  # not told again
    assert trials["t3"].state == TrialState.FAIL  # nobody will ever tell it
    resumed.suggest("t4")
    resumed.on_trial_complete("t4", {OBJECTIVE: 0.6})
    trials = load(url)
    assert trials["t4"].value == 0.6 and len(trials) == 4


def test_resume_rebuilds_a_lost_database_from_the_snapshot(interrupted):
    url, snapshot, tmp_path = interrupted
    (tmp_path / "optuna.db").unlink()
    resumed = searcher(url)
    resumed.restore(str(snapshot))
    trials = load(url)
    assert trials["t1"].state == TrialState.COMPLETE and trials["t1"].value == 0.5
    assert trials["t2"].state == TrialState.RUNNING  # running in the snapshot: Tune restarts it
    resumed.on_trial_complete("t2", {OBJECTIVE: 0.8})
    trials = load(url)
    assert trials["t2"].value == 0.8
    assert trials["t2"].params == pytest.approx({"optim.lr": trials["t2"].params["optim.lr"]})


def test_snapshot_of_a_moved_storage_holds_no_database_and_resumes_there(interrupted, tmp_path_factory):
    # Tune pickles the searcher twice (tuner.pkl at the start, searcher-state-*.pkl per
    # snapshot); before, both held the live study, whose unpickling connected to the old
    # sqlite path: "unable to open database file" once the storage had moved.
    url, snapshot, old = interrupted
    start = pickle.dumps(searcher(f"sqlite:///{old / 'other.db'}"))  # as tuner.pkl holds it
    assert str(old).encode() not in snapshot.read_bytes() and str(old).encode() not in start
    new = tmp_path_factory.mktemp("moved") / "storage"
    shutil.move(str(old), new)
    new_url = f"sqlite:///{new / 'optuna.db'}"
    resumed = pickle.loads(start)  # what Tuner.restore unpickles first
    resumed.optuna_url = new_url  # harness.sweep.tuner.fit_phase: this driver's database
    resumed.restore(str(new / "searcher-state.pkl"))
    trials = load(new_url)
    assert trials["t1"].value == 0.5 and trials["t2"].value == 0.9 and trials["t3"].state == TrialState.FAIL
    resumed.suggest("t4")
    resumed.on_trial_complete("t4", {OBJECTIVE: 0.6})
    assert load(new_url)["t4"].value == 0.6
    assert not old.exists()  # nothing recreated at the old place


def test_unusable_storage_url_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--optuna-storage nosuchdb://x: cannot open"):
        open_storage("nosuchdb://x")


def test_new_sweep_refuses_a_database_holding_its_study_and_resume_keeps_its_url(results_storage, tmp_path):
    import yaml

    from harness.sweep.optuna_storage import resolve_storage_url
    from harness.sweep.runner import prepare_sweep
    from harness.sweep.state import SweepState

    path = tmp_path / "stored.yaml"
    path.write_text(yaml.safe_dump(EXP.model_dump(mode="json")))
    plan = prepare_sweep(str(path), storage=str(results_storage))
    url = f"sqlite:///{tmp_path / 'results' / 'stored' / 'optuna.db'}"
    assert plan.optuna_storage == url
    assert not (results_storage).exists()  # nothing written before the sweep starts
    exp, store = plan.experiment, plan.store
    optuna.create_study(study_name="stored:none", storage=open_storage(url))
    with pytest.raises(ConfigError, match="Optuna study 'stored:none' already exists in sqlite:///"):
        prepare_sweep(str(path), storage=str(results_storage))
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert prepare_sweep(str(path), storage=str(results_storage), optuna_storage=other).optuna_storage == other
    state = SweepState(store, {"optuna_storage": other})  # a resumed sweep: the URL it started with
    assert resolve_storage_url(exp, store, state, None) == other
    with pytest.raises(ConfigError, match="this sweep keeps its studies in"):
        resolve_storage_url(exp, store, state, url)
