"""Dataset registry: every dataset is reachable by name from ``data.name``.

A dataset module registers a *reader* ``fn(root: Path | None) -> DatasetParts`` that
parses the official layout into file paths (or a small uint8 array) and labels, with
the standard class-disjoint train / test split (:func:`harness.data.datasets.register_dataset`).
This module imports the built-in dataset modules, so their readers are registered
before any look-up. ``create_datasets`` then carves the validation classes out of the
training classes and attaches the timm transforms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The built-in dataset modules register their readers on import.
from harness.data import cars196, cub, deepfashion2, digits, fashion_mnist, glyphs, inshop, sop  # noqa: F401
from harness.data import folder, table  # noqa: F401
from harness.data.datasets import (  # noqa: F401  (re-exported: the package's dataset types)
    DATASETS,
    ArrayImageDataset,
    DataBundle,
    DatasetInfo,
    DatasetParts,
    ImageFileDataset,
    LabeledDataset,
    RetrievalSplit,
    collate_skip_corrupt,
    register_dataset,
)
from harness.data.device_augment import loader_transform
from harness.data.image_cache import ImageCache
from harness.data.transforms import eval_transform, train_transform
from harness.errors import DataError


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def resolve_root(info: DatasetInfo, root: str | Path | None) -> Path | None:
    """The root to read: the given one, else the first existing default root."""
    if root is not None:
        p = Path(root).expanduser()
        if info.root_is_file:
            if not p.is_file():
                raise DataError(f"dataset '{info.name}': data.root {p} is not a file; expected: {info.layout}")
            return p
        if not p.is_dir():
            raise DataError(f"dataset '{info.name}': root {p} is not a directory; expected layout: {info.layout}")
        return p
    for candidate in info.default_roots:
        if Path(candidate).is_dir():
            return Path(candidate)
    if info.needs_root:
        hint = f" (or install it at {info.default_roots[0]})" if info.default_roots else ""
        raise DataError(
            f"dataset '{info.name}' needs data.root / --root{hint}; expected layout: {info.layout}"
        )
    return None


def read_dataset(name: str, root: str | Path | None) -> DatasetParts:
    """The official train / test split of ``name``, without transforms."""
    info = get_dataset_info(name)
    return info.reader(resolve_root(info, root))


def split_validation(train: LabeledDataset, val_fraction: float, seed: int):
    """Carve whole classes (seeded) out of ``train``: -> (train, val one-set split).

    ``val_fraction`` of the classes (at least 2 when positive, so validation has
    negatives) go to validation; at least 2 classes stay for training. With
    ``val_fraction == 0`` validation is empty (its metrics are NaN).
    """
    classes = np.unique(train.labels)
    n_val = 0 if val_fraction <= 0 else max(2, int(round(val_fraction * len(classes))))
    if val_fraction > 0 and len(classes) - n_val < 2:
        # at least 2 validation classes are carved, so a lower fraction helps only above that
        fix = ("lower data.val_fraction" if n_val > 2 else
               "give the data at least 4 training classes, or set data.val_fraction=0 (no validation)")
        raise DataError(
            f"data.val_fraction={val_fraction} carves {n_val} validation classes from the "
            f"{len(classes)} training classes, leaving {len(classes) - n_val} (training needs 2); {fix}"
        )
    rng = np.random.default_rng(seed)
    return _carve(train, rng.permutation(classes)[:n_val])


def _carve(train: LabeledDataset, val_classes) -> tuple[LabeledDataset, RetrievalSplit]:
    """(train without ``val_classes``, the one-set validation split of those classes)."""
    is_val = np.isin(train.labels, val_classes)
    return train.subset(np.flatnonzero(~is_val)), RetrievalSplit(train.subset(np.flatnonzero(is_val)))


def fold_classes(labels, folds: int, seed: int) -> list[np.ndarray]:
    """The training classes in ``folds`` class-disjoint parts (a permutation seeded
    with ``seed``, cut into near-equal parts): every class is in exactly one part."""
    classes = np.unique(labels)
    if len(classes) < 2 * folds:
        raise DataError(
            f"data.val_folds={folds} needs at least {2 * folds} training classes (2 per fold), "
            f"the data has {len(classes)}; lower search.objective.folds"
        )
    order = np.random.default_rng([seed, folds]).permutation(classes)
    return np.array_split(order, folds)


def split_fold(train: LabeledDataset, folds: int, fold: int, seed: int):
    """Validation = part ``fold`` of :func:`fold_classes`, training = the other parts."""
    return _carve(train, fold_classes(train.labels, folds, seed)[fold])


def cap_images(train: LabeledDataset, max_images: int | None, seed: int) -> LabeledDataset:
    """Keep at most ``max_images``, whole classes first (seeded), so batches stay m-per-class."""
    if max_images is None or len(train) <= max_images:
        return train
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(np.unique(train.labels))
    # Stable sort by the permuted class rank keeps each class contiguous.
    rank = {c: r for r, c in enumerate(order.tolist())}
    keys = np.fromiter((rank[c] for c in train.labels.tolist()), dtype=np.int64, count=len(train))
    keep = np.argsort(keys, kind="stable")[:max_images]
    return train.subset(np.sort(keep))


def run_parts(cfg, seed: int) -> tuple[LabeledDataset, RetrievalSplit, RetrievalSplit]:
    """``DataConfig`` -> (train, val, test) as a run with ``seed`` trains on them, without
    transforms: the validation classes carved out, the training images capped. The one
    definition shared by :func:`create_datasets` and the sweep's pre-flight check
    (harness/sweep/preflight.py), which reads only the labels."""
    info = get_dataset_info(cfg.name)
    parts = info.reader(resolve_root(info, cfg.root))
    if parts.val is not None:  # predefined validation classes: nothing to carve
        if cfg.val_folds is not None:
            raise DataError(
                f"dataset '{cfg.name}' has a predefined validation split, so it cannot be cut "
                f"into data.val_folds={cfg.val_folds} folds; remove search.objective.folds"
            )
        train, val = parts.train, parts.val
    elif cfg.val_folds is not None:
        train, val = split_fold(parts.train, cfg.val_folds, cfg.val_fold, cfg.fold_seed)
    else:
        train, val = split_validation(parts.train, cfg.val_fraction, seed)
    if len(np.unique(train.labels)) < 2:
        raise DataError(f"dataset '{cfg.name}': fewer than 2 training classes under {cfg.root}")
    return cap_images(train, cfg.max_train_images, seed), val, parts.test


def create_datasets(cfg, seed: int, mean, std, augment_on: str = "loader",
                    cache_root: Path | None = None) -> DataBundle:
    """``DataConfig`` -> train (with training transform), val and test (eval transform).

    ``augment_on``: ``data.augment_on`` resolved for the training device
    (:func:`harness.data.device_augment.resolve_augment_on`); with ``device`` the
    training set yields uint8 crops (timm's crop and flip) for :class:`~harness.data.device_augment.DeviceAugment`.
    ``data.image_cache`` makes every split load through the pre-resized image cache,
    kept under ``cache_root`` (default: ``$HARNESS_CACHE_DIR/images``).
    """
    info = get_dataset_info(cfg.name)
    train, val, test = run_parts(cfg, seed)
    if augment_on == "device":
        t_train = loader_transform(cfg.augment, cfg.image_size, info.crop_pct)
    elif augment_on == "loader":
        t_train = train_transform(cfg.augment, cfg.image_size, mean, std, info.crop_pct)
    else:
        raise ValueError(f"create_datasets: augment_on must be resolved to loader or device, got '{augment_on}'")
    t_eval = eval_transform(cfg.image_size, mean, std, info.crop_pct)
    cache = ImageCache.for_size(cfg.image_size, info.crop_pct, cache_root) if cfg.image_cache else None

    def ev(split: RetrievalSplit) -> RetrievalSplit:
        return RetrievalSplit(
            split.query.with_image_cache(cache).with_transform(t_eval),
            None if split.gallery is None else split.gallery.with_image_cache(cache).with_transform(t_eval),
        )

    train = train.with_image_cache(cache)

    return DataBundle(train.with_transform(t_train), ev(val), ev(test))
