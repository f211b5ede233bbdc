"""The sweep on a real local Ray instance, with a fast fake training function.

The fake stands in for run_training (same signature and files: ``checkpoints/last.pt``
and ``epochs.jsonl``) so the Ray plumbing -- compare axis, Optuna, ASHA, checkpoints,
failures, divergence, reproductions, the tables -- is tested in seconds. The real
training path runs in tests/end_to_end/test_sweep_resume.py and tests/end_to_end/test_cluster.py.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import ray.cloudpickle
import yaml

from harness.core.run_result import RunResult
from harness.sweep.runner import prepare_sweep, run_sweep

pytestmark = pytest.mark.slow

# Ray workers cannot import the tests package: ship this module's functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class FakeTraining:
    """run_training's contract in miniature: resumable, crashes once, xbn diverges."""

    def __init__(self, marks: Path, epoch_seconds: float = 0.15):
        self.marks = marks
        self.epoch_seconds = epoch_seconds

    def __call__(self, config, out_dir, on_epoch=None, resume=True):
        out_dir = Path(out_dir)
        last = out_dir / "checkpoints" / "last.pt"
        start = json.loads(last.read_text())["epoch"] if resume and last.is_file() else 0
        if start:
            (self.marks / f"resumed-{out_dir.parent.name}").write_text(str(start))
        best, best_epoch = None, None
        for epoch in range(start + 1, config.train.epochs + 1):
            time.sleep(self.epoch_seconds)
            # xbn diverges in its first epoch, before any report: ASHA never sees it, so
            # the trial ends "diverged" however fast the machine is (never "stopped").
            if config.memory.kind == "xbn":
                return RunResult("diverged", epoch - 1, None, {}, {}, 0.1, "cpu", out_dir)
            score = 0.5 + 0.1 * epoch - abs(math.log10(config.optim.lr) + 3) * 0.05 + 0.01 * config.seed
            metrics = {"loss": 1.0 / epoch, "val.recall@1": score, "val.map@r": score / 2,
                       "lr": config.optim.lr, "memory_fill": 0.0, "epoch_seconds": self.epoch_seconds}
            last.parent.mkdir(parents=True, exist_ok=True)
            last.write_text(json.dumps({"epoch": epoch}))
            with (out_dir / "epochs.jsonl").open("a") as f:
                f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
            if best is None or score > best:
                best, best_epoch = score, epoch
            if on_epoch:
                on_epoch(epoch, metrics)
            crash_mark = self.marks / "crashed"
            if epoch == 2 and not crash_mark.exists():
                crash_mark.write_text(out_dir.parent.name)
                raise RuntimeError("simulated worker failure")
        return RunResult("completed", config.train.epochs, best_epoch, {"val.recall@1": best},
                         {"test.recall@1": best - 0.1}, 1.0, "cpu", out_dir)


