"""search.objective: class-disjoint k-fold validation and seed-averaged search trials.

The folds themselves (data.val_folds), a trial of several real runs trained in lockstep
(trainables/objective.py), and the objective's columns through a real Ray sweep.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray.cloudpickle
import yaml

from fixtures.configs import tiny_config
from fixtures.user_data import make_folder
from harness.config import build_config
from harness.core.run_result import RunResult
from harness.core.train import run_training
from harness.data.registry import create_datasets
from harness.errors import ConfigError
from harness.results.contract import COL_OBJECTIVE_MEAN, COL_OBJECTIVE_RUNS, COL_OBJECTIVE_STD
from harness.sweep.experiment import load_experiment
from harness.sweep.search_spec import ObjectiveSpec
from harness.trainables.objective import LockstepObjective, objective_training

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    # 7 training classes (class00-06) and 7 test classes (class07-13)
    return make_folder(tmp_path_factory.mktemp("folds") / "photos", classes=14, per_class=6, splits=True)


def labels(ds) -> set:
    return set(np.unique(ds.labels).tolist())


def run_config(folder: Path, **data):
    raw = tiny_config(data={"name": "folder", "root": str(folder), "image_size": 16, **data},
                      memory={"kind": "none", "size": 32}, loss={"miner": None})
    return build_config(raw)


def test_folds_are_class_disjoint_cover_training_once_and_never_touch_test(folder):
    seen: list[set] = []
    for fold in range(3):
        per_trial = []
        for seed, kind in ((0, "none"), (7, "xbm"), (3, "xbn")):  # other trials, seeds, methods
            cfg = run_config(folder, val_folds=3, val_fold=fold)
            cfg = build_config(cfg.model_dump(mode="json"), {"seed": seed, "memory.kind": kind})
            bundle = create_datasets(cfg.data, cfg.seed, *MEAN_STD)
            val, train, test = labels(bundle.val.query), labels(bundle.train), labels(bundle.test.query)
            assert val and not val & train and not val & test and not train & test
            per_trial.append((val, train))
        assert all(p == per_trial[0] for p in per_trial)  # the same for every trial and method
        seen.append(per_trial[0][0])
        all_train = per_trial[0][0] | per_trial[0][1]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == len(all_train) == 7
    # without folds: today's carve, unchanged
    plain = create_datasets(run_config(folder, val_fraction=0.4).data, 0, *MEAN_STD)
    assert len(labels(plain.val.query)) == 3


def test_fold_settings_are_checked():
    with pytest.raises(ConfigError, match="val_fold"):
        build_config(tiny_config(data={"val_folds": 3, "val_fold": 3}))
    with pytest.raises(Exception, match="at least 8 training classes"):
        cfg = build_config(tiny_config(data={"val_folds": 4}))  # digits: 5 training classes
        create_datasets(cfg.data, 0, *MEAN_STD)


@pytest.mark.parametrize("objective", [{"folds": 3}, {"seeds": 2}])
def test_trial_reports_the_mean_of_its_runs_each_as_it_would_train_alone(folder, tmp_path, objective):
    cfg = run_config(folder)
    train = objective_training(run_training, objective, cfg.seed, "val.map@r", "max")
    assert isinstance(train, LockstepObjective)
    reports = []
    result = train(cfg, tmp_path / "trial", on_epoch=lambda e, m: reports.append((e, m)))
    n = objective.get("folds", 1) * objective.get("seeds", 1)
    assert result.status == "completed" and len(result.units) == n
    values = [u["value"] for u in result.units]
    assert result.best_val["val.map@r"] == pytest.approx(sum(values) / n)
    # each run equals the same run trained on its own (its RNG kept between turns)
    for unit, (label, overrides) in zip(result.units, train.units):
        assert {k: unit[k] for k in ("fold", "seed")} == label
        alone = run_training(build_config(cfg.model_dump(mode="json"), overrides), tmp_path / f"alone-{label}")
        assert alone.best_val["val.map@r"] == unit["value"]
    # one report per epoch, once all runs finished it: the mean of the runs' best so far
    assert [e for e, _ in reports] == [1, 2]
    assert reports[-1][1]["objective_so_far"] == pytest.approx(sum(values) / n)
    runs = sorted(p.name for p in (tmp_path / "trial" / "runs").iterdir())
    assert len(runs) == n


class ExplodingRun:
    """run_training, except one run raises at one epoch (a worker lost mid-trial)."""

    def __init__(self, run: str, epoch: int):
        self.run, self.epoch, self.trained = run, epoch, []

    def __call__(self, config, out_dir, on_epoch=None, resume=True):
        def hook(epoch, metrics):
            self.trained.append((Path(out_dir).name, epoch))
            if Path(out_dir).name == self.run and epoch == self.epoch:
                raise RuntimeError("worker lost")
            if on_epoch:
                on_epoch(epoch, metrics)

        return run_training(config, out_dir, on_epoch=hook, resume=resume)


def test_a_restarted_trial_resumes_each_run_without_repeating_epochs(folder, tmp_path):
    cfg = run_config(folder)
    exploding = ExplodingRun("fold1-seed0", 2)
    first = LockstepObjective(exploding, ObjectiveSpec(folds=3).units(cfg.seed), "val.map@r", "max")
    with pytest.raises(RuntimeError, match="worker lost"):
        first(cfg, tmp_path / "trial")
    again = ExplodingRun("none", 0)
    second = LockstepObjective(again, first.units, "val.map@r", "max")
    result = second(cfg, tmp_path / "trial")
    assert result.status == "completed"
    # fold0 and fold1 had checkpointed epoch 2 before the loss (fold1 raised after its
    # checkpoint), fold2 only epoch 1: each goes on from its own last checkpoint
    assert sorted(again.trained) == [("fold2-seed0", 2)]
    for run in ("fold0-seed0", "fold1-seed0", "fold2-seed0"):
        epochs = [json.loads(x)["epoch"] for x in
                  (tmp_path / "trial" / "runs" / run / "epochs.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]
    trial_epochs = [json.loads(x)["epoch"] for x in (tmp_path / "trial" / "epochs.jsonl").read_text().splitlines()]
    assert trial_epochs == [1, 2]
    # finished runs are read back, not trained again
    third = ExplodingRun("none", 0)
    again_result = LockstepObjective(third, first.units, "val.map@r", "max")(cfg, tmp_path / "trial")
    assert third.trained == [] and again_result.best_val == result.best_val


def test_objective_needs_one_worker_trials_and_counts_in_list(tmp_path):
    raw = {"base": tiny_config(), "search": {"trials": 2, "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
                                             "objective": {"folds": 2, "seeds": 2},
                                             "resources": {"workers": 2}}}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="needs one-worker trials"):
        load_experiment(str(path))
    raw["search"]["resources"] = {"workers": 1}
    path.write_text(yaml.safe_dump(raw))
    exp = load_experiment(str(path))
    from harness.cli.sweep_format import run_counts
    from harness.sweep.plan import budget_warnings

    assert exp.search_runs() == 8 and run_counts(exp).startswith("2 x 4 runs")
    assert any("8 training runs" in w for w in budget_warnings(exp))


class FoldScores:
    """run_training's contract in miniature: the score depends on the fold and seed."""

    def __call__(self, config, out_dir, on_epoch=None, resume=True):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        best = None
        for epoch in range(1, config.train.epochs + 1):
            score = 0.1 * epoch + 0.01 * (config.data.val_fold + 1) + 0.001 * config.seed
            best = score
            with (out_dir / "epochs.jsonl").open("a") as f:
                f.write(json.dumps({"epoch": epoch, "val.recall@1": score, "loss": 1.0}) + "\n")
            if on_epoch:
                on_epoch(epoch, {"val.recall@1": score, "loss": 1.0})
        return RunResult("completed", config.train.epochs, config.train.epochs, {"val.recall@1": best},
                         {"test.recall@1": best}, 0.1, "cpu", out_dir)


