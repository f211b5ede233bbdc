"""The search plots of each experiment, drawn where the completed search trials carry information.

Per experiment, the optimisation history (harness.reports.plots) of the compared values with at
least ``MIN_TRIALS_TO_PLOT`` completed search trials; per compared value (method), Optuna's
own plots (matplotlib backend, static SVG): parallel coordinates and slice plots from
``MIN_TRIALS_TO_PLOT`` trials on, the contour over the two most important parameters and
the parameter importances (fANOVA with ``seed=0``, the evaluator of the importance table)
from ``MIN_TRIALS_TO_FIT`` on. A compared value that misses any of them gets one line
saying which and why. The study is rebuilt from ``trials.parquet`` and ``space.json`` (the
same trials the tables show), so a report needs neither the Optuna database nor a
running sweep.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from optuna.visualization import matplotlib as ovm  # noqa: E402

from harness.results.contract import COL_TRIAL_ID  # noqa: E402
from harness.reports.plots import RC, Figure, optimisation_history, rendered, slug  # noqa: E402
from harness.reports.search_analysis import (MIN_TRIALS_TO_FIT, MIN_TRIALS_TO_PLOT, compare_values,  # noqa: E402
                                     distributions, objective, search_rows, searched_params)

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults

# Optuna sizes its figures from figure.figsize (a slice plot: half its width per
# parameter): small enough for two or three side by side in the report.
SEARCH_RC = {**RC, "figure.figsize": (4.4, 3.3)}

# kind -> (title, what it shows); the report says the latter once per experiment
KINDS: dict[str, tuple[str, str]] = {
    "parallel": ("Parallel coordinates", "each line is one completed search trial, through its parameter "
                 "values to its {metric} (colour)"),
    "slice": ("Slice plot", "{metric} against each parameter, one dot per completed search trial "
              "(colour: trial number)"),
    "contour": ("Contour plot", "{metric} interpolated over the two most important parameters (fANOVA); "
                "dots are the completed search trials"),
    "importance": ("Parameter importances", "fANOVA importance of each parameter for {metric} "
                   "({mode}imised), the evaluator of the importance table"),
}


@dataclass
class MethodSearchPlots:
    """One compared value's search plots, and the line that names those not drawn and why."""

    label: str  # the compared value, or the experiment's name without a compare axis
    n_trials: int  # completed search trials
    figures: list[Figure] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # of the figures, keys of KINDS
    omitted: str | None = None


@dataclass
class SearchPlots:
    """An experiment's search plots: its optimisation history and each compared value's plots."""

    experiment: str
    history: Figure | None
    methods: list[MethodSearchPlots]
    legend: list[tuple[str, str]]  # (title, what it shows) of each kind drawn here

    @property
    def figures(self) -> list[Figure]:
        return ([self.history] if self.history else []) + [f for m in self.methods for f in m.figures]

    @property
    def drawn(self) -> list[MethodSearchPlots]:
        return [m for m in self.methods if m.figures]

    @property
    def omitted(self) -> list[str]:
        return [m.omitted for m in self.methods if m.omitted]


