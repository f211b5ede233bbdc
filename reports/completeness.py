"""What a sweep planned (space.json) against what its results tables hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from harness.results.contract import (
    COL_COMPARE_VALUE,
    COL_PHASE,
    COL_SEED,
    COL_STATUS,
    COL_TRIAL_ID,
    PHASE_REPRODUCTION,
    PHASE_SEARCH,
    STATUS_COMPLETED,
)
from harness.reports.search_analysis import compare_values, plain_value

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults


@dataclass
class Progress:
    experiment: str
    search_done: int
    search_planned: int | None
    repro_done: int
    repro_planned: int | None
    missing: list[str] = field(default_factory=list)  # planned trials without a row
    unfinished: list[dict[str, str]] = field(default_factory=list)  # rows not completed
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unfinished and not self.notes


def progress(exp: ExperimentResults) -> Progress:
    """What the sweep planned (space.json) against what the tables hold.

    ``trials_planned`` counts all search trials, ``trials_per_value`` (when present)
    splits them per compare value; reproductions are ``reproduction_seeds × compare_values``
    (docs/architecture.md, "Results tables").
    """
    t = exp.trials
    search = t[t[COL_PHASE] == PHASE_SEARCH]
    repro = t[t[COL_PHASE] == PHASE_REPRODUCTION]
    done = repro[repro[COL_STATUS] == STATUS_COMPLETED]
    p = Progress(exp.name, len(search), None, len(done), None)
    for _, row in t[t[COL_STATUS] != STATUS_COMPLETED].iterrows():
        # Keys: the field names the templates show (they match the columns today).
        p.unfinished.append({"trial_id": str(row[COL_TRIAL_ID]), "phase": str(row[COL_PHASE]),
                             "status": str(row[COL_STATUS]),
                             "compare_value": "" if row[COL_COMPARE_VALUE] is None else str(row[COL_COMPARE_VALUE]),
                             "seed": "" if pd.isna(row.get(COL_SEED)) else str(plain_value(row.get(COL_SEED)))})
    if exp.space is None:
        p.notes.append("space.json is missing, so the planned trials are unknown")
        return p
    cvs = compare_values(exp)
    per_value = exp.space.get("trials_per_value") or {}
    planned = exp.space.get("trials_planned")
    if per_value or planned is not None:
        p.search_planned = int(planned) if planned is not None else int(sum(per_value.values()))
        for cv in cvs:
            # Without a per-value budget the total is shared equally (as the sweep does).
            want = per_value.get(str(cv)) if per_value else p.search_planned // len(cvs)
            if want is None:
                continue
            have = int((search[COL_COMPARE_VALUE] == cv).sum()) if cv is not None else int(search[COL_COMPARE_VALUE].isna().sum())
            if have < int(want):
                where = f" for {exp.compare_key}={cv}" if cv is not None else ""
                p.missing.append(f"{int(want) - have} of {int(want)} search trials{where}")
    seeds = exp.space.get("reproduction_seeds") or []
    p.repro_planned = int(exp.space.get("reproductions_planned") or len(seeds) * len(cvs))
    have_pairs = {(None if pd.isna(cv) else str(cv), int(s)) for cv, s in zip(repro[COL_COMPARE_VALUE], repro[COL_SEED])
                  if not pd.isna(s)}
    for cv in cvs:
        for s in seeds:
            if (cv, int(s)) not in have_pairs:
                where = f"{exp.compare_key}={cv}, " if cv is not None else ""
                p.missing.append(f"reproduction {where}seed {s}")
    if exp.space.get("reproduce") == "all" and len(repro) < p.repro_planned:
        p.missing.append(f"{p.repro_planned - len(repro)} of {p.repro_planned} reproductions "
                         "(every searched configuration on every seed)")
    return p
