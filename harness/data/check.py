"""Layout validation behind ``harness data check``.

Reads a dataset through its real reader (so a missing or malformed annotation file is
the reader's one-line DataError with the expected layout), counts classes and images
per split, and lists image files that are missing or that PIL cannot decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.registry import ImageFileDataset, LabeledDataset, get_dataset_info, resolve_root


@dataclass
class SplitCount:
    split: str  # "train" | "test"
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

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unreadable


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
    report = CheckReport(name, resolved, info.layout)
    test = parts.test
    sets = [("train", "all", parts.train)]
    if test.gallery is None:
        sets.append(("test", "all", test.query))
    else:
        sets += [("test", "query", test.query), ("test", "gallery", test.gallery)]
    for split, role, ds in sets:
        _, counts = np.unique(ds.labels, return_counts=True)
        per_class = (int(counts.min()), float(np.median(counts)), int(counts.max())) if len(counts) else (0, 0.0, 0)
        report.splits.append(SplitCount(split, role, len(counts), len(ds), per_class))
        _file_problems(ds, verify, report.missing, report.unreadable)
    return report
