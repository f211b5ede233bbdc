"""Search plots from Optuna's own visualisation module (matplotlib backend, static SVG).

Per experiment and compared value (method): parallel coordinates, slice and contour
plots of the completed search trials, and the parameter importances (fANOVA with
``seed=0``, the evaluator of the importance table) as a figure. The study is rebuilt
from ``trials.parquet`` and ``space.json`` (the same trials the tables show), so a
report needs neither the Optuna database nor a running sweep.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from optuna.visualization import matplotlib as ovm  # noqa: E402

from harness.results_contract import COL_TRIAL_ID  # noqa: E402
from reports.plots import RC, Figure, slug, to_svg  # noqa: E402
from reports.search_analysis import (compare_values, distributions, objective,  # noqa: E402
                                     search_rows, searched_params)

if TYPE_CHECKING:
    from reports.load import ExperimentResults

MIN_TRIALS = 2  # fewer completed trials: nothing to plot


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
    if len(trials) < MIN_TRIALS or not any(t.params for t in trials):
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


def _render(draw: Callable[[], Any]) -> bytes | None:
    """Run one optuna.visualization.matplotlib function; its figure as SVG (None: nothing drawn)."""
    with plt.rc_context(RC), warnings.catch_warnings():
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
        return to_svg(fig)


def _plain_log_ticks(fig) -> None:
    """Log axes label their ticks as 1e-04 (the report's RC keeps mathtext off, so
    matplotlib's default 10^x labels would print as raw TeX)."""
    plain = FuncFormatter(lambda v, _: f"{v:.0e}" if v > 0 else f"{v:g}")
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(NullFormatter())


def search_figures(exp: ExperimentResults) -> list[Figure]:
    metric, mode = objective(exp)
    out: list[Figure] = []
    for cv in compare_values(exp):
        study = search_study(exp, cv)
        if study is None:
            continue
        params = _varying(study)
        if not params:
            continue
        label = cv if cv is not None else exp.name
        stem = f"{slug(exp.name)}-{slug(label)}"
        n = len(study.trials)
        where = f"{exp.name}, {label}" if cv is not None else exp.name
        kinds = [
            ("parallel", "Parallel coordinates", lambda s=study: ovm.plot_parallel_coordinate(s, params=params, target_name=metric),
             f"Each line is one of the {n} completed search trials: its parameter values and {metric} (colour)."),
            ("slice", "Slice plot", lambda s=study: ovm.plot_slice(s, params=params, target_name=metric),
             f"{metric} against each parameter, one dot per completed search trial (colour: trial number)."),
        ]
        importances = _importances(study, params)
        if len(params) >= 2:
            # all pairs of many parameters would be a large grid of contours: the top pair
            pair = sorted(list(importances or {p: 0 for p in params})[:2])
            kinds.append(("contour", "Contour plot", lambda s=study: ovm.plot_contour(s, params=pair, target_name=metric),
                          f"{metric} interpolated over the two most important parameters ({pair[0]}, "
                          f"{pair[1]}; fANOVA); dots are the completed search trials."))
        if importances:
            kinds.append(("importance", "Parameter importances",
                          lambda s=study: ovm.plot_param_importances(
                              s, evaluator=_KnownImportances(importances), params=params, target_name=metric),
                          f"fANOVA importance of each parameter for {metric} ({mode}imised), over the {n} "
                          "completed search trials; the same evaluator as the importance table."))
        for kind, title, draw, caption in kinds:
            svg = _render(draw)
            if svg is not None:
                out.append(Figure(f"search-{kind}-{stem}", f"{title}: {where}", caption, svg))
    return out


def make_search_figures(experiments: list[ExperimentResults]) -> list[Figure]:
    figures: list[Figure] = []
    for exp in experiments:
        figures.extend(search_figures(exp))
    return figures


__all__ = ["search_study", "search_figures", "make_search_figures"]
