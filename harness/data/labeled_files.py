"""Dataset parts from a flat list of labelled image files (the ``table`` and ``folder`` datasets).

Each file has a label name and optionally a split (train / test / val) and a role
(query / gallery). Without splits, half of the classes (seeded with ``SPLIT_SEED``, the
same for every run so reproductions share their test set) become the test classes, as
in SOP, CUB and Cars. Splits must be class-disjoint: metric learning is tested on
classes never seen in training. A split whose rows carry roles is a query/gallery
protocol (In-shop style); without roles it is one-set.

The datasets built here carry ``class_names`` (label id -> the user's label) and
``item_names`` (how a row is named in errors and pictures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit
from harness.errors import DataError

SPLITS = ("train", "test", "val")
ROLES = ("query", "gallery")
SPLIT_SEED = 0  # the seeded train/test class split when the data has no splits
TEST_CLASS_FRACTION = 0.5


@dataclass
class LabeledFiles:
    """Parallel columns: one entry per image (empty strings for absent split / role)."""

    paths: list[Path]
    labels: list[str]
    splits: list[str]
    roles: list[str]
    source: str  # "data.csv" / "root/": the prefix of error messages


def _sort_key(name: str):
    # Numeric labels in numeric order, then the rest alphabetically.
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def class_disjoint_test_classes(classes: Sequence[str], seed: int = SPLIT_SEED) -> set[str]:
    """The seeded half of ``classes`` used as test classes when no split is given."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(classes))
    n_test = int(round(TEST_CLASS_FRACTION * len(classes)))
    return {classes[i] for i in order[:n_test]}


def build_parts(dataset: str, files: LabeledFiles) -> DatasetParts:
    """Validate ``files`` and assemble train / test (/ val) as ``ImageFileDataset`` parts."""
    where = f"{dataset}: {files.source}"
    if not files.paths:
        raise DataError(f"{where}: no images found")
    classes = sorted(set(files.labels), key=_sort_key)
    class_id = {c: i for i, c in enumerate(classes)}
    splits = np.asarray(files.splits, dtype=object)
    roles = np.asarray(files.roles, dtype=object)
    has_split = splits != ""
    if has_split.any() and not has_split.all():
        raise DataError(
            f"{where}: {int((~has_split).sum())} image(s) have no split while others do; "
            "give every image a split (train/test/val) or none"
        )
    if not has_split.any():
        if len(classes) < 4:
            raise DataError(
                f"{where}: {len(classes)} class(es); the seeded class-disjoint train/test split "
                "needs at least 4 (2 to train, 2 to test)"
            )
        test_classes = class_disjoint_test_classes(classes)
        splits = np.array(["test" if lab in test_classes else "train" for lab in files.labels], dtype=object)
    labels = np.array([class_id[lab] for lab in files.labels], dtype=np.int64)
    names = np.asarray(classes, dtype=object)

    # Class-disjoint splits.
    label_sets = {s: set(labels[splits == s].tolist()) for s in SPLITS}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        shared = sorted(label_sets[a] & label_sets[b])
        if shared:
            raise DataError(
                f"{where}: {len(shared)} label(s) appear in both {a} and {b} (e.g. '{names[shared[0]]}'); "
                "splits must be class-disjoint: give each label one split"
            )
    if (roles[splits == "train"] != "").any():
        raise DataError(f"{where}: train images have a role; roles (query/gallery) apply to test and val images")

    ds = ImageFileDataset(files.paths, labels)
    ds.class_names = names

    def split_of(name: str) -> RetrievalSplit | None:
        idx = np.flatnonzero(splits == name)
        if len(idx) == 0:
            return None
        r = roles[idx]
        if (r == "").all():
            return RetrievalSplit(ds.subset(idx))
        if (r == "").any():
            raise DataError(
                f"{where}: {int((r == '').sum())} {name} image(s) have no role while others do; "
                f"give every {name} image a role (query/gallery) or none"
            )
        query, gallery = idx[r == "query"], idx[r == "gallery"]
        if len(query) == 0 or len(gallery) == 0:
            missing = "query" if len(query) == 0 else "gallery"
            raise DataError(f"{where}: the {name} images have roles but none is '{missing}'")
        return RetrievalSplit(ds.subset(query), ds.subset(gallery))

    train_idx = np.flatnonzero(splits == "train")
    if len(label_sets["train"]) < 2:
        raise DataError(f"{where}: {len(label_sets['train'])} training class(es); training needs at least 2")
    test = split_of("test")
    if test is None:
        raise DataError(f"{where}: no test images; give some classes split 'test' (or no split column)")
    return DatasetParts(train=ds.subset(train_idx), test=test, val=split_of("val"))
