"""``sop``: Stanford Online Products (Song et al. 2016), official layout.

``Ebay_train.txt`` / ``Ebay_test.txt``: header ``image_id class_id super_class_id path``,
then one line per image, ``path`` relative to root. Classes 1-11318 train,
11319-22634 test (one-set), as the files define them. Every line is checked
(harness/data/annotations.py): integer ids, four fields, each image id and path once,
no class in both files, paths under the root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.annotations import no_duplicates, parse_int, read_lines, relative_path
from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/Ebay_train.txt, root/Ebay_test.txt (header 'image_id class_id super_class_id path'), "
    "root/<category>_final/<image>.JPG"
)
HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_list(path: Path, header: list[str], layout: str, dataset: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of each whitespace-separated row after the header line."""
    lines = read_lines(path, dataset, layout)
    n0, first = lines[0]
    if n0 != 1 or first.split() != header:
        raise DataError(f"{dataset}: {path}:1: first line should be '{' '.join(header)}'; expected layout: {layout}")
    rows = [(n, ln.split()) for n, ln in lines[1:]]
    for n, r in rows:
        if len(r) != len(header):
            raise DataError(f"{dataset}: {path}:{n}: expected {len(header)} fields "
                            f"({' '.join(header)}), got {len(r)}")
    return rows


def _split(root: Path, name: str) -> tuple[ImageFileDataset, dict[int, int]]:
    """The file's images and {class id: first line}."""
    path = root / name
    where = f"sop: {path}"
    rows = read_list(path, HEADER, LAYOUT, "sop")
    if not rows:
        raise DataError(f"{where} lists no images after its header; expected layout: {LAYOUT}")
    labels, paths, classes = [], [], {}
    for n, (image_id, class_id, super_id, rel) in rows:
        parse_int(image_id, f"{where}:{n}", "image_id")
        label = parse_int(class_id, f"{where}:{n}", "class_id")
        parse_int(super_id, f"{where}:{n}", "super_class_id")
        paths.append(relative_path(rel, root, f"{where}:{n}"))
        labels.append(label)
        classes.setdefault(label, n)
    no_duplicates([(r[0], n) for n, r in rows], where, "image_id")
    no_duplicates([(r[3], n) for n, r in rows], where, "path")
    return ImageFileDataset(paths, np.array(labels, dtype=np.int64)), classes


@register_dataset("sop", layout=LAYOUT)
def read_sop(root: Path) -> DatasetParts:
    train, train_classes = _split(root, "Ebay_train.txt")
    test, test_classes = _split(root, "Ebay_test.txt")
    shared = sorted(set(train_classes) & set(test_classes))
    if shared:
        c = shared[0]
        raise DataError(
            f"sop: class_id {c} is in both {root / 'Ebay_train.txt'} (line {train_classes[c]}) and "
            f"{root / 'Ebay_test.txt'} (line {test_classes[c]}) ({len(shared)} shared); expected "
            "class-disjoint files (train 1-11318, test 11319-22634)"
        )
    return DatasetParts(train=train, test=RetrievalSplit(test))
