"""The sweep plan is made once and complete (trackers, Optuna URL) and cannot change;
what changes while it runs is sweep.json (SweepState)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from harness.errors import ResultsError
from harness.results.contract import STATE_FILE
from harness.sweep.experiment import Experiment
from harness.sweep.plan import prepare_sweep
from harness.sweep.results import ResultsStore
from harness.sweep.state import SweepState

EXPERIMENT = {
    "name": "planned",
    "base": {"data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"}},
    "search": {"trials": 2, "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}},
}


@pytest.fixture
def experiment_file(tmp_path):
    path = tmp_path / "planned.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    return path


def test_the_plan_is_complete_and_frozen(experiment_file, results_storage):
    plan = prepare_sweep(str(experiment_file), storage=str(results_storage), tracking=["tensorboard"])
    assert plan.experiment.tracking.trackers == ["tensorboard"]
    assert plan.optuna_storage == f"sqlite:///{results_storage / 'planned' / 'optuna.db'}"
    assert not plan.continuing
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.max_concurrent = 3  # type: ignore[misc]
    assert not results_storage.exists()  # planning writes nothing


def test_the_state_writes_through_and_reads_back(tmp_path):
    store = ResultsStore(str(tmp_path), "planned")
    exp = Experiment.model_validate(EXPERIMENT)
    state = SweepState(store)
    assert not state
    state.update(experiment=exp.model_dump(mode="json"), search_done=False)
    state.update(search_done=True)
    again = SweepState.read(store)
    assert again.get("search_done") is True and again.experiment.name == "planned"


def test_a_damaged_state_is_one_line(tmp_path):
    store = ResultsStore(str(tmp_path), "planned")
    store.write_json(STATE_FILE, {"no": "experiment"})
    with pytest.raises(ResultsError, match=r"sweep\.json is not a sweep state file; the sweep's state is lost"):
        SweepState.read(store)
