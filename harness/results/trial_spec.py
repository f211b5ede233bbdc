"""What a sweep hands each Tune trial: the trial spec, under ``config["spec"]``.

The sweep's searcher (search phase) and :mod:`harness.sweep.reproduce` (reproduction
phase) build specs; the trainables, the recorder, recovery and tracking read them. Ray
pickles Tune's trial configs into the experiment state, so a sweep restored with
``--resume`` hands trials specs written by an earlier run: the keys below are part of
the results contract and change only with it. Like :mod:`harness.results.contract`,
this module imports nothing from the harness but that.
"""

from __future__ import annotations

from typing import Any, Mapping, TypedDict

from harness.results.contract import PHASE_REPRODUCTION, PHASE_SEARCH

SPEC_KEY = "spec"  # the trial config is {SPEC_KEY: TrialSpec}


class TrialSpec(TypedDict, total=False):
    phase: str  # PHASE_SEARCH | PHASE_REPRODUCTION
    compare_value: str | None  # the compared method's label (None: no compare axis)
    overrides: dict[str, Any]  # dotted config keys -> values, applied to the base config
    params: dict[str, Any]  # the searched values alone (part of overrides)
    seed: int
    # reproduction phase only
    trial_id: str  # stable across --resume: names the configuration and seed
    best_config: bool  # reproduces the best search trial of its method
    source_trial: str  # the search trial it reproduces


# The one key of "no compare axis" wherever trials are grouped by compared value
# (searchers, schedulers, the live view); the tables keep null.
NO_COMPARE_LABEL = "__none__"

def search_spec(compare_value: str | None, overrides: dict[str, Any], params: dict[str, Any],
                seed: int) -> TrialSpec:
    return TrialSpec(phase=PHASE_SEARCH, compare_value=compare_value, overrides=overrides,
                     params=params, seed=int(seed))


def reproduction_spec(compare_value: str | None, overrides: dict[str, Any],
                      params: dict[str, Any], seed: int, *, trial_id: str, best_config: bool,
                      source_trial: str) -> TrialSpec:
    return TrialSpec(phase=PHASE_REPRODUCTION, compare_value=compare_value,
                     overrides=overrides, params=params, seed=int(seed), trial_id=trial_id,
                     best_config=best_config, source_trial=source_trial)


def spec_of(config: Mapping[str, Any] | None) -> TrialSpec | None:
    """The spec in a Tune trial config; None for a config a harness sweep did not write."""
    return (config or {}).get(SPEC_KEY)


def run_overrides(spec: TrialSpec) -> dict[str, Any]:
    """The dotted config values that make the trial's run config from the base: the
    spec's overrides and its seed."""
    return {**(spec.get("overrides") or {}), "seed": int(spec["seed"])}


def compare_label(config: Mapping[str, Any] | None) -> str:
    """The trial's compared value as a grouping key (``NO_COMPARE_LABEL`` without a
    compare axis)."""
    value = (spec_of(config) or {}).get("compare_value")
    return NO_COMPARE_LABEL if value is None else str(value)
