"""``sop``: Stanford Online Products (Song et al. 2016), official layout.

``Ebay_train.txt`` / ``Ebay_test.txt``: header ``image_id class_id super_class_id path``,
then one line per image, ``path`` relative to root. Classes 1-11318 train,
11319-22634 test (one-set), as the files define them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/Ebay_train.txt, root/Ebay_test.txt (header 'image_id class_id super_class_id path'), "
    "root/<category>_final/<image>.JPG"
)


def read_list(path: Path, header: list[str], layout: str, dataset: str) -> list[list[str]]:
    """Whitespace-separated rows of an annotation file after its header line."""
    if not path.is_file():
        raise DataError(f"{dataset}: {path} not found; expected layout: {layout}")
    lines = path.read_text().splitlines()
    if not lines or lines[0].split() != header:
        raise DataError(f"{dataset}: {path}: first line should be '{' '.join(header)}'; expected layout: {layout}")
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise DataError(f"{dataset}: {path}:{bad + 2}: expected {len(header)} fields, got {len(rows[bad])}")
    return rows


def _split(root: Path, name: str) -> ImageFileDataset:
    rows = read_list(root / name, ["image_id", "class_id", "super_class_id", "path"], LAYOUT, "sop")
    return ImageFileDataset([root / r[3] for r in rows], np.array([int(r[1]) for r in rows], dtype=np.int64))


@register_dataset("sop", layout=LAYOUT)
def read_sop(root: Path) -> DatasetParts:
    return DatasetParts(train=_split(root, "Ebay_train.txt"), test=RetrievalSplit(_split(root, "Ebay_test.txt")))
