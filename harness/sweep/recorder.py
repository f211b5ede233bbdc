"""Tune results -> rows of ``trials.parquet`` / ``epochs.parquet`` (docs/architecture.md).

:func:`trial_rows` turns one trial's spec and last Tune result into its rows;
:class:`ResultsRecorder` is the driver-side Tune callback that writes them when a
trial ends, and :func:`reconcile` adds any finished trial it missed.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY  # how TuneReportCallback names it

from harness.utils.clock import utc_iso
from harness.results.contract import (
    COL_COMPARE_KEY,
    COL_COMPARE_VALUE,
    COL_EPOCH,
    COL_ERROR,
    COL_EXPERIMENT,
    COL_METHOD,
    COL_OBJECTIVE_MEAN,
    COL_OBJECTIVE_RUNS,
    COL_OBJECTIVE_STD,
    COL_PHASE,
    COL_SCHEMA_VERSION,
    COL_SEED,
    COL_STATUS,
    COL_TRIAL_ID,
    PHASE_REPRODUCTION,
    RETRIEVAL_FILES,
    RETRIEVALS_DIR,
    SCHEMA_VERSION,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_STOPPED,
)
from harness.sweep.experiment import Experiment, method_of
from harness.sweep.failures import reason_from_traceback
from harness.sweep.results import ResultsStore
from harness.results.trial_report import FINAL_KEY, TrialReport
from harness.results.trial_spec import TrialSpec, run_overrides, spec_of


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _config_cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def trial_rows(exp: Experiment, spec: TrialSpec, trial_id: str,
               last_result: dict[str, Any] | None, error: bool,
               buffered_epochs: list[dict[str, Any]], git_commit: str | None,
               reason: str | None = None,
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One trials.parquet row and its epochs.parquet rows (docs/architecture.md).

    ``reason``: why the trial failed (one line), when Tune ended it with an error."""
    last = last_result or {}
    report = TrialReport.decode(last)
    summary = report.summary if report.final else None
    cfg = exp.run_config(run_overrides(spec))
    method = method_of(cfg)
    # the run's epoch log (the summary); only a trial that ended without one keeps the
    # epoch reports the driver saw (harness/results/trial_report.py)
    epochs = summary.epochs if summary else buffered_epochs
    if summary:
        status = summary.status
        val = dict(summary.best_val)
        test = {**summary.test, **summary.test_untrained}
        best_epoch, epochs_run = summary.best_epoch, summary.epochs_run
        wall, device, host = summary.wall_seconds, summary.device, summary.host
        started, finished = summary.started_at, summary.finished_at
        versions = summary.versions
    else:
        # a final report without summary: a trial that could not run (failures.py)
        status = report.status if report.final and report.status else (
            STATUS_FAILED if error else STATUS_STOPPED)
        reason = reason or (report.error if report.final else None)
        metric, sign = exp.search.metric, (1 if exp.search.mode == "max" else -1)
        scored = [e for e in epochs if isinstance(e.get(metric), (int, float))]
        best = max(scored, key=lambda e: sign * e[metric]) if scored else None
        val = {k: v for k, v in (best or {}).items() if k.startswith("val.")}
        test = {}
        best_epoch = best["epoch"] if best else None
        epochs_run = max((int(e["epoch"]) for e in epochs), default=0)
        wall = float(sum(e.get("epoch_seconds", 0.0) for e in epochs))
        device, host = None, last.get("hostname")  # Tune's own key
        started, finished = report.started_at, utc_iso()
        versions = None
    row: dict[str, Any] = {
        COL_SCHEMA_VERSION: SCHEMA_VERSION,
        COL_EXPERIMENT: exp.name,
        COL_TRIAL_ID: trial_id,
        COL_PHASE: spec["phase"],
        COL_COMPARE_KEY: exp.compare_key,
        COL_COMPARE_VALUE: spec.get("compare_value"),
        COL_METHOD: method,
        COL_STATUS: status,
        COL_ERROR: reason if status == STATUS_FAILED else None,
        "params": json.dumps(spec.get("params") or {}),
        # reproductions: whether this is the compared value's best search configuration
        # (the one summary tables compare); null for search trials
        "best_config": spec.get("best_config") if spec["phase"] == PHASE_REPRODUCTION else None,
    }
    row.update({f"config.{k}": _config_cell(v) for k, v in cfg.flat().items()})
    row[COL_SEED] = int(spec["seed"])
    row.update({k if k.startswith("val.") else f"val.{k}": v for k, v in val.items()})
    row.update({k if k.startswith("test") else f"test.{k}": v for k, v in test.items()})
    row.update(
        best_epoch=best_epoch, epochs_run=epochs_run, wall_seconds=wall, device=device,
        gpus=float(exp.search.resources.trial_gpus), workers=int(exp.search.resources.workers),
        started_at=started, finished_at=finished,
        versions=json.dumps(versions) if versions is not None else None,
        git_commit=git_commit, host=host,
    )
    row.update(objective_columns(summary.units if summary else None))
    epoch_rows = []
    for e in epochs:
        r = {COL_SCHEMA_VERSION: SCHEMA_VERSION, COL_EXPERIMENT: exp.name, COL_TRIAL_ID: trial_id,
             COL_PHASE: spec["phase"], COL_METHOD: method, COL_EPOCH: int(e["epoch"])}
        r.update({k: float(v) for k, v in e.items()
                  if k != COL_EPOCH and isinstance(v, (int, float)) and not isinstance(v, bool)})
        epoch_rows.append(r)
    return row, epoch_rows


