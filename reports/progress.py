"""What a sweep planned (space.json) against what its results tables hold."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from reports.load import ExperimentResults
from reports.search_analysis import compare_values, plain_value


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
    search = t[t["phase"] == "search"]
    repro = t[t["phase"] == "reproduction"]
    done = repro[repro["status"] == "completed"]
    p = Progress(exp.name, len(search), None, len(done), None)
    for _, row in t[t["status"] != "completed"].iterrows():
        p.unfinished.append({"trial_id": str(row["trial_id"]), "phase": str(row["phase"]),
                             "status": str(row["status"]),
                             "compare_value": "" if row["compare_value"] is None else str(row["compare_value"]),
                             "seed": "" if pd.isna(row.get("seed")) else str(plain_value(row.get("seed")))})
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
            have = int((search["compare_value"] == cv).sum()) if cv is not None else int(search["compare_value"].isna().sum())
            if have < int(want):
                where = f" for {exp.compare_key}={cv}" if cv is not None else ""
                p.missing.append(f"{int(want) - have} of {int(want)} search trials{where}")
    seeds = exp.space.get("reproduction_seeds") or []
    p.repro_planned = int(exp.space.get("reproductions_planned") or len(seeds) * len(cvs))
    have_pairs = {(None if pd.isna(cv) else str(cv), int(s)) for cv, s in zip(repro["compare_value"], repro["seed"])
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