def search_study(exp: ExperimentResults, compare_value: str | None) -> optuna.Study | None:
    """An in-memory study holding the completed search trials of one compared value."""
    if not exp.space or not exp.space.get("params"):
        return None
    dists = distributions(exp.space)
    metric, mode = objective(exp)
    trials = []
    for _, row in search_rows(exp, compare_value).iterrows():
        params, used = searched_params(row, dists)
        value = float(row[metric])
        if not np.isfinite(value):
            continue
        trials.append(optuna.trial.create_trial(params=params, distributions=used, value=value,
                                                user_attrs={COL_TRIAL_ID: str(row[COL_TRIAL_ID])}))
    if not any(t.params for t in trials):
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                    study_name=f"{exp.name}:{compare_value}")
        study.add_trials(trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study


def _varying(study: optuna.Study) -> list[str]:
    values: dict[str, set[str]] = {}
    for t in study.trials:
        for k, v in t.params.items():
            values.setdefault(k, set()).add(repr(v))
    return sorted(k for k, vs in values.items() if len(vs) > 1)


class _KnownImportances(optuna.importance.BaseImportanceEvaluator):
    """Hands plot_param_importances the importances computed once (fANOVA is the slow part)."""

    def __init__(self, values: dict[str, float]):
        self.values = values

    def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
        return dict(self.values)


def _importances(study: optuna.Study, params: list[str]) -> dict[str, float] | None:
    """fANOVA importances (seed 0, as the importance table), highest first; None if it fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dict(optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params))
        except (ValueError, RuntimeError):
            return None


def _render(draw: Callable[[], Any], name: str, title: str, caption: str) -> Figure | None:
    """Run one optuna.visualization.matplotlib function; its figure (None: nothing drawn)."""
    with plt.rc_context(SEARCH_RC), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning, and sparse-grid warnings
        try:
            axes = draw()
        except (ValueError, RuntimeError, ZeroDivisionError):
            plt.close("all")
            return None
        first = np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes
        fig = first.figure
        if not any(ax.has_data() for ax in fig.axes):
            plt.close(fig)
            return None
        _plain_log_ticks(fig)
        return rendered(fig, name, title, caption)


def _plain_log_ticks(fig) -> None:
    """Log axes label their ticks as 1e-04 (the report's RC keeps mathtext off, so
    matplotlib's default 10^x labels would print as raw TeX)."""
    plain = FuncFormatter(lambda v, _: f"{v:.0e}" if v > 0 else f"{v:g}")
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(NullFormatter())


def method_search_plots(exp: ExperimentResults, compare_value: str | None) -> MethodSearchPlots:
    """The plots one compared value's completed search trials carry, and why not the others."""
    metric, mode = objective(exp)
    label = compare_value if compare_value is not None else exp.name
    study = search_study(exp, compare_value)
    n = len(study.trials) if study is not None else len(search_rows(exp, compare_value))
    out = MethodSearchPlots(label, n)
    trials = f"{n} completed search trial{'' if n == 1 else 's'}"
    params = _varying(study) if study is not None else []
    if n < MIN_TRIALS_TO_PLOT:
        why = f"{trials}, fewer than the {MIN_TRIALS_TO_PLOT} a search plot needs"
    elif study is None:
        why = "space.json declares none of the parameters its trials searched"
    elif not params:
        why = f"its {trials} share one setting of the searched parameters"
    elif len({t.value for t in study.trials}) == 1:
        why = f"all {trials} scored the same {metric}"
    else:
        why = None
    if why:
        out.omitted = f"{label}: {why}; search plots omitted"
        return out
    draws: dict[str, Callable[[], Any]] = {
        "parallel": lambda: ovm.plot_parallel_coordinate(study, params=params, target_name=metric),
        "slice": lambda: ovm.plot_slice(study, params=params, target_name=metric),
    }
    missing = []
    if n < MIN_TRIALS_TO_FIT:
        missing.append(f"{trials}, fewer than the {MIN_TRIALS_TO_FIT} a contour or importance plot needs; "
                       "contour and importance omitted")
    else:
        importances = _importances(study, params)
        if len(params) >= 2:
            # all pairs of many parameters would be a large grid of contours: the top pair
            pair = sorted(list(importances or dict.fromkeys(params))[:2])
            draws["contour"] = lambda: ovm.plot_contour(study, params=pair, target_name=metric)
        else:
            missing.append("one searched parameter varies; contour omitted")
        if importances:
            draws["importance"] = lambda: ovm.plot_param_importances(
                study, evaluator=_KnownImportances(importances), params=params, target_name=metric)
        else:
            missing.append("fANOVA failed; importance omitted")
    where = f"{exp.name}, {label}" if compare_value is not None else exp.name
    for kind, draw in draws.items():
        title, shows = KINDS[kind]
        fig = _render(draw, f"search-{kind}-{slug(exp.name)}-{slug(label)}", f"{title}: {where}",
                      shows.format(metric=metric, mode=mode))
        if fig is None:
            missing.append(f"Optuna drew no {title.lower()}")
        else:
            out.figures.append(fig)
            out.kinds.append(kind)
    if missing:
        out.omitted = f"{label}: " + "; ".join(missing)
    return out


def search_plots(exp: ExperimentResults, scale: float, colours: dict[str, str]) -> SearchPlots:
    """The experiment's history and every compared value's plots (or the line why not)."""
    metric, mode = objective(exp)
    methods = [method_search_plots(exp, cv) for cv in compare_values(exp)]
    drawn = {kind for m in methods for kind in m.kinds}
    legend = [(title, shows.format(metric=metric, mode=mode)) for kind, (title, shows) in KINDS.items()
              if kind in drawn]
    history = optimisation_history(exp, scale, colours, MIN_TRIALS_TO_PLOT)
    return SearchPlots(exp.name, history, methods, legend)


__all__ = ["search_study", "method_search_plots", "search_plots"]
