"""The best search trial of each compared value: one definition for the sweep and the report.

The sweep reproduces these trials and the report shows them, so both must pick the same
row. A candidate is a ``search`` row with status ``completed`` and a numeric objective
(missing or non-numeric objectives are not candidates). Ties on the objective go to the
trial that started first (``started_at``), then the smaller ``trial_id``: properties of
the trials themselves, unlike the table's row order, which moves a row to the end each
time it is upserted again (``--resume``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from harness.results_contract import (
    COL_COMPARE_VALUE,
    COL_PHASE,
    COL_STATUS,
    COL_TRIAL_ID,
    PHASE_SEARCH,
    STATUS_COMPLETED,
)

# Tie-break columns, in order; those a table lacks are skipped.
TIE_BREAK: tuple[str, ...] = ("started_at", COL_TRIAL_ID)
_RANK = "__best_trial_rank"


def completed_search_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The search phase's completed rows of a trials table: the candidates."""
    return trials[(trials[COL_PHASE] == PHASE_SEARCH) & (trials[COL_STATUS] == STATUS_COMPLETED)]


def best_trials(trials: pd.DataFrame, metric: str, mode: str, by: str | None = COL_COMPARE_VALUE,
                tie_break: Sequence[str] = TIE_BREAK) -> pd.DataFrame:
    """The best completed search row per distinct ``by`` value, by ``metric``.

    ``mode`` is ``"max"`` or ``"min"``. ``by=None`` picks one best row over all rows;
    otherwise a missing ``by`` value (None/NaN) is a group of its own. Ties on the
    objective are broken by the ``tie_break`` columns the table has (missing values
    last), then by row order; ``tie_break=()`` keeps the table's row order alone.
    Returns the chosen rows unchanged (same columns and index), ordered by ``by``
    (missing last); empty when there is no candidate or ``metric`` is not a column.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    if trials.empty or metric not in trials.columns:
        return trials.iloc[0:0]
    rows = completed_search_trials(trials)
    value = pd.to_numeric(rows[metric], errors="coerce")
    rows = rows.assign(**{_RANK: value if mode == "min" else -value})[value.notna()]
    keys = [_RANK, *(c for c in tie_break if c in rows.columns)]
    ranked = rows.sort_values(keys, kind="mergesort", na_position="last")  # stable: row order last
    if by is None:
        best = ranked.iloc[:1]
    else:
        best = ranked.drop_duplicates(subset=[by], keep="first")
        best = best.sort_values(by, kind="mergesort", na_position="last")
    return best.drop(columns=[_RANK])
