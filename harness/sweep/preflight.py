"""The sweep's pre-flight check: every compared value's search space against its data.

Run by :func:`harness.sweep.plan.prepare_sweep` before anything is written and before
Ray starts. It reads the sizes of the data each trial will train on (the training part
after the validation carve and the image cap, the validation and test parts:
:func:`harness.data.registry.run_parts`, labels only, for the search seed and every
reproduction seed) and checks every configuration the search can draw: each compared
value's base config with every categorical choice and both ends of every numeric range
(conditional parameters only where their ``when`` holds).

- memory capacity against the batch: a ``memory.fraction`` that gives less than one
  batch becomes one batch (:meth:`MemoryConfig.capacity`), said in one warning line; an
  explicit ``memory.size`` below the batch is an error;
- ``train.samples_per_class`` against the images per class: an error when most training
  classes hold fewer (most class blocks would repeat images);
- classes per batch against the training classes: fewer classes than blocks is a warning
  (the sampler fills several blocks with one class);
- validation classes left after carving (``split_validation``'s error), and a validation
  split on which ``search.metric`` has a query with a positive, a test split likewise.

The prototype count needs no check against the data or the embedding size: the XML
ridge fit is regularised (positive definite for any count) and the prototypes live in
the backbone's feature space, whatever ``model.embedding_size`` is.

An error is one :class:`ConfigError` line naming the compared value, the key, its value,
the data's numbers and the fix (exit 2, nothing written).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from harness.config import RunConfig, build_config
from harness.errors import ConfigError, DataError
from harness.sweep.space import fixed_values

if TYPE_CHECKING:
    from harness.data.datasets import RetrievalSplit
    from harness.sweep.experiment import Experiment


@dataclass(frozen=True)
class DataSizes:
    """What a run with one seed trains and is measured on (labels only)."""

    dataset: str
    seed: int
    train_images: int
    train_classes: int
    median_per_class: float  # images per training class
    val_classes: int
    val_queries: int  # validation queries with at least one positive
    test_queries: int  # test queries with at least one positive


def queries_with_positive(split: RetrievalSplit) -> int:
    """Queries of a split that have a positive (one-set: another image of their class)."""
    labels = np.asarray(split.query.labels)
    if len(labels) == 0:
        return 0
    if split.gallery is None:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        return int((counts[inverse] >= 2).sum())
    return int(np.isin(labels, np.asarray(split.gallery.labels)).sum())


def measure(config: RunConfig) -> DataSizes:
    """The data sizes of a run of ``config`` (its dataset, split seeds and image cap)."""
    # here, not at the top: the dataset readers import torch and torchvision, which the
    # checks of `harness sweep` that run before this one do not need
    from harness.data.registry import run_parts

    train, val, test = run_parts(config.data, config.seed)
    _, counts = np.unique(train.labels, return_counts=True)
    return DataSizes(
        dataset=config.data.name, seed=config.seed, train_images=len(train.labels),
        train_classes=len(counts), median_per_class=float(np.median(counts)),
        val_classes=len(np.unique(val.query.labels)), val_queries=queries_with_positive(val),
        test_queries=queries_with_positive(test),
    )


def search_variants(exp: Experiment, label: str | None) -> Iterator[dict[str, Any]]:
    """Overrides of every configuration the search of ``label`` can draw, up to the
    inside of numeric ranges: each categorical choice, each end of a numeric range,
    combined; a parameter whose ``when`` does not hold is left out, as the search does."""
    params = list(exp.search.space.items())

    def walk(i: int, overrides: dict[str, Any], values: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(params):
            yield overrides
            return
        key, spec = params[i]
        if not spec.active(values):
            yield from walk(i + 1, overrides, values)
            return
        if spec.type == "categorical":
            options = list(spec.choices or [])
        else:
            options = [spec.low, spec.high]
            if spec.type == "int":
                options = [int(v) for v in options]
        for value in options:
            yield from walk(i + 1, {**overrides, key: value}, {**values, key: value})

    yield from walk(0, exp.compare_overrides(label), fixed_values(exp, label))


@dataclass
class Finding:
    error: bool
    key: str
    value: Any
    text: str  # the data's numbers and what happens or what to do


def check_config(cfg: RunConfig, sizes: DataSizes, metric: str) -> list[Finding]:
    """What is wrong with (error) or adapted in (warning) ``cfg`` on data of ``sizes``."""
    out: list[Finding] = []
    data = f"'{sizes.dataset}'"
    batch, m = cfg.train.batch_size, cfg.train.samples_per_class
    mem = cfg.memory
    if mem.kind != "none":
        if mem.size is not None and mem.size < batch:
            out.append(Finding(True, "memory.size", mem.size,
                               f"holds less than one batch (train.batch_size {batch}); set memory.size "
                               f"to at least {batch}, or give memory.fraction"))
        elif mem.size is None and mem.fraction_capacity(sizes.train_images) < batch:
            fraction = 0.5 if mem.fraction is None else mem.fraction
            out.append(Finding(False, "memory.fraction", fraction,
                               f"of the {sizes.train_images} training images of {data} is "
                               f"{_count(mem.fraction_capacity(sizes.train_images), 'embedding')}, less than one "
                               f"batch: those trials use a memory of one batch ({batch})"))
    if sizes.median_per_class < m:
        fix = max(2, int(sizes.median_per_class))
        out.append(Finding(True, "train.samples_per_class", m,
                           f"exceeds the images of most training classes of {data} (median "
                           f"{sizes.median_per_class:g} per class, {sizes.train_classes} classes): "
                           f"most class blocks would repeat images; set train.samples_per_class to "
                           f"{fix} (and train.batch_size to a multiple of it) or give every class at "
                           f"least {m} images"))
    per_batch = batch // m
    if sizes.train_classes < per_batch:
        out.append(Finding(False, "train.batch_size", batch,
                           f"/ samples_per_class {m} asks for {per_batch} classes per batch but {data} "
                           f"trains on {sizes.train_classes} classes: a batch repeats classes (several "
                           f"blocks of {m} per class)"))
    if metric.startswith("val.") and sizes.val_queries == 0:
        if sizes.val_classes == 0:
            out.append(Finding(True, "data.val_fraction", cfg.data.val_fraction,
                               f"leaves no validation classes in {data}, but search.metric {metric} is "
                               "measured on them (every objective would be NaN, no method reproduced); "
                               "set data.val_fraction to 0.1 or more"))
        else:
            out.append(Finding(True, "data.val_fraction", cfg.data.val_fraction,
                               f"carves {sizes.val_classes} validation classes of {data} with one image "
                               f"each, so search.metric {metric} has no query with a positive (every "
                               "objective NaN); give every class at least 2 images"))
    if sizes.test_queries == 0:
        out.append(Finding(True, "data.name", sizes.dataset,
                           "has no test class with 2 images, so every test metric would be NaN; give "
                           "the test classes at least 2 images each"))
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _value_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def preflight(exp: Experiment) -> list[str]:
    """Check every compared value's search space against its data; -> warning lines.

    Raises one ConfigError line (or the reader's DataError) when a configuration cannot
    train on this data."""
    src = f"experiment {exp.name}"
    sizes_cache: dict[str, DataSizes] = {}
    # (key, value) -> [text on the smallest training part seen, its images, compared values]
    warnings: dict[tuple[str, str], list[Any]] = {}
    seeds = list(dict.fromkeys(exp.search.reproduction_seeds))
    for label in exp.compare_labels:
        where = f"{src}" + (f" ({exp.compare_key}={label})" if label is not None else "")
        for overrides in search_variants(exp, label):
            workers = {"train.workers": exp.search.resources.workers}
            shown = ", ".join(f"{k}={_value_text(v)}" for k, v in overrides.items()
                              if k in exp.search.space)
            cfg = build_config(exp.base, {**workers, **overrides},
                               source=f"{where}" + (f", search at {shown}" if shown else ""))
            for seed in dict.fromkeys([cfg.seed, *seeds]):
                run_cfg = cfg if seed == cfg.seed else cfg.model_copy(update={"seed": seed})
                key = json.dumps([run_cfg.data.model_dump(mode="json"), seed], sort_keys=True)
                if key not in sizes_cache:
                    sizes_cache[key] = measure(run_cfg)
                sizes = sizes_cache[key]
                for f in check_config(run_cfg, sizes, exp.search.metric):
                    if f.error:
                        raise ConfigError(f"{where}: {f.key} {_value_text(f.value)} {f.text}")
                    entry = warnings.setdefault((f.key, _value_text(f.value)), [f.text, sizes.train_images, []])
                    if sizes.train_images < entry[1]:
                        entry[0], entry[1] = f.text, sizes.train_images
                    if label is not None and label not in entry[2]:
                        entry[2].append(label)
    lines = []
    for (key, value), (text, _, labels) in warnings.items():
        who = f" ({exp.compare_key}={', '.join(labels)})" if labels else ""
        lines.append(f"{key} {value} {text}{who}")
    return lines


def check_data_readable(exp: Experiment, address: str | None) -> list[str]:
    """:func:`preflight`, except that with ``--address`` data the driver cannot read is a
    warning (the trials read it on the cluster's nodes)."""
    try:
        return preflight(exp)
    except DataError as e:
        if address is None:
            raise DataError(f"experiment {exp.name}: {e}") from None
        return [f"the pre-flight check could not read the data on this machine ({e}); the trials read "
                "it on the cluster's nodes"]
