"""The paper-style comparison tables: which rows they compare, their cells and ranking.

Methods × (dataset, metric) per compare setting, mean ± std over the reproduction
seeds, the best (and second best) cell marked, and Welch's t-test of the best method
against each other one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.results.contract import (
    COL_COMPARE_VALUE,
    COL_EXPERIMENT,
    COL_METHOD,
    COL_PHASE,
    COL_STATUS,
    MEMORY_KINDS,
    METHOD_COMPARE_KEYS,
    PHASE_REPRODUCTION,
    STATUS_COMPLETED,
    TEST_METRICS,
    split_method,
)
from harness.reports.statistics import summarize, welch

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults
    from harness.reports.statistics import Comparison, Summary

# Test metrics of the summary table, in the AXBN paper's order (Tables 1 and 2).
METRICS: dict[str, str] = TEST_METRICS


def setting_label(compare_key: str | None, compare_value: str | None) -> str:
    """The compare setting a row belongs to, "" when the method column already says it."""
    if not compare_key or compare_key in METHOD_COMPARE_KEYS or compare_value is None:
        return ""
    return f"{compare_key}={compare_value}"


def value_sort_key(v: str) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def setting_sort_key(setting: str) -> tuple:
    """"" first, then by key, numbers in numeric order (batch size 32 before 128)."""
    key, _, value = setting.partition("=")
    return (key, *value_sort_key(value))


def is_fraction_scale(df: pd.DataFrame, columns: list[str]) -> bool:
    """Metrics in [0, 1] are shown in percent, like the papers."""
    vals = pd.concat([pd.to_numeric(df[c], errors="coerce") for c in columns]).dropna()
    return bool(len(vals)) and bool(((vals >= 0) & (vals <= 1)).all())


def best_reproductions(repro: pd.DataFrame) -> pd.DataFrame:
    """The reproductions of each compared value's best configuration: the rows summary
    tables compare (a sweep with ``search.reproduce: all`` reproduces the others too)."""
    if "best_config" not in repro.columns:
        return repro
    return repro[repro["best_config"].map(lambda v: v is not False and v != 0)]


def reproductions(experiments: list[ExperimentResults]) -> pd.DataFrame:
    """Completed reproduction rows of all experiments, with ``dataset``, ``setting``, ``label``."""
    frames = []
    for exp in experiments:
        t = exp.trials
        rows = t[(t[COL_PHASE] == PHASE_REPRODUCTION) & (t[COL_STATUS] == STATUS_COMPLETED)].copy()
        if rows.empty:
            continue
        rows[COL_EXPERIMENT] = exp.name
        if "config.data.name" in rows:
            rows["dataset"] = rows["config.data.name"].fillna(exp.name).astype(str)
        else:
            rows["dataset"] = exp.name
        key = exp.compare_key
        rows["setting"] = [setting_label(key, v) for v in rows[COL_COMPARE_VALUE]]
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=[COL_EXPERIMENT, "dataset", "setting", COL_METHOD, "label"])
    df = pd.concat(frames, ignore_index=True)
    # A method that appears in two experiments of the same dataset and setting
    # gets the experiment name, so both rows stay apart.
    n_exp = df.groupby(["dataset", "setting", COL_METHOD])[COL_EXPERIMENT].transform("nunique")
    df["label"] = np.where(n_exp > 1, df[COL_METHOD] + " (" + df[COL_EXPERIMENT] + ")", df[COL_METHOD])
    return df


@dataclass
class Cell:
    summary: Summary
    rank: int | None  # 1 best, 2 second best (bold / underlined), None otherwise


@dataclass
class Column:
    dataset: str
    metric_col: str
    metric: str  # display name

    def header(self, several_datasets: bool) -> str:
        return f"{self.dataset} {self.metric}" if several_datasets else self.metric


@dataclass
class SummaryTable:
    setting: str
    columns: list[Column]
    rows: list[tuple[str, list[Cell | None]]]  # (method label, one cell per column)
    comparisons: list[Comparison]
    winners: dict[str, list[str]]  # column header -> best method label(s)
    several_datasets: bool

    @property
    def primary_comparisons(self) -> list[Comparison]:
        """Comparisons on the first metric column (Recall@1): shown in full."""
        first = self.columns[0].metric if self.columns else None
        return [c for c in self.comparisons if c.metric.split(" on ")[0] == first]

    @property
    def other_comparisons(self) -> list[Comparison]:
        primary = set(map(id, self.primary_comparisons))
        return [c for c in self.comparisons if id(c) not in primary]

    @property
    def winner_groups(self) -> list[tuple[list[str], list[str]]]:
        """(best label(s), the column headers they win), in column order."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for header, labels in self.winners.items():
            groups.setdefault(tuple(labels), []).append(header)
        return [(list(labels), headers) for labels, headers in groups.items()]


# Row order of the AXBN paper's tables: no memory, XBM, XBM*, XBN, AXBN; "+xml" after its base.
METHOD_ORDER = MEMORY_KINDS


def method_sort_key(label: str) -> tuple:
    method, _, rest = label.partition(" (")
    kind, xml = split_method(method)
    rank = METHOD_ORDER.index(kind) if kind in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, kind, xml, rest)


def _rank(cells: list[Cell | None]) -> None:
    means = sorted({c.summary.mean for c in cells if c is not None and not math.isnan(c.summary.mean)},
                   reverse=True)
    for c in cells:
        if c is None or not means:
            continue
        if c.summary.mean == means[0]:
            c.rank = 1
        elif len(means) > 2 and c.summary.mean == means[1]:  # "second" only among 3+
            c.rank = 2


def summary_tables(repro: pd.DataFrame, scale: float) -> list[SummaryTable]:
    """One paper-style table per compare setting: methods × (dataset, metric), mean ± std."""
    metric_cols = [m for m in METRICS if m in repro.columns and repro[m].notna().any()]
    tables = []
    for setting in sorted(repro["setting"].unique(), key=setting_sort_key):
        part = repro[repro["setting"] == setting]
        datasets = sorted(part["dataset"].unique())
        labels = sorted(part["label"].unique(), key=method_sort_key)
        columns = [Column(d, m, METRICS[m]) for d in datasets for m in metric_cols
                   if part.loc[part["dataset"] == d, m].notna().any()]
        grid: dict[str, list[Cell | None]] = {lab: [] for lab in labels}
        comparisons: list[Comparison] = []
        winners: dict[str, list[str]] = {}
        for col in columns:
            sub = part[part["dataset"] == col.dataset]
            values = {lab: pd.to_numeric(g[col.metric_col], errors="coerce").dropna() * scale
                      for lab, g in sub.groupby("label")}
            cells = []
            for lab in labels:
                v = values.get(lab)
                cell = Cell(summarize(v), None) if v is not None and len(v) else None
                grid[lab].append(cell)
                cells.append(cell)
            _rank(cells)
            ranked = [(lab, c) for lab, c in zip(labels, cells) if c is not None]
            if not ranked:
                continue
            best_mean = max(c.summary.mean for _, c in ranked)
            best = [lab for lab, c in ranked if c.summary.mean == best_mean]
            winners[col.header(len(datasets) > 1)] = best
            name = col.metric if len(datasets) == 1 else f"{col.metric} on {col.dataset}"
            for lab, _ in ranked:
                if lab != best[0]:
                    comparisons.append(welch(best[0], values[best[0]], lab, values[lab], name))
        rows = [(lab, grid[lab]) for lab in labels]
        tables.append(SummaryTable(setting, columns, rows, comparisons, winners, len(datasets) > 1))
    return tables
