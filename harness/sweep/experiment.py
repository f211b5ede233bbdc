"""Experiments as files: a base run config plus a ``search`` section.

One YAML per named experiment lives in ``search_spaces/`` (package data). The ``base``
section is exactly what ``harness train`` takes (:func:`harness.config.build_config`);
the ``search`` section says what to tune, how, what to compare, and how to reproduce
the winners. Everything is validated with pydantic (unknown keys forbidden) and every
problem is one :class:`ConfigError` line naming the bad key.

A conditional parameter is a plain mapping with a ``when`` clause, e.g.::

    memory.kalman.r: {type: float, low: 0.001, high: 0.1, log: true,
                      when: {memory.kind: axbn}}

The ``compare`` axis is a dotted config key, or ``method``: a memory kind with an
optional ``+xml`` suffix ("axbn", "none+xml"), the same spelling as the results
tables' ``method`` column.
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from harness.config import RunConfig, build_config, load_yaml, parse_overrides, set_dotted
from harness.core.pairs import positive_pair_problem
from harness.errors import ConfigError, config_error, printable
from harness.results.contract import METHOD_CONFIG_KEYS, method_name, method_overrides
from harness.sweep.search_spec import METHOD_KEY, ReferenceSpec, SearchSpec, StrictModel
from harness.sweep.space import corner_overrides, grid_for
from harness.tracking.config import TrackingSpec


class Experiment(StrictModel):
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpec = SearchSpec()
    # Optional trackers (MLflow, W&B, TensorBoard) fed by the sweep: harness/tracking/.
    tracking: TrackingSpec = TrackingSpec()
    reference: ReferenceSpec | None = None

    # ---- derived views -------------------------------------------------------------

    @property
    def compare_key(self) -> str | None:
        return self.search.compare.key if self.search.compare else None

    @property
    def compare_labels(self) -> list[str | None]:
        """One label per compared value (``[None]`` without a compare axis)."""
        if self.search.compare is None:
            return [None]
        return [str(v) for v in self.search.compare.values]

    def compare_overrides(self, label: str | None) -> dict[str, Any]:
        """Dotted config overrides that select the compared value ``label``."""
        if label is None or self.search.compare is None:
            return {}
        value = next(v for v in self.search.compare.values if str(v) == label)
        if self.compare_key == METHOD_KEY:
            return method_overrides(label)
        return {self.compare_key: value}

    def trial_budget(self) -> dict[str | None, int]:
        """Search trials per compared value: an equal share of ``search.trials``
        (a grid visits its whole grid instead)."""
        labels = self.compare_labels
        if self.search.algorithm == "grid":
            return {label: math.prod(len(v) for v in grid_for(self, label).values())
                    for label in labels}
        share = max(1, self.search.trials // len(labels))
        return {label: share for label in labels}

    def search_runs(self) -> int:
        """Training runs of the whole search: every trial trains ``search.objective.runs``
        (folds x seeds) runs."""
        return sum(self.trial_budget().values()) * self.search.objective.runs

    def reproductions_planned(self) -> int:
        """Reproduction runs a sweep schedules: each compared value's best search
        configuration, or with ``search.reproduce: all`` every search trial's (an upper
        bound: a repeated parameter set runs once), on every reproduction seed; the
        reproduction phase builds them in :func:`harness.sweep.reproduce.reproduction_specs`."""
        configurations = (sum(self.trial_budget().values()) if self.search.reproduce == "all"
                          else len(self.compare_labels))
        return configurations * len(self.search.reproduction_seeds)

    def run_config(self, overrides: dict[str, Any] | None = None) -> RunConfig:
        workers = {"train.workers": self.search.resources.workers}
        return build_config(self.base, {**workers, **(overrides or {})},
                            source=f"experiment {printable(self.name)}: base")

    def dataset(self) -> str:
        return str(_section(self.base, "data").get("name", "digits"))

    def methods(self) -> list[str]:
        """The method labels this experiment compares (for ``harness list``)."""
        if self.compare_key == METHOD_KEY:
            return self.compare_labels  # type: ignore[return-value]
        cfg = self.run_config()
        method = method_of(cfg)
        if self.compare_key in METHOD_CONFIG_KEYS:
            return [method_of(self.run_config(self.compare_overrides(v))) for v in self.compare_labels]
        if self.compare_key:
            return [f"{method} ({self.compare_key}={v})" for v in self.compare_labels]
        return [method]


def _section(base: dict[str, Any], name: str) -> dict[str, Any]:
    """``base[name]`` when it is a mapping, else ``{}`` (absent, or a section left empty in
    YAML, ``train:``, which parses to null)."""
    section = base.get(name)
    return section if isinstance(section, dict) else {}


def method_of(cfg: RunConfig) -> str:
    """The results tables' ``method``: memory kind, plus "+xml" when XML is on."""
    return method_name(cfg.memory.kind, cfg.xml.enabled)


# ---- loading -----------------------------------------------------------------------


