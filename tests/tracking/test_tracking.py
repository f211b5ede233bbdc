"""One sweep tracked in MLflow, W&B (offline) and TensorBoard at once, on a real local Ray.

A fast fake stands in for run_training (same contract as in tests/sweep/test_sweep_run.py).
Every store is read back from disk: the MLflow client on the SQLite store (runs, tags,
parameters, metric history), the W&B offline run files, the TensorBoard event files,
and the Optuna studies with ``optuna.load_study``. All must hold the same trials as
``trials.parquet`` and the same per-epoch values as ``epochs.parquet``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
import ray.cloudpickle
import yaml

from fixtures.local_ray import local_ray
from fixtures.tracker_stores import read_tensorboard, read_wandb_offline
from harness.core.run_result import RunResult
from harness.sweep.runner import prepare_sweep, run_sweep

pytestmark = pytest.mark.slow

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TRACKED = {
    "description": "tracked fake sweep",
    "base": {"seed": 0, "data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"},
             "train": {"epochs": 3, "batch_size": 16}},
    "search": {"trials": 4, "metric": "val.recall@1", "mode": "max",
               "compare": {"key": "memory.kind", "values": ["none", "xbm"]},
               "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
               "reproduction_seeds": [1], "resources": {"cpus": 1, "gpus": 0}},
    "tracking": {"trackers": ["mlflow", "wandb", "tensorboard"]},
}  # fmt: skip


def fake_training(config, out_dir, on_epoch=None, resume=True):
    """run_training's contract in miniature: per-epoch metrics, a checkpoint, a test result."""
    out_dir = Path(out_dir)
    best = None
    for epoch in range(1, config.train.epochs + 1):
        time.sleep(0.05)
        score = 0.5 + 0.1 * epoch - abs(math.log10(config.optim.lr) + 3) * 0.05 + 0.01 * config.seed
        metrics = {"loss": 1.0 / epoch, "val.recall@1": score, "val.map@r": score / 2, "lr": config.optim.lr}
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out_dir / "checkpoints" / "last.pt").write_text(json.dumps({"epoch": epoch}))
        with (out_dir / "epochs.jsonl").open("a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        best = score if best is None else max(best, score)
        if on_epoch:
            on_epoch(epoch, metrics)
    return RunResult("completed", config.train.epochs, config.train.epochs, {"val.recall@1": best},
                     {"test.recall@1": best - 0.1}, 1.0, "cpu", out_dir)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    path = root / "tracked.yaml"
    path.write_text(yaml.safe_dump(TRACKED))
    with local_ray():
        plan = prepare_sweep(str(path), storage=str(root / "results"))
        run_sweep(plan, train_fn=fake_training, render=False)
    exp_dir = Path(plan.store.root)
    return exp_dir, plan.store.trials(), plan.store.epochs()


def epoch_values(epochs: pd.DataFrame, trial_id: str, column: str) -> dict[int, float]:
    rows = epochs[epochs.trial_id == trial_id]
    return {int(e): float(v) for e, v in zip(rows.epoch, rows[column])}


def test_mlflow_store_holds_every_trial_with_params_and_metric_history(tracked):
    from mlflow.tracking import MlflowClient

    exp_dir, trials, epochs = tracked
    client = MlflowClient(f"sqlite:///{exp_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert len(runs) == len(trials) == 6 and set(by_trial) == set(trials.trial_id)
    for row in trials.to_dict("records"):
        run = by_trial[row["trial_id"]]
        assert run.info.run_name == row["trial_id"] and run.info.status == "FINISHED"
        assert run.data.tags["method"] == row["method"] and run.data.tags["phase"] == row["phase"]
        assert run.data.tags["results"].endswith(f"trials.parquet#trial_id={row['trial_id']}")
        assert float(run.data.params["optim.lr"]) == pytest.approx(row["config.optim.lr"])
        assert run.data.params["memory.kind"] == row["compare_value"]
        history = client.get_metric_history(run.info.run_id, "val.recall_at_1")
        assert {m.step: m.value for m in history} == pytest.approx(epoch_values(epochs, row["trial_id"], "val.recall@1"))
        if row["phase"] == "reproduction":
            assert run.data.metrics["test.recall_at_1"] == pytest.approx(trials.set_index("trial_id").loc[row["trial_id"], "test.recall@1"])


def test_wandb_offline_runs_hold_the_same_trials_and_metrics(tracked):
    exp_dir, trials, epochs = tracked
    run_dirs = sorted((exp_dir / "wandb").glob("offline-run-*"))
    runs = {r["name"]: r for r in map(read_wandb_offline, run_dirs)}
    assert len(run_dirs) == 6 and set(runs) == set(trials.trial_id)
    for row in trials.to_dict("records"):
        run = runs[row["trial_id"]]
        assert run["project"] == "tracked" and run["group"] == row["method"] and run["job_type"] == row["phase"]
        assert run["config"]["memory.kind"] == row["compare_value"]
        by_step = {}
        for h in run["history"]:
            by_step.setdefault(int(h["_step"]), {}).update(h)
        got = {s: h["val.recall_at_1"] for s, h in by_step.items() if "val.recall_at_1" in h}
        assert got == pytest.approx(epoch_values(epochs, row["trial_id"], "val.recall@1"))
        if row["phase"] == "reproduction":
            test = [h["test.recall_at_1"] for h in run["history"] if "test.recall_at_1" in h]
            assert test == pytest.approx([trials.set_index("trial_id").loc[row["trial_id"], "test.recall@1"]])


def test_tensorboard_event_files_hold_the_same_trials_and_metrics(tracked):
    exp_dir, trials, epochs = tracked
    for row in trials.to_dict("records"):
        logdir = exp_dir / "tensorboard" / row["phase"] / row["method"] / row["trial_id"]
        scalars = read_tensorboard(logdir)
        assert scalars["val.recall_at_1"] == pytest.approx(epoch_values(epochs, row["trial_id"], "val.recall@1"))
        assert scalars["loss"] == pytest.approx(epoch_values(epochs, row["trial_id"], "loss"))
    assert len(list((exp_dir / "tensorboard").glob("*/*/*"))) == len(trials)


def test_optuna_studies_in_sqlite_hold_every_completed_search_trial(tracked):
    exp_dir, trials, _ = tracked
    url = f"sqlite:///{exp_dir / 'optuna.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert names == ["tracked:none", "tracked:xbm"]
    for value in ("none", "xbm"):
        study = optuna.load_study(study_name=f"tracked:{value}", storage=url)
        done = {t.user_attrs["trial_id"]: t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
        search = trials[(trials.phase == "search") & (trials.compare_value == value) & (trials.status == "completed")]
        assert set(done) == set(search.trial_id) and len(done) == 2
        for row in search.to_dict("records"):
            assert done[row["trial_id"]].value == pytest.approx(row["val.recall@1"])
            assert done[row["trial_id"]].params["optim.lr"] == pytest.approx(row["config.optim.lr"])
    state = json.loads((exp_dir / "sweep.json").read_text())
    assert state["optuna_storage"] is None  # null: optuna.db beside the tables


def test_missing_tracker_is_one_line_naming_the_extra(monkeypatch, tmp_path, harness_cli):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, _, err = harness_cli(["sweep", "demo", "--tracking", "mlflow", "--storage", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'metric-harness[mlflow]'" in err
    assert not any(tmp_path.iterdir())  # nothing written
    code, _, err = harness_cli(["sweep", "demo", "--tracking", "comet", "--storage", str(tmp_path)])
    assert code == 2 and "unknown tracker; choose from mlflow, wandb, tensorboard" in err


def test_harness_train_tracks_one_run_in_all_three(tmp_path, monkeypatch, harness_cli):
    """`harness train --tracking ...` (real training on tiny digits): one run per tracker,
    beside the run folder, with the epochs of epochs.jsonl and the final test metrics."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    digits = Path(__file__).resolve().parents[2] / "configs" / "digits.yaml"
    out_dir = tmp_path / "runs" / "tiny"
    args = ["train", str(digits), "--out", str(out_dir), "--set", "train.epochs=2",
            "--set", "train.iters_per_epoch=2", "--set", "train.probe_size=8",
            "--tracking", "mlflow", "--tracking", "wandb,tensorboard"]  # fmt: skip
    code, out, err = harness_cli(args)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    epochs = {json.loads(line)["epoch"]: json.loads(line) for line in (out_dir / "epochs.jsonl").read_text().splitlines()}
    val = {e: r["val.recall@1"] for e, r in epochs.items()}
    assert sorted(val) == [1, 2]

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.tags["phase"] == "train" and run.data.tags["results"] == str(out_dir)
    assert run.data.params["train.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "val.recall_at_1")
    assert {m.step: m.value for m in history} == pytest.approx(val)
    assert run.data.metrics["test.recall_at_1"] == pytest.approx(summary["test.recall@1"])

    (wandb_run,) = [read_wandb_offline(d) for d in (tmp_path / "runs" / "wandb").glob("offline-run-*")]
    assert wandb_run["name"] == "tiny" and wandb_run["project"] == "digits" and wandb_run["job_type"] == "train"
    logged = {int(h["_step"]): h["val.recall_at_1"] for h in wandb_run["history"] if "val.recall_at_1" in h}
    assert logged == pytest.approx(val)

    method = run.data.tags["method"]
    scalars = read_tensorboard(tmp_path / "runs" / "tensorboard" / "train" / method / "tiny")
    assert scalars["val.recall_at_1"] == pytest.approx(val)
    assert scalars["test.recall_at_1"] == pytest.approx({2: summary["test.recall@1"]})

    # The same command again resumes the run folder (nothing left to train): each
    # tracker continues its run instead of adding a second one.
    code, _, err = harness_cli(args)
    assert code == 0, err
    (again,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    # offline-run-<time>-<run id>: one per attempt (one folder if both began in the same second)
    attempts = {d.name.split("-", 3)[-1] for d in (tmp_path / "runs" / "wandb").glob("offline-run-*")}
    assert attempts == {wandb_run["run_id"]}


def test_resumed_sweep_keeps_its_trackers(tmp_path, harness_cli):
    """Tune restores a sweep's callbacks from its snapshot: --resume refuses another set."""
    from harness.sweep.experiment import load_experiment

    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump({**TRACKED, "tracking": {"trackers": ["mlflow"]}}))
    exp = load_experiment(str(path))
    root = tmp_path / "results" / "tracked"
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"experiment": exp.model_dump(mode="json")}))
    code, _, err = harness_cli(["sweep", "tracked", "--resume", "--storage", str(tmp_path / "results"),
                                "--tracking", "mlflow", "--tracking", "tensorboard"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "this sweep started with trackers: mlflow, and a resumed sweep keeps them" in err
    assert not (root / "optuna.db").exists()  # refused before anything was opened
