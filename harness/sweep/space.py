"""Search space -> Optuna define-by-run function (with conditional parameters).

Each compared value gets its own define-by-run function and its own Optuna study: a
conditional parameter (``when: {memory.kind: axbn}``) is only suggested when the
config it would land in satisfies the clause, so Optuna's TPE never models Kalman
noise for a run that has no Kalman filter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.sweep.experiment import Experiment
    from harness.sweep.search_spec import ParamSpec


def fixed_values(exp: Experiment, label: str | None) -> dict[str, Any]:
    """The flat config a compared value starts from (before any searched value)."""
    overrides = exp.compare_overrides(label)
    values = exp.run_config().flat()
    values.update(overrides)
    return values


def suggest(trial: Any, key: str, spec: ParamSpec) -> Any:
    """Ask an Optuna trial (or Ray's captor around one) for one parameter."""
    if spec.type == "float":
        return trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=spec.step)
    if spec.type == "int":
        return trial.suggest_int(
            key, int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1)
        )
    return trial.suggest_categorical(key, spec.choices)


class DefineByRun:
    """Optuna define-by-run function for one compared value.

    A plain class (not a closure) so that Ray Tune can pickle the searcher state
    with it, which is what lets ``--resume`` keep the Optuna history.
    """

    def __init__(self, params: dict[str, ParamSpec], fixed: dict[str, Any]):
        self.params = params
        self.fixed = fixed

    def __call__(self, trial: Any) -> None:
        values = dict(self.fixed)
        for key, spec in self.params.items():
            if spec.active(values):
                values[key] = suggest(trial, key, spec)
        return None  # Ray's captor collects what was suggested


def define_by_run(exp: Experiment, label: str | None) -> DefineByRun:
    return DefineByRun(dict(exp.search.space), fixed_values(exp, label))


def grid_for(exp: Experiment, label: str | None) -> dict[str, list[Any]]:
    """Optuna GridSampler space of one compared value (its active parameters only)."""
    fixed = fixed_values(exp, label)
    return {k: s.grid_values() for k, s in exp.search.space.items() if s.active(fixed)}


def create_sampler(exp: Experiment, label: str | None, index: int):
    import optuna  # here, not at the top: `harness list` and planning start without it

    seed = exp.search.sampler_seed + index
    if exp.search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if exp.search.algorithm == "grid":
        return optuna.samplers.GridSampler(grid_for(exp, label), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def corner_overrides(exp: Experiment, label: str | None, corner: str) -> dict[str, Any]:
    """Overrides putting every active parameter at its ``low`` or ``high`` end."""
    overrides = exp.compare_overrides(label)
    values = fixed_values(exp, label)
    for key, spec in exp.search.space.items():
        if not spec.active(values):
            continue
        if spec.type == "categorical":
            value = spec.choices[0 if corner == "low" else -1]
        else:
            value = spec.low if corner == "low" else spec.high
            if spec.type == "int":
                value = int(value)
        overrides[key] = value
        values[key] = value
    return overrides


def space_description(exp: Experiment) -> dict[str, Any]:
    """The ``space.json`` document (docs/architecture.md, "Results tables")."""
    budget = exp.trial_budget()
    labels = exp.compare_labels
    base = exp.run_config().flat()
    return {
        "experiment": exp.name,
        "metric": exp.search.metric,
        "mode": exp.search.mode,
        "algorithm": exp.search.algorithm,
        "compare_key": exp.compare_key,
        "compare_values": None if labels == [None] else labels,
        "trials_planned": sum(budget.values()),
        "trials_per_value": {str(k): v for k, v in budget.items()},
        "reproduction_seeds": list(exp.search.reproduction_seeds),
        "reproduce": exp.search.reproduce,
        "reproductions_planned": exp.reproductions_planned(),
        # Base-config values of the searched keys: where a report slices a grid.
        "base_values": {k: base.get(k) for k in exp.search.space},
        "params": {k: s.describe() for k, s in exp.search.space.items()},
        # Published numbers the report shows beside ours (None: none given).
        "reference": exp.reference.describe() if exp.reference else None,
    }
