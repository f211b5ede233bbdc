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
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.config import MemoryKind, RunConfig, build_config, load_yaml, parse_overrides
from harness.core.pairs import positive_pair_problem
from harness.errors import ConfigError, config_error
from harness.results_contract import COL_METHOD, XML_SUFFIX, method_name
from harness.tracking.config import TrackingSpec

METHOD_KEY = COL_METHOD  # `compare: {key: method}` compares the results' method column


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Spec):
    """One searched config value: float (optionally log), int, or categorical."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    # Sampled only when every listed config key has this value (or one of a list).
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _range(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("categorical takes 'choices', not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(
                f"empty or inverted range: low ({self.low:g}) must be below high ({self.high:g})"
            )
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("int range needs whole-number low/high")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give 'log' or 'step', not both")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        return self

    def active(self, values: dict[str, Any]) -> bool:
        """Whether the ``when`` clause holds for the (flat, dotted) config ``values``."""
        for key, want in (self.when or {}).items():
            have = values.get(key)
            options = want if isinstance(want, list) else [want]
            if have not in options:
                return False
        return True

    def grid_values(self) -> list[Any]:
        """The values a grid search visits (categorical choices, int range, stepped float)."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            raise ValueError("a float parameter in a grid search needs a 'step'")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]

    def describe(self) -> dict[str, Any]:
        """The space.json entry (enough to rebuild the Optuna distribution)."""
        return {
            "type": self.type,
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "step": self.step,
            "choices": self.choices,
            "when": self.when,
        }


class AshaSpec(_Spec):
    """Asynchronous successive halving over epochs (ray.tune.schedulers.ASHAScheduler)."""

    kind: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    brackets: int = Field(1, ge=1)


class CompareSpec(_Spec):
    key: str
    values: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "CompareSpec":
        labels = [str(v) for v in self.values]
        if len(set(labels)) != len(labels):
            raise ValueError("compare.values must be distinct")
        return self


class ResourceSpec(_Spec):
    """Resources of one trial; gpus may be a fraction to pack trials on one GPU.

    ``workers > 1``: the trial trains data-parallel on that many Ray Train workers
    (trainables/distributed.py), each with ``cpus_per_worker`` / ``gpus_per_worker``
    (default: ``cpus`` / ``gpus``); ``train.workers`` of the trials follows it.
    """

    cpus: float = Field(1.0, gt=0.0)
    gpus: float = Field(0.0, ge=0.0)
    workers: int = Field(1, ge=1)
    cpus_per_worker: float | None = Field(None, gt=0.0)
    gpus_per_worker: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _whole_gpus(self) -> "ResourceSpec":
        g = self.worker_gpus
        if self.workers > 1 and g and g != int(g):
            raise ValueError(
                f"gpus_per_worker must be a whole number of GPUs with workers > 1 (NCCL "
                f"gives each rank its own GPU), got {g}"
            )
        return self

    @property
    def worker_cpus(self) -> float:
        return self.cpus if self.cpus_per_worker is None else self.cpus_per_worker

    @property
    def worker_gpus(self) -> float:
        return self.gpus if self.gpus_per_worker is None else self.gpus_per_worker

    @property
    def trial_cpus(self) -> float:
        """CPUs one trial holds (all its workers)."""
        return self.cpus if self.workers == 1 else self.workers * self.worker_cpus

    @property
    def trial_gpus(self) -> float:
        return self.gpus if self.workers == 1 else self.workers * self.worker_gpus


class SearchSpec(_Spec):
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    # The whole search budget; each compared value gets an equal share of it.
    trials: int = Field(8, ge=1)
    metric: str = "val.recall@1"
    mode: Literal["max", "min"] = "max"
    scheduler: AshaSpec | None = None
    compare: CompareSpec | None = None
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    reproduction_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    # "best": reproduce the best search configuration of each compared value (the
    # numbers reports compare); "all": every completed search configuration too, for
    # experiments whose every grid point is a result (the AXBN paper's Figure 1).
    reproduce: Literal["best", "all"] = "best"
    resources: ResourceSpec = ResourceSpec()
    max_failures: int = Field(2, ge=0)
    # Seed of the Optuna sampler (the search itself is reproducible).
    sampler_seed: int = 0


# Test metrics a reference may quote (the report's summary columns).
REFERENCE_METRICS = ("test.recall@1", "test.recall@10", "test.map@r", "test.r_precision")


class ReferenceValue(_Spec):
    mean: float
    std: float | None = Field(None, ge=0.0)


class ReferenceSpec(_Spec):
    """Published numbers to show beside the reproduced ones (in percent, as papers print them).

    ``values``: test metric -> method label (``none``, ``xbm``, ``xbm+batch``, ``xbn``,
    ``axbn``, optionally ``+xml``) -> mean ± std over the paper's repetitions.
    """

    source: str = Field(min_length=1)  # paper and table
    note: str = ""  # what differs from the reproduction (setting, missing entries)
    values: dict[str, dict[str, ReferenceValue]] = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> "ReferenceSpec":
        kinds = set(get_args(MemoryKind))
        for metric, methods in self.values.items():
            if metric not in REFERENCE_METRICS:
                raise ValueError(f"values: unknown metric '{metric}'; choose from {', '.join(REFERENCE_METRICS)}")
            for method in methods:
                if method.removesuffix(XML_SUFFIX) not in kinds:
                    raise ValueError(f"values.{metric}: unknown method '{method}'; use a memory kind "
                                     f"({', '.join(sorted(kinds))}), optionally with '{XML_SUFFIX}'")
        return self

    def describe(self) -> dict[str, Any]:
        """The space.json entry read by reports."""
        return self.model_dump(mode="json")


