"""Tables printed by ``harness sweep`` (the reproductions' summary) and ``harness list``.

Formatting only: the numbers come from the results tables and from the experiment's
own planning (:meth:`Experiment.trial_budget`, :meth:`Experiment.reproductions_planned`),
the same code the sweep uses to schedule its runs.
"""

from __future__ import annotations

import math

from rich.table import Table

from harness.results.contract import COL_COMPARE_VALUE, COL_PHASE, PHASE_REPRODUCTION
from harness.sweep.experiment import Experiment, builtin_names, load_experiment
from harness.sweep.results import ResultsStore


def summary_table(store: ResultsStore, metric: str) -> list[tuple[str, int, float, float]]:
    """Per compared value: reproductions, mean and std of the test metric."""
    df = store.trials()
    if df.empty:
        return []
    df = df[df[COL_PHASE] == PHASE_REPRODUCTION]
    col = "test." + metric.removeprefix("val.")
    if col not in df.columns:
        return []
    out = []
    for label, rows in df.groupby(df[COL_COMPARE_VALUE].fillna("(all)")):
        vals = rows[col].dropna()
        std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        out.append((str(label), len(vals), float(vals.mean()) if len(vals) else math.nan, std))
    return out


def reproductions_table(experiment: str, store: ResultsStore, metric: str) -> Table:
    """``harness sweep``'s closing table: the reproductions' test metric per value."""
    table = Table(title=f"{experiment}: reproductions (test split)", title_justify="left")
    for col in ("compared value", "runs", f"test.{metric.removeprefix('val.')} mean", "std"):
        table.add_column(col, justify="left" if col == "compared value" else "right")
    for label, n, mean, std in summary_table(store, metric):
        table.add_row(label, str(n), f"{mean:.4f}", "" if math.isnan(std) else f"{std:.4f}")
    return table


def run_counts(exp: Experiment) -> str:
    """``harness list``'s runs column: planned search trials (times the runs that
    search.objective's folds and seeds give each) + reproduction runs."""
    trials = sum(exp.trial_budget().values())
    runs = exp.search.objective.runs
    search = f"{trials}" if runs == 1 else f"{trials} x {runs} runs"
    return f"{search} + {exp.reproductions_planned()} repro"


def experiments_table() -> Table:
    """``harness list``: the experiments shipped in search_spaces/."""
    table = Table(title="experiments (search_spaces/)", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("dataset", no_wrap=True)
    for col in ("methods compared", "trials", "description"):
        table.add_column(col, overflow="fold")
    for name in builtin_names():
        exp = load_experiment(name)
        table.add_row(name, exp.dataset(), ", ".join(exp.methods()), run_counts(exp),
                      exp.description)
    return table
