"""The search phase of a sweep: its objective, the completed trials, the best trial of each
compared value, the hyperparameters' fANOVA importance, and how many completed search
trials a compared value needs before a plot or an importance of them means something."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd

from harness.results.selection import best_trials as select_best_trials, completed_search_trials
from harness.results.contract import (
    COL_COMPARE_VALUE,
    COL_OBJECTIVE_RUNS,
    COL_OBJECTIVE_STD,
    COL_PHASE,
    COL_TRIAL_ID,
    DEFAULT_METRIC,
    PHASE_SEARCH,
)
from harness.reports.tables import value_sort_key

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults

# Plots of the trials themselves (history, slice, parallel coordinates): with fewer points
# they show no more than the best-hyperparameters table (the best trial and the runner-up).
MIN_TRIALS_TO_PLOT = 4
# What is fitted to the trials (fANOVA's random forest, the contour's interpolated surface):
# with fewer points than a two-level grid over three parameters, it draws shape from noise.
MIN_TRIALS_TO_FIT = 8


def objective(exp: ExperimentResults) -> tuple[str, str]:
    """(column, "max"|"min") of the sweep's objective, from space.json."""
    space = exp.space or {}
    metric = str(space.get("metric") or DEFAULT_METRIC)
    if metric not in exp.trials.columns and f"val.{metric}" in exp.trials.columns:
        metric = f"val.{metric}"
    mode = str(space.get("mode") or "max")
    return metric, "min" if mode.startswith("min") else "max"


def search_rows(exp: ExperimentResults, compare_value: str | None = ..., completed: bool = True) -> pd.DataFrame:
    t = exp.trials
    rows = completed_search_trials(t) if completed else t[t[COL_PHASE] == PHASE_SEARCH]
    if compare_value is not ...:
        rows = rows[rows[COL_COMPARE_VALUE].isna()] if compare_value is None else rows[rows[COL_COMPARE_VALUE] == compare_value]
    metric, _ = objective(exp)
    if metric in rows.columns:
        rows = rows[pd.to_numeric(rows[metric], errors="coerce").notna()]
    else:
        rows = rows.iloc[0:0]
    if "started_at" in rows.columns:
        rows = rows.sort_values(["started_at", COL_TRIAL_ID], kind="stable")
    return rows


def compare_values(exp: ExperimentResults) -> list[str | None]:
    space = exp.space or {}
    values = space.get("compare_values")
    if values:
        return [str(v) for v in values]
    seen = exp.trials[COL_COMPARE_VALUE].dropna().unique().tolist()
    return sorted(seen, key=value_sort_key) if seen else [None]


def param_keys(exp: ExperimentResults) -> list[str]:
    """Searched dotted keys: from space.json, else the config columns that vary in the search."""
    if exp.space and exp.space.get("params"):
        return list(exp.space["params"])
    rows = search_rows(exp)
    cols = [c for c in rows.columns if c.startswith("config.") and c != "config.seed"]
    varying = [c for c in cols if rows[c].astype(str).nunique() > 1]
    return [c.removeprefix("config.") for c in varying]


def plain_value(v: Any) -> Any:
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
            out[k] = plain_value(v)
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
    # search.objective folds x seeds: the sample std of the chosen setting's runs and
    # their count (None / 1 for single-run trials)
    spread: float | None = None
    n_runs: int = 1
    # the second-best setting's objective, and whether it lies within that spread
    runner_up: float | None = None

    @property
    def inseparable(self) -> bool:
        """The best two settings are closer than the chosen one's spread over its runs."""
        return (self.spread is not None and self.runner_up is not None
                and abs(self.value - self.runner_up) < self.spread)


def _spread(row: pd.Series) -> tuple[float | None, int]:
    std = row.get(COL_OBJECTIVE_STD)
    runs = row.get(COL_OBJECTIVE_RUNS)
    n = len(json.loads(runs)) if isinstance(runs, str) and runs else 1
    return (float(std) if std is not None and not pd.isna(std) else None), n


def best_trials(exp: ExperimentResults) -> list[BestTrial]:
    """The best completed search trial of each compared value (the one the sweep reproduces)."""
    metric, mode = objective(exp)
    keys = param_keys(exp)
    best = select_best_trials(exp.trials, metric, mode)
    out = []
    for cv in compare_values(exp):
        rows = search_rows(exp, cv)
        if not len(rows):
            continue
        cvs = best[COL_COMPARE_VALUE]
        row = best[cvs.isna() if cv is None else cvs == cv].iloc[0]
        spread, n_runs = _spread(row)
        others = pd.to_numeric(rows[rows[COL_TRIAL_ID] != row[COL_TRIAL_ID]][metric], errors="coerce").dropna()
        runner_up = None if others.empty else float(others.max() if mode == "max" else others.min())
        out.append(BestTrial(exp.name, cv, str(row[COL_TRIAL_ID]), float(pd.to_numeric(row[metric])),
                             metric, trial_params(row, keys), len(rows), spread, n_runs, runner_up))
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
    v = plain_value(v)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(v)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return float(v)
    for choice in dist.choices:  # parquet may hold 64 for the choice "64", or the reverse
        if choice == v or str(choice) == str(v):
            return choice
    raise ValueError(f"{v!r} is not one of {dist.choices}")


def searched_params(row: pd.Series, dists: dict[str, optuna.distributions.BaseDistribution]
                    ) -> tuple[dict[str, Any], dict[str, optuna.distributions.BaseDistribution]]:
    """(params, their distributions) of one search row, ready for ``optuna.trial.create_trial``.

    A conditional parameter the trial did not sample is absent; so is a value outside the
    declared space (an edited space.json), which Optuna would reject.
    """
    params, used = {}, {}
    for key, value in trial_params(row, list(dists)).items():
        dist = dists[key]
        try:
            v = _param_value(dist, value)
        except (ValueError, TypeError):
            continue
        if isinstance(v, (int, float)) and hasattr(dist, "low") and not dist.low <= v <= dist.high:
            continue
        params[key], used[key] = v, dist
    return params, used


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
        params, used = searched_params(row, dists)
        trials.append(optuna.trial.create_trial(params=params, distributions=used, value=float(row[metric])))
    result.n_trials = len(trials)
    if len(trials) < MIN_TRIALS_TO_FIT:
        result.reason = f"needs at least {MIN_TRIALS_TO_FIT} completed search trials, has {len(trials)}"
        return result
    varying = [k for k in dists if len({repr(t.params.get(k)) for t in trials if k in t.params}) > 1]
    if not varying:
        result.reason = "the completed search trials all used the same parameter values"
        return result
    if len({t.value for t in trials}) == 1:
        result.reason = f"all {len(trials)} completed search trials scored the same {metric}"
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
        result.reason = f"fANOVA failed: {str(e).rstrip('.')}"
        return result
    finally:
        optuna.logging.set_verbosity(verbosity)
    result.values = {k: float(v) for k, v in imp.items()}
    return result
