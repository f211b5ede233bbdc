"""``cub``: CUB-200-2011, official layout; classes 1-100 train, 101-200 test (one-set).

``images.txt``: ``<image_id> <relative path under images/>``;
``image_class_labels.txt``: ``<image_id> <class_id>`` (1-based). Every line is checked
(harness/data/annotations.py): integer ids, the fields each file needs, each image id
once, class ids 1-200, paths under ``images/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.annotations import no_duplicates, parse_int, read_lines, relative_path
from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/images.txt ('<id> <path>'), root/image_class_labels.txt ('<id> <class 1-200>'), "
    "root/images/<NNN.Class_Name>/<image>.jpg"
)


def _pairs(path: Path, value: str, exact: bool) -> dict[int, tuple[str, int]]:
    """{image id: (value, line)}; ``exact``: the value is one field (else the rest of the line)."""
    where = f"cub: {path}"
    rows = []
    for n, line in read_lines(path, "cub", LAYOUT):
        parts = line.split() if exact else line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{where}:{n}: expected 2 fields '<image_id> <{value}>', got {len(parts)}; "
                            f"expected layout: {LAYOUT}")
        rows.append((parse_int(parts[0], f"{where}:{n}", "image_id"), parts[1].strip(), n))
    no_duplicates([(str(r[0]), r[2]) for r in rows], where, "image_id")
    return {i: (v, n) for i, v, n in rows}


@register_dataset("cub", layout=LAYOUT)
def read_cub(root: Path) -> DatasetParts:
    images = _pairs(root / "images.txt", "path", exact=False)
    classes = _pairs(root / "image_class_labels.txt", "class_id", exact=True)
    missing = [i for i in images if i not in classes]
    if missing:
        raise DataError(f"cub: image id {missing[0]} (images.txt line {images[missing[0]][1]}) has no line in "
                        f"{root / 'image_class_labels.txt'} ({len(missing)} missing); expected one per image")
    ids = list(images)
    where = f"cub: {root / 'image_class_labels.txt'}"
    labels = []
    for i in ids:
        value, n = classes[i]
        label = parse_int(value, f"{where}:{n}", "class_id")
        if not 1 <= label <= 200:
            raise DataError(f"{where}:{n}: class_id {label} is outside 1-200; expected CUB-200's class ids")
        labels.append(label)
    paths = [relative_path(images[i][0], root / "images", f"cub: {root / 'images.txt'}:{images[i][1]}") for i in ids]
    ds = ImageFileDataset(paths, np.array(labels, dtype=np.int64))
    train = ds.labels <= 100
    return DatasetParts(
        train=ds.subset(np.flatnonzero(train)), test=RetrievalSplit(ds.subset(np.flatnonzero(~train)))
    )