def builtin_dir() -> Path:
    return Path(str(resources.files("harness.search_spaces")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def find_experiment(name_or_path: str) -> Path:
    """An experiment YAML by name (``search_spaces/NAME.yaml``) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.is_dir():
            raise ConfigError(f"{printable(p)} is a folder; give an experiment YAML file or a name from `harness list`")
        if not p.is_file():
            raise ConfigError(f"experiment file not found: {printable(p)}")
        return p
    candidate = builtin_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(builtin_names()) or "(none)"
    raise ConfigError(
        f"unknown experiment '{printable(name_or_path)}'; known: {known} (or give a path to a YAML file)"
    )


def load_experiment(
    name_or_path: str,
    overrides: list[str] | None = None,
    trials: int | None = None,
) -> Experiment:
    """Read, validate and check an experiment; ``--set`` overrides apply to ``base``."""
    path = find_experiment(name_or_path)
    raw = load_yaml(path)
    raw.setdefault("name", path.stem)
    exp = parse_experiment(raw, source=printable(path))
    if overrides:
        # the file's own problems name the file, the overrides' name --set
        build_config(exp.base, source=f"{printable(path)}: base")
        parsed = parse_overrides(overrides)
        build_config(exp.base, parsed, source="--set")
        base = copy.deepcopy(exp.base)
        for key, value in parsed.items():
            set_dotted(base, key, value)
        exp = exp.model_copy(update={"base": base})
    data = exp.base.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    if isinstance(root, str) and not Path(root).expanduser().is_absolute():
        # Trials run in their own folders (and on other nodes): pin the driver's meaning.
        base = copy.deepcopy(exp.base)
        base["data"]["root"] = str(Path(root).expanduser().absolute())
        exp = exp.model_copy(update={"base": base})
    if trials is not None:
        if trials < 1:
            raise ConfigError("--trials must be at least 1")
        n_values = len(exp.compare_labels)
        if trials < n_values and exp.search.algorithm != "grid":
            raise ConfigError(
                f"--trials {trials} is fewer than the {n_values} compared values (each needs at "
                f"least one trial); give --trials {n_values} or more"
            )
        exp = exp.model_copy(update={"search": exp.search.model_copy(update={"trials": trials})})
    check_experiment(exp)
    return exp


def parse_experiment(raw: dict[str, Any], source: str) -> Experiment:
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise config_error(e, source) from None


def _config_has(key: str, flat: dict[str, Any]) -> bool:
    if key in flat:
        return True
    # Free-form mappings (loss.params, loss.miner_params) accept any sub-key.
    return any(key.startswith(k + ".") for k, v in flat.items() if isinstance(v, dict))


def check_experiment(exp: Experiment) -> None:
    """Checks that need the run config: every key exists, every corner builds."""
    src = f"experiment {printable(exp.name)}"
    base_cfg = exp.run_config()
    flat = base_cfg.flat()
    search = exp.search
    if exp.compare_key and exp.compare_key != METHOD_KEY and not _config_has(exp.compare_key, flat):
        raise ConfigError(
            f"{src}: search.compare.key: '{printable(exp.compare_key)}' is not a config key "
            f"(use a dotted key such as memory.kind, or 'method')"
        )
    for key, spec in search.space.items():
        if not _config_has(key, flat):
            raise ConfigError(
                f"{src}: search.space.{printable(key)}: the run config has no key '{printable(key)}' "
                f"(see `harness train --help` for the config sections)"
            )
        for cond in spec.when or {}:
            if not _config_has(cond, flat):
                raise ConfigError(f"{src}: search.space.{printable(key)}.when: unknown config key "
                                  f"'{printable(cond)}'")
        if search.algorithm == "grid":
            try:
                spec.grid_values()
            except ValueError as e:
                raise ConfigError(printable(f"{src}: search.space.{key}: {e}")) from None
    if not search.reproduction_seeds:
        raise ConfigError(f"{src}: search.reproduction_seeds: give at least one seed")
    base_workers = _section(exp.base, "train").get("workers")
    if base_workers is not None and base_workers != search.resources.workers:
        raise ConfigError(
            f"{src}: base train.workers is {printable(base_workers)} but search.resources.workers is "
            f"{search.resources.workers}; set the worker count in search.resources only"
        )
    if search.objective.runs > 1 and search.resources.workers > 1:
        raise ConfigError(
            f"{src}: search.objective (folds {search.objective.folds} x seeds "
            f"{search.objective.seeds}) needs one-worker trials; set search.resources.workers "
            "to 1 or the objective's folds and seeds to 1"
        )
    n_values = len(exp.compare_labels)
    if search.algorithm != "grid" and search.trials < n_values:
        raise ConfigError(
            f"{src}: search.trials ({search.trials}) is fewer than the {n_values} compared "
            f"values (each needs at least one trial); set it to {n_values} or more"
        )
    per_value = max(exp.trial_budget().values())
    if not search.space and per_value > 1:
        raise ConfigError(
            f"{src}: search.space is empty, so the {per_value} search trials of each compared "
            "value would all run the same config; add parameters to search.space or set "
            f"search.trials to {n_values}"
        )
    # Every compared value, with every parameter at its low and at its high end, must
    # be a valid run config: fail here, before Ray starts, not in trial 17.
    for label in exp.compare_labels:
        for corner in ("low", "high"):
            overrides = corner_overrides(exp, label, corner)
            where = f"{src} (compare={printable(label)}, space at {corner})"
            cfg = build_config(exp.base, overrides, source=where)
            problem = positive_pair_problem(cfg)
            if problem:
                raise ConfigError(printable(f"{where}: {problem}"))
