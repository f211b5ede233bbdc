"""Experiment tracking: MLflow, Weights & Biases and TensorBoard, all optional.

- :func:`create_tracking_callbacks` -> Ray Tune callbacks for a sweep (the libraries' own
  Tune integrations, subclassed to name and group runs the harness's way);
- :func:`create_run_tracker` -> a tracker for one `harness train` run (the clients directly).

Modules: config (the ``tracking:`` section, install checks), runs (what a tracked run
records), one module per tracker. Where each tracker writes: docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.results.contract import PHASE_TRAIN
from harness.tracking.config import (
    TRACKERS,
    TrackingSpec,
    local_folder,
    parse_trackers,
    require_installed,
)

__all__ = ["TRACKERS", "TrackingSpec", "parse_trackers", "require_installed",
           "create_tracking_callbacks", "with_tune_tensorboard", "create_run_tracker", "RunTracker"]


def create_tracking_callbacks(exp, root: str, spec: TrackingSpec | None = None) -> list[Any]:
    """One Tune callback per tracker in ``spec`` (default: the experiment's ``tracking``),
    writing local stores into the experiment folder ``root`` (see :func:`local_folder`)."""
    spec = spec if spec is not None else exp.tracking
    require_installed(spec.trackers)
    trials_table = f"{root}/trials.parquet"
    folder = local_folder(root)
    callbacks: list[Any] = []
    for name in spec.trackers:
        if name == "mlflow":
            from harness.tracking.mlflow_tracker import MLflowTrialCallback, tracking_uri

            callbacks.append(MLflowTrialCallback(exp, tracking_uri(spec.mlflow, folder), trials_table))
        elif name == "wandb":
            from harness.tracking.wandb_tracker import WandbTrialCallback, wandb_dir

            callbacks.append(WandbTrialCallback(exp, spec.wandb, wandb_dir(folder), trials_table))
        elif name == "tensorboard":
            from harness.tracking.tensorboard_tracker import TensorBoardTrialCallback

            callbacks.append(TensorBoardTrialCallback(exp, str(folder), trials_table))
    return callbacks


def with_tune_tensorboard(callbacks: list[Any]) -> list[Any]:
    """``callbacks`` plus the finite-values TensorBoard logger of the trials' Tune folders,
    unless one of them is a TensorBoard logger already (Ray then adds none of its own)."""
    from ray.tune.logger.tensorboardx import TBXLoggerCallback

    from harness.tracking.tensorboard_tracker import FiniteTBXLoggerCallback

    if any(isinstance(cb, TBXLoggerCallback) for cb in callbacks):
        return callbacks
    try:
        return [*callbacks, FiniteTBXLoggerCallback()]
    except ImportError:  # no tensorboardX: Ray's own logger would be missing too
        return callbacks


class RunTracker:
    """Every tracker of one `harness train` run: ``log_epoch`` per epoch, ``finish`` once."""

    def __init__(self, runs: list[Any]):
        self.runs = runs

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        for run in self.runs:
            run.log_epoch(epoch, metrics)

    def finish(self, summary: dict[str, Any], status: str) -> None:
        for run in self.runs:
            run.finish(summary, status)


def create_run_tracker(spec: TrackingSpec, config, out_dir: Path, experiment: str) -> RunTracker:
    """Trackers for a `harness train` run in ``out_dir``; their local stores go beside
    it (the runs folder), so all runs of a folder share one MLflow store and one W&B folder."""
    from harness.sweep.experiment import method_of
    from harness.tracking.runs import TrackedRun

    require_installed(spec.trackers)
    out_dir = Path(out_dir).absolute()
    run = TrackedRun(run_name=out_dir.name, experiment=experiment, method=method_of(config),
                     phase=PHASE_TRAIN, params=config.flat(), link=str(out_dir))
    folder = out_dir.parent
    runs: list[Any] = []
    for name in spec.trackers:
        if name == "mlflow":
            from harness.tracking.mlflow_tracker import MLflowRun

            runs.append(MLflowRun(spec.mlflow, run, folder))
        elif name == "wandb":
            from harness.tracking.wandb_tracker import WandbRun

            runs.append(WandbRun(spec.wandb, run, folder))
        elif name == "tensorboard":
            from harness.tracking.tensorboard_tracker import TensorBoardRun

            runs.append(TensorBoardRun(run, folder))
    return RunTracker(runs)
