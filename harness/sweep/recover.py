"""Damaged results tables: checked before a resumed sweep runs, rebuilt from Tune's state.

Every row of ``trials.parquet`` and ``epochs.parquet`` is derived from what Ray Tune
keeps of the sweep under ``<experiment>/tune/<phase>/`` (each trial's config in its
``params.json``, every reported result in ``result.json``, its status in the experiment
state). So a truncated or otherwise unreadable table is set aside (renamed to
``<name>.damaged-<UTC time>``, never deleted) and written again from that state before
any trial runs; trials that had not finished are simply run by the resume.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ray import tune
from ray.tune.experiment import Trial

from harness.utils.clock import utc_stamp
from harness.errors import ResultsError
from harness.sweep.recorder import trial_error_reason
from harness.sweep.results import EPOCHS, TRIALS, ResultsStore
from harness.results.trial_spec import spec_of


def damaged_tables(store: ResultsStore) -> dict[str, str]:
    """``{table name: one-line reason}`` for every table that exists but cannot be read."""
    damaged = {}
    for name in (TRIALS, EPOCHS):
        if not store.exists(name):
            continue
        try:
            store.read_table(name)
        except ResultsError as e:
            damaged[name] = str(e)
    return damaged


def set_aside(store: ResultsStore, name: str) -> str:
    """Rename a damaged table out of the way (kept for inspection); -> its new name."""
    stamp = utc_stamp()
    new = f"{name}.damaged-{stamp}"
    store.rename(name, new)
    return new


def tune_trials(path: str) -> list[Any]:
    """The trials Tune recorded under one phase folder (none when there is no state)."""
    if not tune.Tuner.can_restore(path):
        return []
    return list(tune.ExperimentAnalysis(path).trials)


def _results_history(trial) -> list[dict[str, Any]]:
    """Every result the trial reported (its ``result.json``, one JSON object a line)."""
    fs = trial.storage.storage_filesystem
    path = f"{trial.storage.trial_fs_path}/result.json"
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode(errors="replace")
    except (OSError, FileNotFoundError):
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash mid-write
    return out


def rebuild_tables(store: ResultsStore, phase_dirs: list[str],
                   make_recorder: Callable[[], Any]) -> int:
    """Write the rows of every finished trial found under ``phase_dirs``; -> rows written."""
    recorder = make_recorder()
    written = 0
    for path in phase_dirs:
        for trial in tune_trials(path):
            spec = spec_of(trial.config)
            if not spec or trial.status not in (Trial.TERMINATED, Trial.ERROR):
                continue
            history = _results_history(trial)
            for r in history:
                recorder.buffer_epoch(trial.trial_id, r)
            last = trial.last_result or (history[-1] if history else None)
            error = trial.status == Trial.ERROR
            recorder.record(spec, trial.trial_id, last, error=error,
                            reason=trial_error_reason(trial) if error else None,
                            checkpoint=trial.checkpoint)
            written += 1
    return written
