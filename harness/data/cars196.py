"""``cars196``: Stanford Cars, ``cars_annos.mat`` (read with scipy.io.loadmat, after
harness/data/matfile.py has checked its header and element tags: loadmat segfaults on some
damaged files).

``annotations`` is a struct array with fields ``relative_im_path`` (``car_ims/000001.jpg``),
``bbox_x1..bbox_y2``, ``class`` (1-196) and ``test``. The DML protocol ignores the
``test`` flag and the boxes: classes 1-98 train, 99-196 test (one-set), whole images.
Every record is checked: a text path under the root, listed once, an integer class 1-196
(an error names the record and field, ``annotations[17].class``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.annotations import no_duplicates, relative_path
from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.data.matfile import check_mat5
from harness.errors import DataError

LAYOUT = "root/cars_annos.mat (struct 'annotations': relative_im_path, class, ...), root/car_ims/<NNNNNN>.jpg"


def _scalar(x, where: str):
    # loadmat wraps every struct field in nested object / 1x1 arrays.
    while isinstance(x, np.ndarray):
        if x.size != 1:
            raise DataError(f"{where}: holds {x.size} values; expected one")
        x = x.reshape(-1)[0]
    return x.item() if isinstance(x, np.generic) else x


def _class(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not float(value).is_integer() or not 1 <= float(value) <= 196:
        raise DataError(f"{where}: {value!r} is not a class id; expected an integer 1-196")
    return int(value)


@register_dataset("cars196", layout=LAYOUT)
def read_cars196(root: Path) -> DatasetParts:
    from scipy.io import loadmat

    path = root / "cars_annos.mat"
    if not path.is_file():
        raise DataError(f"cars196: {path} not found; expected layout: {LAYOUT}")
    # loadmat segfaults on some damaged files (a tag's data type out of range, a complex
    # flag on a real array): check the header and every element tag first.
    check_mat5(path, "cars196")
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises several types for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cars196: cannot read {path} as a MATLAB file ({reason}); re-download it") from None
    annos = mat.get("annotations")
    if not isinstance(annos, np.ndarray) or annos.dtype.names is None \
            or not {"relative_im_path", "class"} <= set(annos.dtype.names):
        raise DataError(f"cars196: {path} lacks the 'annotations' struct with relative_im_path and class")
    annos = annos.reshape(-1)
    if len(annos) == 0:
        raise DataError(f"cars196: {path}: 'annotations' is empty; expected one record per image")
    paths, labels, rels = [], [], []
    for i, a in enumerate(annos):
        where = f"cars196: {path}: annotations[{i}]"
        rel = _scalar(a["relative_im_path"], f"{where}.relative_im_path")
        if not isinstance(rel, str) or not rel.strip():
            raise DataError(f"{where}.relative_im_path: {rel!r} is not a path; expected text like 'car_ims/000001.jpg'")
        paths.append(relative_path(rel, root, f"{where}.relative_im_path"))
        rels.append((rel, i))
        labels.append(_class(_scalar(a["class"], f"{where}.class"), f"{where}.class"))
    no_duplicates(rels, f"cars196: {path}: annotations", "relative_im_path", records=True)
    ds = ImageFileDataset(paths, np.array(labels, dtype=np.int64))
    train = ds.labels <= 98
    return DatasetParts(
        train=ds.subset(np.flatnonzero(train)), test=RetrievalSplit(ds.subset(np.flatnonzero(~train)))
    )
