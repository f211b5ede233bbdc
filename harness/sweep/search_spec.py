"""The ``search`` and ``reference`` sections of an experiment file, as pydantic models.

:class:`SearchSpec` (what to tune, how, what to compare, how to reproduce) and
:class:`ReferenceSpec` (published numbers shown beside ours); the experiment itself
is :class:`harness.sweep.experiment.Experiment`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.config import MemoryKind
from harness.results.contract import COL_METHOD, DEFAULT_METRIC, TEST_METRICS, XML_SUFFIX

METHOD_KEY = COL_METHOD  # `compare: {key: method}` compares the results' method column


class StrictModel(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ParamSpec(StrictModel):
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


class AshaSpec(StrictModel):
    """Asynchronous successive halving over epochs (ray.tune.schedulers.ASHAScheduler)."""

    kind: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    brackets: int = Field(1, ge=1)


class CompareSpec(StrictModel):
    key: str
    values: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "CompareSpec":
        labels = [str(v) for v in self.values]
        if len(set(labels)) != len(labels):
            raise ValueError("compare.values must be distinct")
        return self


class ResourceSpec(StrictModel):
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


class ObjectiveSpec(StrictModel):
    """What one search trial's objective averages (a Metric Learning Reality Check's
    protocol): ``folds`` class-disjoint validation folds of the training classes
    (``data.val_folds``; 1 = the usual single validation split) times ``seeds`` run
    seeds (the trial's seed, +1, ...). A trial trains ``folds * seeds`` runs in lockstep
    (trainables/objective.py) and reports their mean; reproductions are single runs."""

    folds: int = Field(1, ge=1)
    seeds: int = Field(1, ge=1)

    @property
    def runs(self) -> int:
        """Training runs per search trial."""
        return self.folds * self.seeds

    def units(self, seed: int) -> list[tuple[dict[str, int], dict[str, Any]]]:
        """``(label, dotted overrides)`` per run of a trial whose seed is ``seed``:
        label ``{"fold": i, "seed": s}`` (fold 0 without folds)."""
        out = []
        for fold in range(self.folds):
            for k in range(self.seeds):
                overrides: dict[str, Any] = {"seed": seed + k}
                if self.folds > 1:
                    overrides.update({"data.val_folds": self.folds, "data.val_fold": fold})
                out.append(({"fold": fold, "seed": seed + k}, overrides))
        return out


class SearchSpec(StrictModel):
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    # The whole search budget; each compared value gets an equal share of it.
    trials: int = Field(8, ge=1)
    metric: str = DEFAULT_METRIC
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
    # Each search trial's objective: the mean over class-disjoint folds and seeds.
    objective: ObjectiveSpec = ObjectiveSpec()


# Test metrics a reference may quote (the report's summary columns).
REFERENCE_METRICS = tuple(TEST_METRICS)


class ReferenceValue(StrictModel):
    mean: float
    std: float | None = Field(None, ge=0.0)


class ReferenceSpec(StrictModel):
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
