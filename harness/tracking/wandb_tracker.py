"""Weights & Biases: Ray Tune's ``WandbLoggerCallback`` for sweeps, ``wandb`` for `harness train`.

Offline by default (``mode: offline`` unless ``tracking.wandb.mode`` or ``$WANDB_MODE``
says otherwise): runs are written under ``<folder>/wandb/offline-run-*`` and need no
account; ``wandb sync <folder>/wandb/offline-run-*`` uploads them later. The W&B project
is the experiment, the group the method, the job type the phase, the run name the trial_id.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.wandb import WandbLoggerCallback

from harness.results.contract import STATUS_COMPLETED
from harness.sweep.internals import use_wandb_logging_actor, wandb_logging_actor_that_waits_for_its_writer
from harness.tracking.config import WandbSpec
from harness.tracking.runs import TrackedRun, clean_metrics, result_metrics, sweep_trial_run


def wandb_mode(spec: WandbSpec) -> str:
    return spec.mode or os.environ.get("WANDB_MODE") or "offline"


def wandb_dir(folder: str | Path) -> str:
    path = Path(folder).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _init_kwargs(spec: WandbSpec, run: TrackedRun, folder: str) -> dict[str, Any]:
    kwargs = dict(project=spec.project or run.experiment, group=run.method, job_type=run.phase,
                  name=run.run_name, dir=folder, mode=wandb_mode(spec), config=run.params,
                  tags=[run.method, run.phase], notes=run.link)
    if spec.entity:
        kwargs["entity"] = spec.entity
    return kwargs


class WandbTrialCallback(WandbLoggerCallback):
    """Ray's W&B callback (one logging actor per trial, on the driver's node) with the
    harness's run identity, the flat run config as W&B config, and step = epoch; its
    logging actors end only once W&B has written their run out."""

    def __init__(self, exp, spec: WandbSpec, folder: str, trials_table: str):
        super().__init__(project=spec.project or exp.name)
        self.exp = exp
        self.spec = spec
        self.folder = folder
        self.trials_table = trials_table

    def setup(self, *args, **kwargs):
        # Ray asks for an API key unless $WANDB_MODE says offline; the mode here may come
        # from the experiment instead, and offline/disabled runs need no account.
        if wandb_mode(self.spec) == "online":
            super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        run = sweep_trial_run(self.exp, trial, self.trials_table)
        kwargs = _init_kwargs(self.spec, run, self.folder)
        kwargs["id"] = trial.trial_id  # unique in the project; Tune keeps it across --resume
        kwargs["resume"] = "allow"  # a restarted trial continues its run
        exclude = [*self._exclude_results, *self.excludes, "config"]
        self._start_logging_actor(trial, exclude, **kwargs)

    def log_trial_result(self, iteration: int, trial, result: dict):
        step, metrics = result_metrics(result)
        # The logging actor logs every numeric key at step = result[TRAINING_ITERATION].
        super().log_trial_result(iteration, trial, {**metrics, TRAINING_ITERATION: step})


use_wandb_logging_actor(WandbTrialCallback, wandb_logging_actor_that_waits_for_its_writer())


class WandbRun:
    """One `harness train` run in W&B."""

    def __init__(self, spec: WandbSpec, run: TrackedRun, folder: Path):
        import wandb

        # `harness train` on an existing run folder resumes it: so does its W&B run (one
        # id per run folder; offline attempts share it, `wandb sync --append` joins them).
        run_id = "train-" + hashlib.sha1(str(run.link).encode()).hexdigest()[:16]
        self.run = wandb.init(**_init_kwargs(spec, run, wandb_dir(folder)), id=run_id, resume="allow")

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.run.log(clean_metrics(metrics), step=epoch)

    def finish(self, summary: dict[str, Any], status: str) -> None:
        final = {k: v for k, v in summary.items() if k.startswith(("test.", "test_untrained."))}
        step = int(summary.get("epochs_run") or 0)
        metrics = clean_metrics(final)
        if metrics:
            self.run.log(metrics, step=step)
        self.run.finish(exit_code=0 if status == STATUS_COMPLETED else 1)
