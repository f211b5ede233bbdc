"""MLflow: Ray Tune's ``MLflowLoggerCallback`` for sweeps, the ``mlflow`` client for `harness train`.

Default store: a SQLite file beside the results (``sqlite:///<folder>/mlflow.db``), which
``mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db`` browses; a server's URI
(``tracking.mlflow.tracking_uri`` or ``$MLFLOW_TRACKING_URI``) instead sends the runs there.
The MLflow experiment is the harness experiment; runs carry the tags of
:meth:`TrackedRun.tags` (method, phase, trial_id, ...), so the UI groups them by method.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from harness.results.contract import STATUS_COMPLETED
from harness.tracking.config import MlflowSpec
from harness.tracking.runs import TrackedRun, clean_metrics, result_metrics, sweep_trial_run

STORE_FILE = "mlflow.db"


def tracking_uri(spec: MlflowSpec, folder: str | Path) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else the SQLite store in ``folder``."""
    uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = Path(folder).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / STORE_FILE}"


def _quiet() -> None:
    import logging

    # "Creating initial MLflow database tables..." on every new store: not for the console.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class MLflowTrialCallback(MLflowLoggerCallback):
    """Ray's MLflow callback with one MLflow run per harness trial (named by its trial_id,
    tagged with method/phase/compare value), the flat run config as parameters, and
    per-epoch metrics at step = epoch (the final test metrics at the last epoch)."""

    def __init__(self, exp, tracking_uri: str, trials_table: str):
        super().__init__(tracking_uri=tracking_uri, experiment_name=exp.name)
        self.exp = exp
        self.trials_table = trials_table

    def setup(self, *args, **kwargs):
        _quiet()
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        if trial in self._trial_runs:  # a restarted trial keeps its run
            return
        run = sweep_trial_run(self.exp, trial, self.trials_table)
        # A trial Tune restarts after a driver restart (--resume) continues its run.
        self._trial_runs[trial] = open_run(self.mlflow_util._get_client(),
                                           self.mlflow_util.experiment_id, run)

    def log_trial_result(self, iteration: int, trial, result: dict):
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        step, metrics = result_metrics(result)
        _log_metrics(self.mlflow_util._get_client(), self._trial_runs[trial], metrics, step)


def open_run(client, experiment_id: str, run: TrackedRun) -> str:
    """The id of ``run``'s MLflow run: the one an earlier (interrupted) attempt created,
    marked running again, else a new one with its tags and parameters."""
    found = client.search_runs([experiment_id], filter_string=f"tags.trial_id = '{run.run_name}'")
    # the same name in another results folder is another run (a shared tracking server)
    same = [r for r in found if r.data.tags.get("results") == (run.link or "")]
    if same:
        client.update_run(same[0].info.run_id, status="RUNNING")
        return same[0].info.run_id
    run_id = client.create_run(experiment_id, run_name=run.run_name, tags=run.tags()).info.run_id
    _log_params(client, run_id, run)
    return run_id


def _log_params(client, run_id: str, run: TrackedRun) -> None:
    from mlflow.entities import Param

    # MLflow caps a param value at 6000 characters and a batch at 100 params.
    params = [Param(k, v[:6000]) for k, v in sorted(run.param_strings().items())]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in metrics.items()]
    if batch:
        client.log_batch(run_id, metrics=batch)


class MLflowRun:
    """One `harness train` run in MLflow (the client directly: there is no Tune here)."""

    def __init__(self, spec: MlflowSpec, run: TrackedRun, folder: Path):
        _quiet()
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri(spec, folder))
        exp = self.client.get_experiment_by_name(run.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(run.experiment)
        # `harness train` on an existing run folder resumes it: so does its MLflow run.
        self.run_id = open_run(self.client, exp_id, run)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        _log_metrics(self.client, self.run_id, clean_metrics(metrics), epoch)

    def finish(self, summary: dict[str, Any], status: str) -> None:
        step = int(summary.get("epochs_run") or 0)
        final = {k: v for k, v in summary.items() if k.startswith(("test.", "test_untrained."))}
        _log_metrics(self.client, self.run_id, clean_metrics(final), step)
        self.client.set_terminated(self.run_id, "FINISHED" if status == STATUS_COMPLETED else "FAILED")
