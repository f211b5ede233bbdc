"""Published numbers (space.json's ``reference`` section) beside the reproduced ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from harness.results.contract import COL_EXPERIMENT, COL_METHOD
from harness.reports.statistics import summarize
from harness.reports.tables import METRICS, method_sort_key, setting_sort_key

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults
    from harness.reports.statistics import Summary


@dataclass
class ReferenceRow:
    """A published number beside the reproduced one (both in the report's units)."""

    setting: str
    method: str
    metric: str  # display name
    reference_mean: float
    reference_std: float | None
    ours: Summary | None  # None: the method was not run (or has no completed reproduction)

    @property
    def difference(self) -> float | None:
        """Ours minus the reference (mean against mean)."""
        return None if self.ours is None or self.ours.n == 0 else self.ours.mean - self.reference_mean

    @property
    def inside(self) -> bool | None:
        """Whether the reference mean lies in our confidence interval (None: no interval)."""
        if self.ours is None or self.ours.ci_low is None:
            return None
        return self.ours.ci_low <= self.reference_mean <= self.ours.ci_high


@dataclass
class ReferenceTable:
    experiment: str
    source: str
    note: str
    rows: list[ReferenceRow]

    @property
    def n_inside(self) -> int:
        return sum(r.inside is True for r in self.rows)

    @property
    def n_tested(self) -> int:
        return sum(r.inside is not None for r in self.rows)


def reference_tables(experiments: list[ExperimentResults], best: pd.DataFrame, scale: float) -> list[ReferenceTable]:
    """One table per experiment whose space.json carries a ``reference`` section.

    References are in percent (as papers print them); our metrics are converted to the
    report's unit first, so a report in raw metric units divides the references by 100.
    """
    tables = []
    for exp in experiments:
        ref = (exp.space or {}).get("reference")
        if not ref or not ref.get("values"):
            continue
        ref_scale = scale / 100.0
        rows_exp = best[best[COL_EXPERIMENT] == exp.name] if not best.empty else best
        settings = sorted(rows_exp["setting"].unique(), key=setting_sort_key) if not rows_exp.empty else [""]
        rows = []
        for metric_col, methods in ref["values"].items():
            name = METRICS.get(metric_col, metric_col)
            for method in sorted(methods, key=method_sort_key):
                value = methods[method]
                for setting in settings:
                    ours = None
                    if not rows_exp.empty and metric_col in rows_exp.columns:
                        sel = rows_exp[(rows_exp["setting"] == setting) & (rows_exp[COL_METHOD] == method)]
                        vals = pd.to_numeric(sel[metric_col], errors="coerce").dropna() * scale
                        ours = summarize(vals) if len(vals) else None
                    std = value.get("std")
                    rows.append(ReferenceRow(setting, method, name, float(value["mean"]) * ref_scale,
                                             None if std is None else float(std) * ref_scale, ours))
        tables.append(ReferenceTable(exp.name, str(ref.get("source", "")), str(ref.get("note") or ""), rows))
    return tables