class Experiment(_Spec):
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
            kind = label.removesuffix(XML_SUFFIX)
            return {"memory.kind": kind, "xml.enabled": label.endswith(XML_SUFFIX)}
        return {self.compare_key: value}

    def trial_budget(self) -> dict[str | None, int]:
        """Search trials per compared value: an equal share of ``search.trials``
        (a grid visits its whole grid instead)."""
        labels = self.compare_labels
        if self.search.algorithm == "grid":
            from harness.sweep.space import grid_for

            return {label: math.prod(len(v) for v in grid_for(self, label).values())
                    for label in labels}
        share = max(1, self.search.trials // len(labels))
        return {label: share for label in labels}

    def run_config(self, overrides: dict[str, Any] | None = None) -> RunConfig:
        workers = {"train.workers": self.search.resources.workers}
        return build_config(self.base, {**workers, **(overrides or {})},
                            source=f"experiment {self.name}: base")

    def dataset(self) -> str:
        return str(self.base.get("data", {}).get("name", "digits"))

    def methods(self) -> list[str]:
        """The method labels this experiment compares (for ``harness list``)."""
        if self.compare_key == METHOD_KEY:
            return self.compare_labels  # type: ignore[return-value]
        cfg = self.run_config()
        method = method_of(cfg)
        if self.compare_key in ("memory.kind", "xml.enabled"):
            return [method_of(self.run_config(self.compare_overrides(v))) for v in self.compare_labels]
        if self.compare_key:
            return [f"{method} ({self.compare_key}={v})" for v in self.compare_labels]
        return [method]


def method_of(cfg: RunConfig) -> str:
    """The results tables' ``method``: memory kind, plus "+xml" when XML is on."""
    return method_name(cfg.memory.kind, cfg.xml.enabled)


# ---- loading -----------------------------------------------------------------------


def builtin_dir() -> Path:
    return Path(str(resources.files("search_spaces")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def find_experiment(name_or_path: str) -> Path:
    """An experiment YAML by name (``search_spaces/NAME.yaml``) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.is_dir():
            raise ConfigError(f"{p} is a folder; give an experiment YAML file or a name from `harness list`")
        if not p.is_file():
            raise ConfigError(f"experiment file not found: {p}")
        return p
    candidate = builtin_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(builtin_names()) or "(none)"
    raise ConfigError(
        f"unknown experiment '{name_or_path}'; known: {known} (or give a path to a YAML file)"
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
    exp = parse_experiment(raw, source=str(path))
    if overrides:
        # the file's own problems name the file, the overrides' name --set
        build_config(exp.base, source=f"{path}: base")
        parsed = parse_overrides(overrides)
        build_config(exp.base, parsed, source="--set")
        from harness.config import set_dotted

        base = copy.deepcopy(exp.base)
        for key, value in parsed.items():
            set_dotted(base, key, value)
        exp = exp.model_copy(update={"base": base})
    root = exp.base.get("data", {}).get("root")
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
    src = f"experiment {exp.name}"
    base_cfg = exp.run_config()
    flat = base_cfg.flat()
    search = exp.search
    if exp.compare_key and exp.compare_key != METHOD_KEY and not _config_has(exp.compare_key, flat):
        raise ConfigError(
            f"{src}: search.compare.key: '{exp.compare_key}' is not a config key "
            f"(use a dotted key such as memory.kind, or 'method')"
        )
    for key, spec in search.space.items():
        if not _config_has(key, flat):
            raise ConfigError(
                f"{src}: search.space.{key}: the run config has no key '{key}' "
                f"(see `harness train --help` for the config sections)"
            )
        for cond in spec.when or {}:
            if not _config_has(cond, flat):
                raise ConfigError(f"{src}: search.space.{key}.when: unknown config key '{cond}'")
        if search.algorithm == "grid":
            try:
                spec.grid_values()
            except ValueError as e:
                raise ConfigError(f"{src}: search.space.{key}: {e}") from None
    if not search.reproduction_seeds:
        raise ConfigError(f"{src}: search.reproduction_seeds: give at least one seed")
    base_workers = exp.base.get("train", {}).get("workers")
    if base_workers is not None and base_workers != search.resources.workers:
        raise ConfigError(
            f"{src}: base train.workers is {base_workers} but search.resources.workers is "
            f"{search.resources.workers}; set the worker count in search.resources only"
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
    from harness.sweep.space import corner_overrides

    for label in exp.compare_labels:
        for corner in ("low", "high"):
            overrides = corner_overrides(exp, label, corner)
            where = f"{src} (compare={label}, space at {corner})"
            cfg = build_config(exp.base, overrides, source=where)
            problem = positive_pair_problem(cfg)
            if problem:
                raise ConfigError(f"{where}: {problem}")
