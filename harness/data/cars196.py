"""``cars196``: Stanford Cars, ``cars_annos.mat`` (read with scipy.io.loadmat).

``annotations`` is a struct array with fields ``relative_im_path`` (``car_ims/000001.jpg``),
``bbox_x1..bbox_y2``, ``class`` (1-196) and ``test``. The DML protocol ignores the
``test`` flag and the boxes: classes 1-98 train, 99-196 test (one-set), whole images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = "root/cars_annos.mat (struct 'annotations': relative_im_path, class, ...), root/car_ims/<NNNNNN>.jpg"


def _scalar(x):
    # loadmat wraps every struct field in nested object / 1x1 arrays.
    while isinstance(x, np.ndarray):
        x = x.reshape(-1)[0]
    return x


@register_dataset("cars196", layout=LAYOUT)
def read_cars196(root: Path) -> DatasetParts:
    from scipy.io import loadmat

    path = root / "cars_annos.mat"
    if not path.is_file():
        raise DataError(f"cars196: {path} not found; expected layout: {LAYOUT}")
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises several types for a bad file
        raise DataError(f"cars196: cannot read {path} as a MATLAB file ({e}); re-download it") from None
    annos = mat.get("annotations")
    if annos is None or annos.dtype.names is None or not {"relative_im_path", "class"} <= set(annos.dtype.names):
        raise DataError(f"cars196: {path} lacks the 'annotations' struct with relative_im_path and class")
    annos = annos.reshape(-1)
    paths = np.array([str(root / str(_scalar(a["relative_im_path"]))) for a in annos], dtype=object)
    labels = np.array([int(_scalar(a["class"])) for a in annos], dtype=np.int64)
    ds = ImageFileDataset(paths, labels)
    train = labels <= 98
    return DatasetParts(
        train=ds.subset(np.flatnonzero(train)), test=RetrievalSplit(ds.subset(np.flatnonzero(~train)))
    )
