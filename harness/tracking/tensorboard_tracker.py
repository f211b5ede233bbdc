"""TensorBoard: Ray Tune's ``TBXLoggerCallback`` (tensorboardX) for sweeps and `harness train`.

:class:`FiniteTBXLoggerCallback` stands in for the TensorBoard logger Ray Tune adds to
every sweep (event files in each trial's Tune folder): it leaves out non-finite values,
such as a failed trial's objective (-inf), which tensorboardX would otherwise refuse
with an unexplained "NaN or Inf found in input tensor." on stderr.

Event files go to ``<folder>/tensorboard/<phase>/<method>/<trial_id>/``, so
``tensorboard --logdir <storage>`` lists the runs by experiment, phase and method. Scalars
are the harness metrics (step = epoch); each run's searched values, seed and final
metrics land in TensorBoard's HParams table when it ends.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.logger.tensorboardx import TBXLoggerCallback

from harness.tracking.runs import TrackedRun, clean_metrics, result_metrics, sweep_trial_run

FOLDER = "tensorboard"


def run_logdir(folder: str | Path, run: TrackedRun) -> str:
    return str(Path(folder) / FOLDER / run.phase / run.method / run.run_name)


def finite_result(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without its non-finite numbers (nested dicts too); the rest unchanged."""
    out: dict[str, Any] = {}
    for k, v in result.items():
        if isinstance(v, dict):
            out[k] = finite_result(v)
        elif isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
            continue
        else:
            out[k] = v
    return out


class FiniteTBXLoggerCallback(TBXLoggerCallback):
    """Ray Tune's TensorBoard logger of each trial's results, finite values only."""

    def log_trial_result(self, iteration: int, trial, result: dict):
        super().log_trial_result(iteration, trial, finite_result(result))


class _Writer:
    """A tensorboardX SummaryWriter plus the run's last metrics (for the HParams table)."""

    def __init__(self, logdir: str, run: TrackedRun):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir, flush_secs=30)
        self.run = run
        self.last: dict[str, float] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.last.update(metrics)
        self.writer.flush()

    def close(self) -> None:
        from tensorboardX.summary import hparams

        if self.last:
            for summary in hparams(self.run.hparams(), {f"final/{k}": v for k, v in self.last.items()}):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


class TensorBoardTrialCallback(TBXLoggerCallback):
    """Ray's TensorBoardX callback writing one event folder per harness trial."""

    def __init__(self, exp, folder: str, trials_table: str):
        super().__init__()
        self.exp = exp
        self.folder = folder
        self.trials_table = trials_table
        self._writers: dict[Any, _Writer] = {}

    def log_trial_start(self, trial):
        if trial in self._writers:  # a restarted trial appends to its own folder
            return
        run = sweep_trial_run(self.exp, trial, self.trials_table)
        self._writers[trial] = _Writer(run_logdir(self.folder, run), run)

    def log_trial_result(self, iteration: int, trial, result: dict):
        if trial not in self._writers:
            self.log_trial_start(trial)
        step, metrics = result_metrics(result)
        self._writers[trial].log(step, metrics)

    def log_trial_end(self, trial, failed: bool = False):
        writer = self._writers.pop(trial, None)
        if writer is not None:
            writer.close()


class TensorBoardRun:
    """One `harness train` run as TensorBoard event files."""

    def __init__(self, run: TrackedRun, folder: Path):
        self.writer = _Writer(run_logdir(folder, run), run)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.writer.log(epoch, clean_metrics(metrics))

    def finish(self, summary: dict[str, Any], status: str) -> None:
        final = {k: v for k, v in summary.items() if k.startswith(("test.", "test_untrained."))}
        self.writer.log(int(summary.get("epochs_run") or 0), clean_metrics(final))
        self.writer.close()
