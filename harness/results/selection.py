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
from dataclasses import dataclass

import pandas as pd

from harness.results.contract import (
    COL_COMPARE_VALUE,
    COL_ERROR,
    COL_PHASE,
    COL_STATUS,
    COL_TRIAL_ID,
    PHASE_REPRODUCTION,
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


@dataclass(frozen=True)
class MissingValue:
    """A compared value without a completed reproduction, and why."""

    value: str | None  # None: the experiment has no compare axis
    reason: str  # the first failure's one-line reason (the error column), or what its rows show


def values_without_reproduction(trials: pd.DataFrame, values: Sequence[str | None],
                                metric: str | None = None) -> list[MissingValue]:
    """The compared ``values`` (in order) that have no completed reproduction row.

    The reason is the error of the value's first failed row (by ``started_at``: the
    search's first failure, else a reproduction's); without one, completed search trials
    without a numeric ``metric`` (nothing to reproduce), else its rows' statuses.
    Used by ``harness sweep`` (exit 1, a line per value) and the report (its top lines).
    """
    out = []
    for value in values:
        if trials.empty:
            out.append(MissingValue(value, "no trial recorded"))
            continue
        cv = trials[COL_COMPARE_VALUE]
        rows = trials[cv.isna()] if value is None else trials[cv.astype(str) == str(value)]
        repro = rows[rows[COL_PHASE] == PHASE_REPRODUCTION]
        if (repro[COL_STATUS] == STATUS_COMPLETED).any():
            continue
        out.append(MissingValue(value, _reason(rows, metric)))
    return out


def _reason(rows: pd.DataFrame, metric: str | None) -> str:
    if rows.empty:
        return "no trial recorded"
    ordered = rows.sort_values([c for c in TIE_BREAK if c in rows.columns], kind="mergesort",
                               na_position="last")
    if COL_ERROR in ordered.columns:
        errors = ordered[COL_ERROR].dropna()
        errors = errors[errors.astype(str).str.strip() != ""]
        if len(errors):
            return str(errors.iloc[0])
    searched = completed_search_trials(rows)
    if metric is not None and len(searched) and (
            metric not in searched.columns or pd.to_numeric(searched[metric], errors="coerce").isna().all()):
        return f"none of its {len(searched)} completed search trials has a value of {metric} to select by"
    parts = []
    for phase in (PHASE_SEARCH, PHASE_REPRODUCTION):
        phase_rows = rows[rows[COL_PHASE] == phase]
        if phase_rows.empty:
            continue
        counts = phase_rows[COL_STATUS].value_counts()
        states = ", ".join(f"{n} {status}" for status, n in counts.items())
        parts.append(f"{len(phase_rows)} {phase} trial{'s' if len(phase_rows) != 1 else ''}: {states}")
    return "; ".join(parts)
