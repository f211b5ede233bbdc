"""`harness list`'s run counts equal what a sweep of each shipped experiment schedules.

The search count is the number of trials the sweep's searcher hands to Tune (run
here without Ray, until it says it is finished); the reproduction count is the number
of trial specs the reproduction phase builds from those search trials completed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from harness.results.contract import (
    COL_COMPARE_VALUE,
    COL_PHASE,
    COL_STATUS,
    COL_TRIAL_ID,
    PHASE_SEARCH,
    STATUS_COMPLETED,
)
from harness.sweep.experiment import builtin_names, load_experiment
from harness.sweep.reproduce import reproduction_specs
from harness.sweep.searcher import create_compare_searcher

# "24 + 18 repro", or "24 x 3 runs + 18 repro" for a search.objective of 3 runs a trial
LIST_ROW = re.compile(r"^[│|]\s*(\S+)\s*[│|].*?[│|]\s*(\d+)(?: x (\d+) runs)? \+ (\d+) repro\s*[│|]", re.M)


@functools.cache
def listed_counts() -> dict[str, tuple[int, int]]:
    """(search trials, training runs per search trial, reproduction runs) per experiment,
    as `harness list` prints them."""
    proc = subprocess.run([sys.executable, "-c", "from harness.cli import main; main()", "list"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    return {m[1]: (int(m[2]), int(m[3] or 1), int(m[4])) for m in LIST_ROW.finditer(proc.stdout)}


def scheduled_counts(name: str) -> tuple[int, int]:
    """Drive the sweep's own searcher to its end, then plan the reproductions of its
    trials (every trial completed, a distinct objective each)."""
    exp = load_experiment(name)
    searcher = create_compare_searcher(exp, optuna_storage=None)
    rows = []
    for i in range(10_000):
        trial_id = f"search-{i:05d}"
        config = searcher.suggest(trial_id)
        if config == searcher.FINISHED:
            break
        assert config is not None, f"{name}: the searcher stalled at trial {i}"
        spec = config["spec"]
        searcher.on_trial_complete(trial_id, {"objective": float(i), exp.search.metric: float(i)})
        rows.append({COL_TRIAL_ID: trial_id, COL_PHASE: PHASE_SEARCH, COL_STATUS: STATUS_COMPLETED,
                     COL_COMPARE_VALUE: spec["compare_value"], exp.search.metric: float(i),
                     "params": json.dumps(spec["params"])})
    return len(rows), exp.search.objective.runs, len(reproduction_specs(exp, pd.DataFrame(rows)))


def test_list_shows_every_shipped_experiment():
    assert sorted(listed_counts()) == builtin_names()


@pytest.mark.parametrize("name", builtin_names())
def test_list_counts_are_what_the_sweep_schedules(name):
    listed = listed_counts()[name]
    assert listed == scheduled_counts(name), f"{name}: listed (search, runs per trial, reproductions)"
