"""Layout validation behind ``harness data check``.

Reads a dataset through its real reader (so a missing or malformed annotation file is
the reader's one-line DataError with the expected layout), counts classes and images
per split, and lists image files that are missing or that PIL cannot decode. For data
the user assembled (``table``, ``folder``) it also fails on classes with a single image
(no positive to retrieve or to train with) and query labels absent from the gallery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.registry import ImageFileDataset, LabeledDataset, get_dataset_info, resolve_root


@dataclass
class SplitCount:
    split: str  # "train" | "val" | "test"
    role: str  # "all" (one-set) | "query" | "gallery"
    n_classes: int
    n_images: int
    per_class: tuple[int, float, int] = (0, 0.0, 0)  # images per class: min, median, max


@dataclass
class CheckReport:
    name: str
    root: Path | None
    layout: str
    splits: list[SplitCount] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    # "split: label" entries; problems only for user data (else shown as notes).
    single_image: list[str] = field(default_factory=list)
    no_gallery_match: list[str] = field(default_factory=list)
    strict_classes: bool = False

    @property
    def ok(self) -> bool:
        classes_ok = not self.strict_classes or not (self.single_image or self.no_gallery_match)
        return not self.missing and not self.unreadable and classes_ok


def _label_name(ds: LabeledDataset, label: int) -> str:
    names = getattr(ds, "class_names", None)
    return str(names[label]) if names is not None else str(label)


def _class_problems(split: str, parts, report: "CheckReport") -> None:
    for role, ds in parts:
        if role != "all":  # one gallery image per class is fine; queries are checked below
            continue
        labels, counts = np.unique(ds.labels, return_counts=True)
        report.single_image += [f"{split}: {_label_name(ds, c)}" for c in labels[counts == 1]]
    if len(parts) == 2:  # query / gallery
        (_, q), (_, g) = parts
        lonely = np.setdiff1d(np.unique(q.labels), np.unique(g.labels))
        report.no_gallery_match += [f"{split}: {_label_name(q, c)}" for c in lonely]


def _file_problems(ds: LabeledDataset, verify: bool, missing: list[str], unreadable: list[str]) -> None:
    if not isinstance(ds, ImageFileDataset):
        return  # in-memory arrays: nothing on disk to check
    for path in dict.fromkeys(ds.paths.tolist()):  # unique, in order (DeepFashion2 repeats images)
        p = Path(path)
        if not p.is_file():
            missing.append(path)
            continue
        if verify:
            try:
                with Image.open(p) as im:
                    im.verify()
            except Exception:  # PIL raises many types for a broken file
                unreadable.append(path)


def check_dataset(name: str, root: str | Path | None, verify: bool = True) -> CheckReport:
    info = get_dataset_info(name)
    resolved = resolve_root(info, root)
    parts = info.reader(resolved)
    report = CheckReport(name, resolved, info.layout, strict_classes=info.user_data)
    grouped = [("train", [("all", parts.train)])]
    for split, rs in (("val", parts.val), ("test", parts.test)):
        if rs is not None:
            grouped.append((split, [("all", rs.query)] if rs.gallery is None
                            else [("query", rs.query), ("gallery", rs.gallery)]))
    for split, sets in grouped:
        for role, ds in sets:
            _, counts = np.unique(ds.labels, return_counts=True)
            per_class = (int(counts.min()), float(np.median(counts)), int(counts.max())) if len(counts) else (0, 0.0, 0)
            report.splits.append(SplitCount(split, role, len(counts), len(ds), per_class))
            _file_problems(ds, verify, report.missing, report.unreadable)
        _class_problems(split, sets, report)
    return report
