"""harness.results.selection: the one best-trial selection the sweep and the report share."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.results.selection import best_trials


def _row(trial_id, value, compare_value="a", *, phase="search", status="completed", started_at=None):
    return {"trial_id": trial_id, "phase": phase, "status": status, "compare_value": compare_value,
            "val.recall@1": value, "started_at": started_at}


def _ids(df: pd.DataFrame) -> list[str]:
    return df["trial_id"].tolist()


def test_best_per_compare_value_in_max_and_min_mode():
    t = pd.DataFrame([_row("s1", 0.5, "a"), _row("s2", 0.7, "a"), _row("s3", 0.2, "b"),
                      _row("s4", 0.9, "b"), _row("s5", 0.1, None)])
    assert _ids(best_trials(t, "val.recall@1", "max")) == ["s2", "s4", "s5"]
    assert _ids(best_trials(t, "val.recall@1", "min")) == ["s1", "s3", "s5"]
    assert _ids(best_trials(t, "val.recall@1", "max", by=None)) == ["s4"]
    assert _ids(best_trials(t, "val.recall@1", "min", by=None)) == ["s5"]
    # The chosen rows come back unchanged, with their index.
    best = best_trials(t, "val.recall@1", "max")
    assert list(best.columns) == list(t.columns) and best.index.tolist() == [1, 3, 4]


def test_ties_go_to_the_earliest_start_then_the_smaller_trial_id():
    t = pd.DataFrame([
        _row("s3", 0.8, started_at="2026-01-01T00:00:03"),
        _row("s2", 0.8, started_at="2026-01-01T00:00:01"),  # started first: wins
        _row("s1", 0.8, started_at="2026-01-01T00:00:02"),
        _row("s0", 0.5, started_at="2026-01-01T00:00:00"),
    ])
    assert _ids(best_trials(t, "val.recall@1", "max")) == ["s2"]
    same_start = t.assign(started_at="2026-01-01T00:00:00")
    assert _ids(best_trials(same_start, "val.recall@1", "max")) == ["s1"]
    # A missing start time sorts last; without the column, trial_id alone decides.
    t.loc[1, "started_at"] = None
    assert _ids(best_trials(t, "val.recall@1", "max")) == ["s1"]
    assert _ids(best_trials(t.drop(columns=["started_at"]), "val.recall@1", "max")) == ["s1"]
    # tie_break=() keeps the table's row order (the order rows were written in).
    assert _ids(best_trials(t, "val.recall@1", "max", tie_break=())) == ["s3"]
    # Min mode breaks ties the same way: s0 started first, s2 (no start time) is last.
    low = t.assign(**{"val.recall@1": 0.1})
    assert _ids(best_trials(low, "val.recall@1", "min")) == ["s0"]


def test_nan_and_non_numeric_objectives_are_not_candidates():
    t = pd.DataFrame([_row("s1", math.nan), _row("s2", 0.3), _row("s3", None), _row("s4", "n/a"),
                      _row("s5", math.nan, "b")])
    assert _ids(best_trials(t, "val.recall@1", "max")) == ["s2"]
    assert _ids(best_trials(t, "val.recall@1", "min")) == ["s2"]


def test_only_completed_search_rows_count():
    t = pd.DataFrame([
        _row("s1", 0.99, status="failed"),
        _row("s2", 0.98, status="diverged"),
        _row("s3", 0.97, status="stopped"),
        _row("r1", 0.96, phase="reproduction"),
        _row("s4", 0.40),
    ])
    assert _ids(best_trials(t, "val.recall@1", "max")) == ["s4"]
    assert best_trials(t[t["status"] != "completed"], "val.recall@1", "max").empty


def test_no_candidates_and_bad_mode():
    t = pd.DataFrame([_row("s1", 0.5)])
    assert best_trials(t, "val.map@r", "max").empty  # the metric is not a column
    assert best_trials(t.iloc[0:0], "val.recall@1", "max").empty
    with pytest.raises(ValueError, match="mode"):
        best_trials(t, "val.recall@1", "maximize")
