"""Aggregation over seeds, confidence intervals, Welch's t-test, best trials, fANOVA importance.

Everything here works on the tables of :mod:`reports.load` and returns plain data for the
templates; nothing formats HTML or Markdown.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from scipy import stats as sps

from harness.results_contract import MEMORY_KINDS
from reports.load import ExperimentResults

# Test metrics of the summary table, in the AXBN paper's order (Tables 1 and 2).
METRICS: dict[str, str] = {
    "test.recall@1": "Recall@1",
    "test.recall@10": "Recall@10",
    "test.map@r": "MAP@R",
    "test.r_precision": "R-Precision",
}
ALPHA = 0.05
CONFIDENCE = 0.95
# Compare axes that the ``method`` column already spells out (memory kind, "+xml").
METHOD_KEYS = {"method", "memory.kind", "xml.enabled"}


# --------------------------------------------------------------------------- seeds


@dataclass
class Summary:
    """Mean, sample std (ddof=1) and a t-distribution confidence interval over seeds."""

    n: int
    mean: float
    std: float | None  # None for a single seed
    ci_low: float | None
    ci_high: float | None


def summarize(values: Any, confidence: float = CONFIDENCE) -> Summary:
    x = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, None, None, None)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(n, mean, 0.0, mean, mean)
    low, high = sps.t.interval(confidence, df=n - 1, loc=mean, scale=sps.sem(x))
    return Summary(n, mean, std, float(low), float(high))


@dataclass
class Comparison:
    """The best method against another one on one metric, over the seeds."""

    best: str
    other: str
    metric: str
    diff: float  # mean(best) - mean(other), in the table's units
    n_best: int
    n_other: int
    p: float | None  # None: not testable
    reason: str | None = None  # why it is not testable

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    @property
    def sentence(self) -> str:
        head = f"{self.best} vs {self.other}: {self.diff:+.2f} {self.metric}"
        if self.p is None:
            return f"{head}, not testable ({self.reason})"
        p = "p < 0.001" if self.p < 0.001 else f"p = {self.p:.3f}"
        verdict = "significant" if self.significant else "not significant"
        return (
            f"{head}, {p}, {verdict} at {ALPHA:.0%} "
            f"(Welch's t-test, {self.n_best} vs {self.n_other} seeds)"
        )


def welch(best: str, a: Any, other: str, b: Any, metric: str) -> Comparison:
    """Welch's t-test (unequal variances) of ``a`` (the best) against ``b``."""
    a = np.asarray(pd.Series(a, dtype=float).dropna(), dtype=float)
    b = np.asarray(pd.Series(b, dtype=float).dropna(), dtype=float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    cmp = Comparison(best, other, metric, diff, len(a), len(b), None)
    short = [name for name, x in ((best, a), (other, b)) if len(x) < 2]
    if short:
        counts = " and ".join(f"{len(x)} seed{'s' if len(x) != 1 else ''} for {name}"
                              for name, x in ((best, a), (other, b)) if name in short)
        cmp.reason = f"{counts}; Welch's t-test needs at least 2 seeds per method"
        return cmp
    if a.std(ddof=1) == 0.0 and b.std(ddof=1) == 0.0:
        cmp.reason = "every seed gave the same value for both methods (zero variance)"
        return cmp
    with warnings.catch_warnings():  # scipy warns about nearly constant samples; p is still defined
        warnings.simplefilter("ignore", RuntimeWarning)
        cmp.p = float(sps.ttest_ind(a, b, equal_var=False).pvalue)
    return cmp


# --------------------------------------------------------------------------- summary tables


def setting_label(compare_key: str | None, compare_value: str | None) -> str:
    """The compare setting a row belongs to, "" when the method column already says it."""
    if not compare_key or compare_key in METHOD_KEYS or compare_value is None:
        return ""
    return f"{compare_key}={compare_value}"


def _sort_value(v: str) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def setting_sort_key(setting: str) -> tuple:
    """"" first, then by key, numbers in numeric order (batch size 32 before 128)."""
    key, _, value = setting.partition("=")
    return (key, *_sort_value(value))


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
        rows = t[(t["phase"] == "reproduction") & (t["status"] == "completed")].copy()
        if rows.empty:
            continue
        rows["experiment"] = exp.name
        if "config.data.name" in rows:
            rows["dataset"] = rows["config.data.name"].fillna(exp.name).astype(str)
        else:
            rows["dataset"] = exp.name
        key = exp.compare_key
        rows["setting"] = [setting_label(key, v) for v in rows["compare_value"]]
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=["experiment", "dataset", "setting", "method", "label"])
    df = pd.concat(frames, ignore_index=True)
    # A method that appears in two experiments of the same dataset and setting
    # gets the experiment name, so both rows stay apart.
    n_exp = df.groupby(["dataset", "setting", "method"])["experiment"].transform("nunique")
    df["label"] = np.where(n_exp > 1, df["method"] + " (" + df["experiment"] + ")", df["method"])
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
    kind, xml = method.removesuffix("+xml"), method.endswith("+xml")
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


