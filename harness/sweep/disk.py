"""A full disk during a sweep: stop the whole sweep at once, say where and how much.

A trial that meets a full disk (``ENOSPC``/``EDQUOT``, :func:`~harness.sweep.failures.disk_full`)
raises, so it stays resumable from its last checkpoint; :class:`DiskFullWatch` (a driver
callback) sees the error before Tune's retry can run and ends ``Tuner.fit``, and
:func:`disk_full_error` turns whatever the driver caught into one line: the full path, its
free space, and roughly what the sweep still needs (the largest finished trial folder
× the trials left). Every table write is atomic, so what was written stays readable;
``--resume`` (after freeing space, or on a copy of the storage) finishes the rest.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from harness.errors import HarnessError
from harness.results.contract import FINAL_REPORT_FILE, PHASE_REPRODUCTION, PHASE_SEARCH
from harness.sweep.failures import disk_full
from harness.sweep.results import is_uri

if TYPE_CHECKING:
    from harness.sweep.plan import SweepPlan



class DiskFullError(HarnessError):
    """The storage (or a trial's run folder) ran out of space; the sweep stopped."""


class DiskFullStop(Exception):
    """Raised inside Tune's loop by :class:`DiskFullWatch`: ends ``Tuner.fit`` at once."""

    def __init__(self, error: BaseException):
        super().__init__(f"disk full: {error}")
        self.error = error


def _trial_error(trial) -> BaseException | str | None:
    """The error Tune just recorded for ``trial`` (its pickled exception, else the text)."""
    import ray.cloudpickle

    for read in (lambda: ray.cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()),
                 lambda: Path(trial.error_file).read_text(errors="replace")):
        try:
            found = read()
        except Exception:  # noqa: BLE001 - not written (the disk is full), or not picklable here
            continue
        if found is not None:
            return found
    return None


class DiskFullWatch(tune.Callback):
    """Stops ``Tuner.fit`` at the first trial error that is a full disk: Tune would
    otherwise retry the trial (``max_failures``) into the same disk, then the next."""

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._check(trial)

    def _check(self, trial) -> None:
        error = _trial_error(trial)
        if isinstance(error, str):
            error = RuntimeError(error)
        found = disk_full(error)
        if found is not None:
            raise DiskFullStop(found) from found


class DiskFullLogFilter(logging.Filter):
    """Drops Tune's log records of a full disk (the trial's traceback, the failed state
    snapshot): the driver says it in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and disk_full(exc) is not None:
            return False
        return disk_full(RuntimeError(record.getMessage())) is None


# Tune's loggers that report a trial's failure, a failed snapshot or sync with a traceback.
TUNE_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune",
                "ray.tune.execution.experiment_state", "ray.train._internal.syncer",
                "ray.train._internal.storage", "ray.tune.tuner", "ray.tune.impl.tuner_internal")


def quiet_tune_disk_full_logs() -> None:
    for name in TUNE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DiskFullLogFilter) for f in logger.filters):
            logger.addFilter(DiskFullLogFilter())


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _folder_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def trial_bytes(plan: SweepPlan) -> int | None:
    """The largest finished trial's folder under ``tune/`` (its checkpoint and Tune's
    files), else the largest trial folder with a checkpoint; None when there is none."""
    finished, started = [], []
    for phase in (PHASE_SEARCH, PHASE_REPRODUCTION):
        root = Path(plan.tune_dir(phase))
        if not root.is_dir():
            continue
        for trial in (p for p in root.iterdir() if p.is_dir()):
            checkpoints = list(trial.glob("checkpoint_*"))
            if not checkpoints:
                continue
            size = _folder_bytes(trial)
            (finished if any((c / FINAL_REPORT_FILE).is_file() for c in checkpoints) else started).append(size)
    sizes = finished or started
    return max(sizes) if sizes else None


def trials_left(plan: SweepPlan) -> int:
    exp = plan.experiment
    planned = exp.reproductions_planned()
    if not plan.reproduce_only:
        planned += sum(exp.trial_budget().values())
    try:
        done = len(plan.store.trials())
    except Exception:  # noqa: BLE001 - an unreadable table: count every trial as left
        done = 0
    return max(planned - done, 0)


def disk_full_error(plan: SweepPlan, error: BaseException) -> DiskFullError:
    """One line: the full path, its free space, what the sweep still needs, the fix."""
    root = plan.store.root
    name = getattr(error, "filename", None)
    where = str(name) if isinstance(name, str) and name else root
    if is_uri(where):
        free_text = "no room left"
    else:
        try:
            free_text = f"{human_bytes(shutil.disk_usage(_existing(Path(where))).free)} free"
        except OSError:
            free_text = "no room left"
    left = trials_left(plan)
    per_trial = None if is_uri(root) else trial_bytes(plan)
    if per_trial is None:
        need = f"{left} trials left"
    else:
        need = (f"about {human_bytes(per_trial * left)} for its {left} trials left "
                f"({human_bytes(per_trial)} per finished trial folder)")
    resume = plan.resume_command()
    copy = "" if is_uri(root) else (f", or copy {Path(root).parent} to a larger disk "
                                     f"(`cp -a {Path(root).parent} NEW`) and continue with --storage NEW")
    return DiskFullError(
        f"disk full: {where} has {free_text}; the sweep stopped and still needs {need}; "
        f"what it wrote is kept. Free space there and continue with `{resume}`{copy}"
    )