EXPERIMENT = {
    "description": "fake-training sweep",
    "base": {"seed": 0, "data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"},
             "train": {"epochs": 3, "batch_size": 16}},
    "search": {
        "algorithm": "optuna", "trials": 6, "metric": "val.recall@1", "mode": "max",
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "compare": {"key": "memory.kind", "values": ["none", "xbm", "xbn"]},
        "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                  "memory.size": {"type": "int", "low": 32, "high": 128,
                                  "when": {"memory.kind": ["xbm", "xbn"]}}},
        "reproduction_seeds": [1, 2],
        "resources": {"cpus": 1, "gpus": 0},
        "max_failures": 1,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def swept(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    marks = root / "marks"
    marks.mkdir()
    path = root / "fake.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    plan = prepare_sweep(str(path), storage=str(root / "results"))
    outcome = run_sweep(plan, train_fn=FakeTraining(marks), render=False)
    return plan, outcome, marks, FakeTraining(marks)


def test_each_value_searched_with_its_budget_and_conditional_space(swept):
    plan, outcome, _, _ = swept
    trials = plan.store.trials()
    search = trials[trials.phase == "search"]
    assert outcome.trials == 6 and trials.trial_id.is_unique
    assert search.groupby("compare_value").size().to_dict() == {"none": 2, "xbm": 2, "xbn": 2}
    for _, row in search.iterrows():
        params = json.loads(row["params"])
        assert ("memory.size" in params) == (row["compare_value"] != "none")
        assert row["config.optim.lr"] == pytest.approx(params["optim.lr"])
        assert row["config.memory.kind"] == row["compare_value"] == row["method"]
    assert set(search.status) <= {"completed", "stopped", "diverged"}
    # the diverging method is marked as such and did not stop the sweep
    assert set(search[search.compare_value == "xbn"].status) == {"diverged"}
    assert (search[search.compare_value != "xbn"].status != "failed").all()


def test_reproductions_rerun_each_best_config_on_every_seed(swept):
    plan, outcome, _, _ = swept
    trials = plan.store.trials()
    repro = trials[trials.phase == "reproduction"]
    assert outcome.reproductions == 4  # xbn never completed: nothing to reproduce
    assert sorted(repro.trial_id) == [f"reproduction-{v}-seed{s}" for v in ("none", "xbm") for s in (1, 2)]
    assert (repro.status == "completed").all() and repro["test.recall@1"].notna().all()
    assert sorted(repro.seed) == [1, 1, 2, 2]
    for value in ("none", "xbm"):
        search = trials[(trials.phase == "search") & (trials.compare_value == value)]
        best = search.sort_values("val.recall@1", ascending=False).iloc[0]
        for _, row in repro[repro.compare_value == value].iterrows():
            assert row["config.optim.lr"] == best["config.optim.lr"] and row["params"] == best["params"]


def test_lost_worker_trial_restarts_from_its_checkpoint(swept):
    plan, _, marks, _ = swept
    crashed = (marks / "crashed").read_text()
    resumed = {p.name.removeprefix("resumed-"): int(p.read_text()) for p in marks.glob("resumed-*")}
    assert resumed.get(crashed) == 2  # restarted after epoch 2, not from scratch
    epochs = plan.store.epochs()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    per_trial = epochs.groupby("trial_id").epoch.apply(sorted)
    assert all(list(e) == list(range(1, len(e) + 1)) for e in per_trial)  # no gaps


def test_tables_and_space_json_follow_the_contract(swept):
    plan, _, _, _ = swept
    root = Path(plan.store.root)
    trials = pd.read_parquet(root / "trials.parquet")
    for col in ("schema_version", "experiment", "trial_id", "phase", "compare_key", "compare_value",
                "method", "status", "seed", "val.recall@1", "test.recall@1", "best_epoch", "epochs_run",
                "wall_seconds", "device", "gpus", "started_at", "finished_at", "versions", "git_commit",
                "host", "config.train.epochs", "config.memory.kalman.r"):  # fmt: skip
        assert col in trials.columns, col
    assert (trials.compare_key == "memory.kind").all() and (trials.schema_version == 1).all()
    done = trials[trials.status == "completed"]
    assert set(json.loads(done.versions.iloc[0])) >= {"python", "torch", "ray", "optuna", "faiss"}
    epochs = pd.read_parquet(root / "epochs.parquet")
    assert {"schema_version", "experiment", "trial_id", "phase", "method", "epoch", "loss", "val.recall@1"} <= set(epochs.columns)
    space = json.loads((root / "space.json").read_text())
    assert space["trials_planned"] == 6 and space["compare_values"] == ["none", "xbm", "xbn"]
    assert space["params"]["memory.size"]["type"] == "int" and space["reproduction_seeds"] == [1, 2]


def test_reproduce_only_reruns_reproductions_keeping_each_trial_once(swept):
    plan0, _, marks, fake = swept
    before = plan0.store.trials().set_index("trial_id")
    plan = prepare_sweep(plan0.experiment.name, storage=plan0.storage, reproduce_only=True)
    outcome = run_sweep(plan, train_fn=fake, render=False)
    after = plan.store.trials().set_index("trial_id")
    assert outcome.reproductions == 4 and after.index.is_unique and len(after) == len(before)
    repro = after[after.phase == "reproduction"].index
    assert (after.loc[repro, "started_at"] >= before.loc[repro, "started_at"]).all()
    search = after[after.phase == "search"].index
    assert (after.loc[search, "started_at"] == before.loc[search, "started_at"]).all()


def test_reproduce_all_reruns_every_grid_point_and_marks_the_best(results_storage, ray_session, tmp_path):
    """search.reproduce: all (the AXBN paper's Figure 1): every grid configuration is
    reproduced on every seed; only the best one per compared value is marked best_config."""
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "crashed").write_text("none")  # no simulated crash in this sweep
    doc = {**EXPERIMENT, "search": {
        **EXPERIMENT["search"], "algorithm": "grid", "scheduler": None, "reproduce": "all",
        "compare": {"key": "memory.kind", "values": ["none", "xbm"]},
        "space": {"optim.lr": {"type": "categorical", "choices": [1e-3, 1e-2]}},
        "reproduction_seeds": [1]}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    plan = prepare_sweep(str(path), storage=str(results_storage))
    outcome = run_sweep(plan, train_fn=FakeTraining(marks, epoch_seconds=0.05), render=False)
    trials = plan.store.trials()
    repro = trials[trials.phase == "reproduction"]
    assert outcome.trials == 4 and outcome.reproductions == 4 and trials.trial_id.is_unique
    assert sorted(zip(repro.compare_value, repro["config.optim.lr"])) == [
        ("none", 1e-3), ("none", 1e-2), ("xbm", 1e-3), ("xbm", 1e-2)]
    # the fake scores lr=1e-3 best: exactly that configuration is each value's best
    best = repro[repro.best_config.astype(bool)]
    assert sorted(best.compare_value) == ["none", "xbm"] and (best["config.optim.lr"] == 1e-3).all()
    assert trials[trials.phase == "search"].best_config.isna().all()
    space = json.loads((Path(plan.store.root) / "space.json").read_text())
    assert space["reproduce"] == "all" and space["reproductions_planned"] == 4
    assert space["base_values"] == {"optim.lr": 1e-4}


class FailingTraining:
    """Raises ``error`` at ``epoch`` (0: before the first epoch); counts its calls."""

    def __init__(self, marks: Path, error: Exception, epoch: int):
        self.marks, self.error, self.epoch = marks, error, epoch

    def __call__(self, config, out_dir, on_epoch=None, resume=True):
        n = len(list(self.marks.glob("call-*")))
        (self.marks / f"call-{n}").write_text("")
        if self.epoch and on_epoch:
            on_epoch(1, {"loss": 1.0, "val.recall@1": 0.5, "epoch_seconds": 0.0})
        raise self.error


@pytest.mark.parametrize("error, epoch, calls", [
    (ValueError("bad value for this config"), 0, 1),   # deterministic: not retried
    (RuntimeError("disk on fire"), 1, 2),              # may pass on retry: max_failures=1
])  # fmt: skip
def test_failed_trials_say_why_and_fail_the_sweep(results_storage, ray_session, tmp_path, error, epoch, calls):
    from harness.errors import SweepFailedError

    marks = tmp_path / "marks"
    marks.mkdir()
    doc = {**EXPERIMENT, "search": {**EXPERIMENT["search"], "trials": 1, "scheduler": None,
                                    "compare": None, "space": EXPERIMENT["search"]["space"]}}
    doc["search"]["space"] = {"optim.lr": doc["search"]["space"]["optim.lr"]}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(doc))
    plan = prepare_sweep(str(path), storage=str(results_storage))
    reason = f"{type(error).__name__}: {error}"
    with pytest.raises(SweepFailedError, match=rf"all 1 search trials of 'failing' failed: {reason}"):
        run_sweep(plan, train_fn=FailingTraining(marks, error, epoch), render=False)
    trials = plan.store.trials()
    assert trials.status.tolist() == ["failed"] and trials.error.tolist() == [reason]
    assert len(list(marks.glob("call-*"))) == calls