# --------------------------------------------------------------------------- search phase


def objective(exp: ExperimentResults) -> tuple[str, str]:
    """(column, "max"|"min") of the sweep's objective, from space.json."""
    space = exp.space or {}
    metric = str(space.get("metric") or "val.recall@1")
    if metric not in exp.trials.columns and f"val.{metric}" in exp.trials.columns:
        metric = f"val.{metric}"
    mode = str(space.get("mode") or "max")
    return metric, "min" if mode.startswith("min") else "max"


def search_rows(exp: ExperimentResults, compare_value: str | None = ..., completed: bool = True) -> pd.DataFrame:
    t = exp.trials
    rows = t[t["phase"] == "search"]
    if completed:
        rows = rows[rows["status"] == "completed"]
    if compare_value is not ...:
        rows = rows[rows["compare_value"].isna()] if compare_value is None else rows[rows["compare_value"] == compare_value]
    metric, _ = objective(exp)
    if metric in rows.columns:
        rows = rows[pd.to_numeric(rows[metric], errors="coerce").notna()]
    else:
        rows = rows.iloc[0:0]
    if "started_at" in rows.columns:
        rows = rows.sort_values(["started_at", "trial_id"], kind="stable")
    return rows


def compare_values(exp: ExperimentResults) -> list[str | None]:
    space = exp.space or {}
    values = space.get("compare_values")
    if values:
        return [str(v) for v in values]
    seen = exp.trials["compare_value"].dropna().unique().tolist()
    return sorted(seen, key=_sort_value) if seen else [None]


def param_keys(exp: ExperimentResults) -> list[str]:
    """Searched dotted keys: from space.json, else the config columns that vary in the search."""
    if exp.space and exp.space.get("params"):
        return list(exp.space["params"])
    rows = search_rows(exp)
    cols = [c for c in rows.columns if c.startswith("config.") and c != "config.seed"]
    varying = [c for c in cols if rows[c].astype(str).nunique() > 1]
    return [c.removeprefix("config.") for c in varying]


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _missing(v: Any) -> bool:
    return v is None or (not isinstance(v, (list, dict, str, np.ndarray)) and bool(pd.isna(v)))


def trial_params(row: pd.Series, keys: list[str]) -> dict[str, Any]:
    """The searched values of one trial: the sampled ones from the ``params`` JSON column
    when the sweep wrote it (conditional parameters a trial did not sample are absent),
    else the ``config.<key>`` columns."""
    raw = row.get("params")
    if isinstance(raw, str) and raw:
        try:
            sampled = json.loads(raw)
        except ValueError:
            sampled = None
        if isinstance(sampled, dict):
            return {k: sampled[k] for k in keys if k in sampled and not _missing(sampled[k])}
    out = {}
    for k in keys:
        v = row.get(f"config.{k}")
        if not _missing(v):
            out[k] = _plain(v)
    return out


@dataclass
class BestTrial:
    experiment: str
    compare_value: str | None
    trial_id: str
    value: float
    metric: str
    params: dict[str, Any]
    n_completed: int


def best_trials(exp: ExperimentResults) -> list[BestTrial]:
    metric, mode = objective(exp)
    keys = param_keys(exp)
    out = []
    for cv in compare_values(exp):
        rows = search_rows(exp, cv)
        if rows.empty:
            continue
        vals = pd.to_numeric(rows[metric], errors="coerce")
        best = rows.loc[vals.idxmax() if mode == "max" else vals.idxmin()]
        params = trial_params(best, keys)
        out.append(BestTrial(exp.name, cv, str(best["trial_id"]), float(vals.loc[best.name]),
                             metric, params, len(rows)))
    return out


