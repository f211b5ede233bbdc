"""One sweep trial's run, the same for both trainables: train, report every epoch and the end.

:func:`run_trial` calls ``run_training`` (or a test double) in the trial's run folder
and reports :class:`~harness.results.trial_report.TrialReport` values: one per epoch, with the
run folder as the checkpoint every ``train.checkpoint_every`` epochs, and a final one.
A single-worker trial reports through Tune (:data:`tune_reporter`), rank 0 of a
data-parallel trial through Ray Train (:data:`ray_train_reporter`); nothing else differs.

A trial that Tune restarts after it had already finished (the driver died before Tune's
experiment snapshot recorded the end) finds its final report in the run folder
(``FINAL_REPORT_FILE``) and reports it again instead of training. A trial whose
configuration or data cannot work reports ``failed`` with its one-line reason and is
not retried (:mod:`harness.sweep.failures`); any other error is raised for Tune to retry.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from pathlib import Path
from typing import Any, Callable, Protocol

from harness.utils.clock import utc_iso
from harness.core.install import library_versions
from harness.results.contract import (
    COL_PHASE,
    FINAL_REPORT_FILE,
    OBJECTIVE_SO_FAR_KEY,
    PHASE_REPRODUCTION,
    STATUS_COMPLETED,
    TRIAL_META_FILE,
)
from harness.sweep.failures import is_deterministic, one_line
from harness.results.trial_report import TrialReport, TrialSummary, worst
from harness.results.trial_spec import TrialSpec
from harness.trainables.trial_setup import read_epochs, seal_checkpoint


class Reporter(Protocol):
    def __call__(self, report: TrialReport | dict[str, Any], checkpoint_dir: Path | None = None) -> None: ...


class CheckpointReporter:
    """Reports through ``api`` (``ray.tune`` or ``ray.train``: the same ``report`` and
    ``Checkpoint`` in both), a run folder as the checkpoint. A plain dict is sent as it
    is (the follower ranks' reports, which only keep Ray Train's barrier)."""

    def __init__(self, api_name: str):
        self.api_name = api_name

    def __call__(self, report: TrialReport | dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        import importlib

        api = importlib.import_module(self.api_name)
        metrics = report.encode() if isinstance(report, TrialReport) else report
        checkpoint = (None if checkpoint_dir is None
                      else api.Checkpoint.from_directory(str(seal_checkpoint(checkpoint_dir))))
        api.report(metrics, checkpoint=checkpoint)


tune_reporter = CheckpointReporter("ray.tune")
ray_train_reporter = CheckpointReporter("ray.train")


def draws_pictures(spec: TrialSpec) -> bool:
    """The best configurations' reproductions keep their test-set neighbours for the
    report's retrieval pictures."""
    return spec.get(COL_PHASE) == PHASE_REPRODUCTION and spec.get("best_config") is not False


def report_failure(report: Reporter, error: BaseException, mode: str, epochs_run: int,
                   started_at: str | None = None) -> None:
    """End the trial as ``failed`` with its reason (a final report, no retry)."""
    report(TrialReport.failed(one_line(error), epochs_run, mode, started_at or utc_iso()), None)


def scored_value(record: dict[str, Any], metric: str) -> Any:
    """What an epoch record scores the trial on: the search metric, or for a trial of
    several runs (trainables/objective.py) the mean of their best-so-far values."""
    return record.get(OBJECTIVE_SO_FAR_KEY, record.get(metric))


class BestSoFar:
    """The trial's objective: the best finite scored value seen (``mode``: max or min)."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.value: float | None = None

    def see(self, record: dict[str, Any]) -> None:
        v = scored_value(record, self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and (
                self.value is None or (v > self.value if self.mode == "max" else v < self.value)):
            self.value = float(v)

    @property
    def objective(self) -> float:
        return worst(self.mode) if self.value is None else self.value


def run_trial(run_config, out_dir: Path, metric: str, mode: str, train_fn: Callable[..., Any],
              report: Reporter, save_retrievals: bool = False) -> None:
    """One ``train_fn`` run reporting every epoch (with its checkpoint) and the end."""
    final_path = out_dir / FINAL_REPORT_FILE
    if final_path.is_file():
        report(TrialReport.read(final_path), None)
        return
    meta_path = out_dir / TRIAL_META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("started_at", utc_iso())
    meta["restarts"] = int(meta.get("restarts", -1)) + 1
    meta_path.write_text(json.dumps(meta))

    best = BestSoFar(metric, mode)
    for rec in read_epochs(out_dir):  # best so far from epochs before a restart
        best.see(rec)
    epochs_seen = 0
    every, last_epoch = run_config.train.checkpoint_every, run_config.train.epochs

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal epochs_seen
        epochs_seen = epoch
        best.see(metrics)
        # the run folder goes to Tune's storage every train.checkpoint_every epochs (and
        # at the last epoch): each upload is the whole folder, while the other ranks wait
        keep = epoch % every == 0 or epoch >= last_epoch
        report(TrialReport.progress(epoch, metrics, best.objective, meta["started_at"]), out_dir if keep else None)

    try:
        result = train_fn(run_config, out_dir, on_epoch=on_epoch, resume=True)
    except Exception as e:
        if not is_deterministic(e, started_training=epochs_seen > 0 or meta["restarts"] > 0):
            raise  # Tune retries it from the last checkpoint
        report_failure(report, e, mode, epochs_seen, meta["started_at"])
        return
    if save_retrievals and result.status == STATUS_COMPLETED:
        _save_retrievals(run_config, out_dir)

    best_val = {k: float(v) for k, v in (result.best_val or {}).items()}
    objective = best_val.get(metric, best_val.get(f"val.{metric.removeprefix('val.')}"))
    if result.status != STATUS_COMPLETED or objective is None or not math.isfinite(objective):
        objective = worst(mode)
    summary = TrialSummary(
        status=result.status,
        epochs_run=int(result.epochs_run),
        best_epoch=result.best_epoch,
        best_val=best_val,
        test={k: float(v) for k, v in (result.test or {}).items()},
        test_untrained={k: float(v) for k, v in (getattr(result, "test_untrained", None) or {}).items()},
        wall_seconds=float(result.wall_seconds),
        device=str(result.device),
        started_at=meta["started_at"],
        finished_at=utc_iso(),
        restarts=meta["restarts"],
        versions=library_versions(),
        host=socket.gethostname(),
        epochs=read_epochs(out_dir),
        units=list(getattr(result, "units", None) or []),
    )
    final = TrialReport.finished(summary, objective)
    final.write(final_path)
    report(final, out_dir)


def _save_retrievals(run_config, out_dir: Path) -> None:
    """The test-set neighbours behind the report's pictures; a failure here costs the
    pictures (logged), never the reproduction."""
    try:
        # here, not at the top: only the best reproductions draw pictures (PIL, numpy)
        from harness.serving.retrieval_pictures import save_run_retrievals

        save_run_retrievals(run_config, out_dir)
    except Exception as e:  # noqa: BLE001 - the trial's result matters more than its picture
        logging.getLogger(__name__).warning("retrieval pictures not saved for %s: %s", out_dir, e)
