"""``cub``: CUB-200-2011, official layout; classes 1-100 train, 101-200 test (one-set).

``images.txt``: ``<image_id> <relative path under images/>``;
``image_class_labels.txt``: ``<image_id> <class_id>`` (1-based).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/images.txt ('<id> <path>'), root/image_class_labels.txt ('<id> <class 1-200>'), "
    "root/images/<NNN.Class_Name>/<image>.jpg"
)


def _pairs(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"cub: {path} not found; expected layout: {LAYOUT}")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"cub: {path}:{n}: expected '<image_id> <value>'; expected layout: {LAYOUT}")
        out[parts[0]] = parts[1].strip()
    return out


@register_dataset("cub", layout=LAYOUT)
def read_cub(root: Path) -> DatasetParts:
    images = _pairs(root / "images.txt")
    classes = _pairs(root / "image_class_labels.txt")
    missing = [i for i in images if i not in classes]
    if missing:
        raise DataError(f"cub: image id {missing[0]} has no line in image_class_labels.txt ({len(missing)} missing)")
    ids = list(images)
    paths = np.array([str(root / "images" / images[i]) for i in ids], dtype=object)
    labels = np.array([int(classes[i]) for i in ids], dtype=np.int64)
    ds = ImageFileDataset(paths, labels)
    train = labels <= 100
    return DatasetParts(
        train=ds.subset(np.flatnonzero(train)), test=RetrievalSplit(ds.subset(np.flatnonzero(~train)))
    )