def objective_columns(units: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A trial of several runs (search.objective folds x seeds): the mean, sample std
    and per-run values of its objective; {} for a single run."""
    if not units:
        return {}
    values = [u.get("value") for u in units]
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    runs = [{"fold": u.get("fold"), "seed": u.get("seed"), "value": u.get("value")} for u in units]
    return {COL_OBJECTIVE_MEAN: mean, COL_OBJECTIVE_STD: std, COL_OBJECTIVE_RUNS: json.dumps(runs)}


def epoch_of_result(result: dict[str, Any]) -> dict[str, Any]:
    """An epoch report's values for ``epochs.parquet``: its metrics and ``epoch``."""
    report = TrialReport.decode(result)
    return {**report.metrics, COL_EPOCH: report.epoch}


class ResultsRecorder(tune.Callback):
    """Driver-side Tune callback: writes a trial's rows when it finishes (or fails).

    Picklable (Tune stores callbacks with the experiment); the store is reopened lazily.
    """

    def __init__(self, exp: Experiment, storage: str, git_commit: str | None,
                 watch: tune.Callback | None = None):
        self.exp = exp
        self.storage = storage
        self.git_commit = git_commit
        self.watch = watch  # InterruptWatch: trials cut short by Ctrl-C are not recorded
        self._store: ResultsStore | None = None
        self._epochs: dict[str, dict[int, dict[str, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(self.storage, self.exp.name)
        return self._store

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.buffer_epoch(trial.trial_id, result)

    def buffer_epoch(self, tune_trial_id: str, result: dict[str, Any]) -> None:
        """Keep an epoch report of a running trial until its rows are written (a later
        report of the same epoch, after a restart, replaces it)."""
        if not result.get(FINAL_KEY) and COL_EPOCH in result:
            self._epochs.setdefault(tune_trial_id, {})[int(result[COL_EPOCH])] = epoch_of_result(result)

    def take_buffered_epochs(self, other: "ResultsRecorder") -> None:
        """The epochs ``other`` (the recorder a restored Tuner brought back) had buffered."""
        self._epochs = {trial: dict(epochs) for trial, epochs in other._epochs.items()}

    def record(self, spec: TrialSpec, tune_trial_id: str, last_result: dict | None,
               error: bool, reason: str | None = None, checkpoint=None) -> None:
        """Write the trial's rows; a completed reproduction's retrieval files, when its
        last Tune checkpoint (``checkpoint``) holds them, go to the experiment folder."""
        if getattr(self.watch, "interrupted", None) and not (last_result or {}).get(FINAL_KEY):
            return  # cut short by Ctrl-C, not finished: the resume runs it again
        buffered = [self._epochs.get(tune_trial_id, {})[k]
                    for k in sorted(self._epochs.get(tune_trial_id, {}))]
        trial_id = spec.get("trial_id") or tune_trial_id
        row, epoch_rows = trial_rows(self.exp, spec, trial_id, last_result, error, buffered,
                                     self.git_commit, reason)
        if row[COL_PHASE] == PHASE_REPRODUCTION and row[COL_STATUS] == STATUS_COMPLETED:
            keep_retrievals(self.store, trial_id, checkpoint, last_result)  # before the row
        self.store.upsert_epochs(epoch_rows)
        self.store.upsert_trials([row])
        self._epochs.pop(tune_trial_id, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.record(spec_of(trial.config), trial.trial_id, trial.last_result, error=False,
                    checkpoint=trial.checkpoint)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.record(spec_of(trial.config), trial.trial_id, trial.last_result, error=True,
                    reason=trial_error_reason(trial))


def keep_retrievals(store: ResultsStore, trial_id: str, checkpoint, last_result: dict | None = None) -> bool:
    """Copy a reproduction's retrieval files (``RETRIEVAL_FILES``) out of its last
    checkpoint into ``<experiment>/retrievals/<trial_id>/``; False when it has none (not
    a best-config reproduction, a test double of training).

    ``checkpoint``: the Tune trial's; a data-parallel trial has none, its Ray Train run's
    checkpoint is named by the ``checkpoint_path`` its last result carries
    (``TuneReportCallback``), on the sweep's own storage."""
    if checkpoint is not None:
        fs, folder = checkpoint.filesystem, checkpoint.path
    elif (last_result or {}).get(CHECKPOINT_PATH_KEY):
        import pyarrow.fs  # only for data-parallel trials

        fs, folder = store.filesystem or pyarrow.fs.LocalFileSystem(), last_result[CHECKPOINT_PATH_KEY]
    else:
        return False
    blobs = {}
    try:
        for name in RETRIEVAL_FILES:
            with fs.open_input_stream(f"{folder}/{name}") as f:
                blobs[name] = f.read()
    except OSError:  # pyarrow's FileNotFoundError included
        return False
    for name, data in blobs.items():
        store.write_bytes(f"{RETRIEVALS_DIR}/{trial_id}/{name}", data)
    return True


def trial_error_reason(trial) -> str | None:
    """The one-line reason of a trial Tune ended with an error (its error file)."""
    try:
        return reason_from_traceback(trial.get_error())
    except Exception:  # noqa: BLE001 - a missing error file must not stop the sweep
        return None


def reconcile(recorder: ResultsRecorder, results) -> None:
    """Add any finished trial the callbacks missed (driver killed between a trial's end
    and its row being written) from Tune's own record of it (a ``ResultGrid``)."""
    have = set(recorder.store.trials().get(COL_TRIAL_ID, []))
    for result in results:
        spec = spec_of(result.config)
        if not spec:
            continue
        tune_id = (result.metrics or {}).get("trial_id", "")
        trial_id = spec.get("trial_id") or tune_id
        if trial_id and trial_id not in have:
            recorder.record(spec, tune_id, result.metrics, error=result.error is not None,
                            reason=reason_from_traceback(str(result.error)) if result.error else None,
                            checkpoint=result.checkpoint)
