"""Which runs the reproduction phase schedules, from the search phase's trials table.

:func:`best_search_trials` picks each compared value's best completed search trial;
:func:`reproduction_specs` turns the configurations to reproduce (the best ones, or
with ``search.reproduce: all`` every distinct search configuration) into one trial
spec per reproduction seed. No Ray: the reproduction phase hands the specs to Tune.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.results.selection import best_trials, completed_search_trials
from harness.results.contract import (
    COL_COMPARE_VALUE,
    COL_TRIAL_ID,
    PHASE_REPRODUCTION,
)
from harness.results.trial_spec import TrialSpec, reproduction_spec

if TYPE_CHECKING:
    from harness.sweep.experiment import Experiment


def best_search_trials(exp: Experiment, trials: pd.DataFrame) -> dict[str | None, dict[str, Any]]:
    """The best completed search trial of every compared value, by the experiment's
    metric and mode (its trials-table row as a dict; a value with none is left out).
    The selection is :func:`harness.results.selection.best_trials`, the report's too."""
    by = None if exp.compare_labels == [None] else COL_COMPARE_VALUE
    best = best_trials(trials, exp.search.metric, exp.search.mode, by=by)
    out: dict[str | None, dict[str, Any]] = {}
    for label in exp.compare_labels:
        rows = best if label is None else best[best[COL_COMPARE_VALUE] == label]
        if not rows.empty:
            out[label] = rows.iloc[0].to_dict()
    return out


def _slug(label: str | None) -> str:
    return "all" if label is None else "".join(c if c.isalnum() or c in "+-." else "_" for c in label)


def configurations_to_reproduce(exp: Experiment, trials: pd.DataFrame
                                ) -> list[tuple[str | None, dict[str, Any], bool]]:
    """(compared value, search row, is the value's best) for every configuration to
    reproduce: the best of each value, or with ``search.reproduce: all`` every completed
    search configuration (each distinct parameter set once)."""
    best = best_search_trials(exp, trials)
    if exp.search.reproduce == "best":
        return [(label, row, True) for label, row in best.items()]
    df = completed_search_trials(trials)
    out = []
    for label, best_row in best.items():
        rows = df[df[COL_COMPARE_VALUE] == label] if label is not None else df
        seen: set[str] = set()
        for row in rows.sort_values(COL_TRIAL_ID).to_dict("records"):
            key = row.get("params") or "{}"
            if key in seen:
                continue
            seen.add(key)
            out.append((label, row, row[COL_TRIAL_ID] == best_row[COL_TRIAL_ID]))
    return out


def reproduction_specs(exp: Experiment, trials: pd.DataFrame) -> list[TrialSpec]:
    """The trial specs of the reproduction phase: every configuration to reproduce on
    every reproduction seed (:meth:`Experiment.reproductions_planned` counts them
    before the search has run)."""
    specs = []
    for label, row, is_best in configurations_to_reproduce(exp, trials):
        params = json.loads(row.get("params") or "{}")
        overrides = {**exp.compare_overrides(label), **params}
        # ids stay stable across --resume: the parameter set names the configuration
        config_tag = "" if exp.search.reproduce == "best" else "-" + hashlib.sha1(
            json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        for seed in exp.search.reproduction_seeds:
            specs.append(reproduction_spec(
                label, overrides, params, seed, best_config=is_best,
                trial_id=f"{PHASE_REPRODUCTION}-{_slug(label)}{config_tag}-seed{seed}",
                source_trial=row[COL_TRIAL_ID]))
    return specs