@pytest.mark.slow
def test_sweep_records_each_runs_value_and_optuna_gets_the_mean(results_storage, ray_session, tmp_path):
    from harness.sweep.runner import prepare_sweep, run_sweep

    exp = {
        "base": {"seed": 0, "data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"},
                 "train": {"epochs": 2, "batch_size": 16}},
        "search": {"trials": 2, "metric": "val.recall@1",
                   "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                   "objective": {"folds": 3, "seeds": 2}, "reproduction_seeds": [1],
                   "resources": {"cpus": 1}},
    }
    path = tmp_path / "folds.yaml"
    path.write_text(yaml.safe_dump(exp))
    plan = prepare_sweep(str(path), storage=str(results_storage))
    run_sweep(plan, train_fn=FoldScores(), render=False)
    trials = plan.store.trials()
    search = trials[trials.phase == "search"]
    assert len(search) == 2 and set(search.status) == {"completed"}
    expected = [0.2 + 0.01 * (f + 1) + 0.001 * s for f in range(3) for s in range(2)]
    for _, row in search.iterrows():
        runs = json.loads(row[COL_OBJECTIVE_RUNS])
        assert [(r["fold"], r["seed"]) for r in runs] == [(f, s) for f in range(3) for s in range(2)]
        assert [r["value"] for r in runs] == pytest.approx(expected)
        assert row[COL_OBJECTIVE_MEAN] == pytest.approx(np.mean(expected))
        assert row[COL_OBJECTIVE_STD] == pytest.approx(np.std(expected, ddof=1))
        assert row["val.recall@1"] == pytest.approx(np.mean(expected))
    repro = trials[trials.phase == "reproduction"]
    assert len(repro) == 1 and repro[COL_OBJECTIVE_MEAN].isna().all()  # single runs
    import optuna

    study = optuna.load_study(study_name=optuna.get_all_study_names(plan.optuna_storage)[0],
                              storage=plan.optuna_storage)
    values = [t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert values == pytest.approx([np.mean(expected)] * 2)
    epochs = plan.store.epochs()
    assert pd.Series(epochs[epochs.phase == "search"].groupby("trial_id").size()).eq(2).all()