def distributions(space: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions from space.json's ``params`` section."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, spec in (space.get("params") or {}).items():
        kind = spec.get("type")
        log = bool(spec.get("log") or False)
        step = None if log else spec.get("step")
        if kind == "float":
            out[key] = optuna.distributions.FloatDistribution(
                float(spec["low"]), float(spec["high"]), log=log, step=None if step is None else float(step))
        elif kind == "int":
            out[key] = optuna.distributions.IntDistribution(
                int(spec["low"]), int(spec["high"]), log=log, step=1 if step is None else int(step))
        elif kind == "categorical":
            out[key] = optuna.distributions.CategoricalDistribution(list(spec["choices"]))
    return out


def _param_value(dist: optuna.distributions.BaseDistribution, v: Any) -> Any:
    v = _plain(v)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(v)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return float(v)
    for choice in dist.choices:  # parquet may hold 64 for the choice "64", or the reverse
        if choice == v or str(choice) == str(v):
            return choice
    raise ValueError(f"{v!r} is not one of {dist.choices}")


@dataclass
class Importance:
    experiment: str
    compare_value: str | None
    values: dict[str, float] | None = None  # param -> importance (sums to 1)
    reason: str | None = None  # why it is omitted
    n_trials: int = 0


def param_importance(exp: ExperimentResults, compare_value: str | None) -> Importance:
    """fANOVA importance on a study rebuilt from the completed search trials."""
    result = Importance(exp.name, compare_value)
    if not exp.space or not exp.space.get("params"):
        result.reason = "space.json with the searched parameters is missing"
        return result
    dists = distributions(exp.space)
    metric, mode = objective(exp)
    rows = search_rows(exp, compare_value)
    trials = []
    for _, row in rows.iterrows():
        params, used = {}, {}
        sampled = trial_params(row, list(dists))  # a conditional parameter may be absent
        for key, dist in dists.items():
            if key not in sampled:
                continue
            v = sampled[key]
            try:
                value = _param_value(dist, v)
            except (ValueError, TypeError):
                continue  # not a value of the declared space (edited space.json?): leave it out
            if isinstance(value, (int, float)) and hasattr(dist, "low") and not dist.low <= value <= dist.high:
                continue
            params[key], used[key] = value, dist
        trials.append(optuna.trial.create_trial(params=params, distributions=used, value=float(row[metric])))
    result.n_trials = len(trials)
    if len(trials) < 2:
        result.reason = f"needs at least 2 completed search trials, has {len(trials)}"
        return result
    varying = [k for k in dists if len({repr(t.params.get(k)) for t in trials if k in t.params}) > 1]
    if not varying:
        result.reason = "the completed search trials all used the same parameter values"
        return result
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" lines in a report run
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
        study.add_trials(trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        result.reason = f"fANOVA failed: {e}"
        return result
    finally:
        optuna.logging.set_verbosity(verbosity)
    result.values = {k: float(v) for k, v in imp.items()}
    return result


# --------------------------------------------------------------------------- progress


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
                             "seed": "" if pd.isna(row.get("seed")) else str(_plain(row.get("seed")))})
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


# --------------------------------------------------------------------------- environment


@dataclass
class Environment:
    versions: dict[str, str]
    devices: list[str]
    git_commits: list[str]
    hosts: list[str]
    first_start: str | None
    last_finish: str | None
    wall_hours: float
    gpu_hours: float
    n_trials: int


def _distinct(series: pd.Series) -> list[str]:
    return sorted({str(v) for v in series.dropna() if str(v)})


def environment(experiments: list[ExperimentResults]) -> Environment:
    t = pd.concat([e.trials for e in experiments], ignore_index=True)
    versions: dict[str, set[str]] = {}
    for raw in t.get("versions", pd.Series(dtype=object)).dropna():
        try:
            for k, v in json.loads(raw).items():
                versions.setdefault(str(k), set()).add(str(v))
        except (ValueError, AttributeError):
            continue
    col = lambda c: t[c] if c in t.columns else pd.Series(dtype=object)  # noqa: E731
    started = pd.to_datetime(col("started_at"), utc=True, errors="coerce").dropna()
    finished = pd.to_datetime(col("finished_at"), utc=True, errors="coerce").dropna()
    wall = pd.to_numeric(col("wall_seconds"), errors="coerce").fillna(0.0)
    gpus = pd.to_numeric(col("gpus"), errors="coerce").reindex(wall.index).fillna(0.0)
    iso = lambda ts: ts.strftime("%Y-%m-%d %H:%M:%S UTC")  # noqa: E731
    return Environment(
        versions={k: ", ".join(sorted(v)) for k, v in sorted(versions.items())},
        devices=_distinct(col("device")),
        git_commits=_distinct(col("git_commit")),
        hosts=_distinct(col("host")),
        first_start=iso(started.min()) if len(started) else None,
        last_finish=iso(finished.max()) if len(finished) else None,
        wall_hours=float(wall.sum()) / 3600.0,
        gpu_hours=float((wall * gpus).sum()) / 3600.0,
        n_trials=len(t),
    )


# --------------------------------------------------------------------------- references


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
        rows_exp = best[best["experiment"] == exp.name] if not best.empty else best
        settings = sorted(rows_exp["setting"].unique(), key=setting_sort_key) if not rows_exp.empty else [""]
        rows = []
        for metric_col, methods in ref["values"].items():
            name = METRICS.get(metric_col, metric_col)
            for method in sorted(methods, key=method_sort_key):
                value = methods[method]
                for setting in settings:
                    ours = None
                    if not rows_exp.empty and metric_col in rows_exp.columns:
                        sel = rows_exp[(rows_exp["setting"] == setting) & (rows_exp["method"] == method)]
                        vals = pd.to_numeric(sel[metric_col], errors="coerce").dropna() * scale
                        ours = summarize(vals) if len(vals) else None
                    std = value.get("std")
                    rows.append(ReferenceRow(setting, method, name, float(value["mean"]) * ref_scale,
                                             None if std is None else float(std) * ref_scale, ours))
        tables.append(ReferenceTable(exp.name, str(ref.get("source", "")), str(ref.get("note") or ""), rows))
    return tables
