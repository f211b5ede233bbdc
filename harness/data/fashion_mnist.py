"""``fashion-mnist``: the standard IDX files (``.gz`` or raw).

Read from ``data.root`` or ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``). Classes 0-4 train (from ``train-*``), classes 5-9 test
(one-set, from ``t10k-*``): class-disjoint, and the test set stays the official one.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from harness.data.datasets import ArrayImageDataset, DatasetParts, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte}[.gz]"
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"fashion-mnist: {root / stem}[.gz] not found; expected layout: {LAYOUT}")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file: magic (0, 0, dtype 0x08, ndim), big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"fashion-mnist: cannot read {path} ({e}); re-download the IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"fashion-mnist: {path} is not a uint8 IDX file (bad magic); re-download it")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"fashion-mnist: {path} is truncated (header says {tuple(dims)}); re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


@register_dataset(
    "fashion-mnist", layout=LAYOUT, default_roots=("/usr/share/datasets/fashion-mnist",), crop_pct=1.0
)
def read_fashion_mnist(root: Path) -> DatasetParts:
    arrays = {k: read_idx(find_idx(root, v)) for k, v in FILES.items()}
    tr_x, tr_y = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    te_x, te_y = arrays["test_images"], arrays["test_labels"].astype(np.int64)
    if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
        raise DataError(f"fashion-mnist: image and label counts differ under {root}; re-download the files")
    tr, te = tr_y <= 4, te_y >= 5
    return DatasetParts(
        train=ArrayImageDataset(tr_x[tr], tr_y[tr]),
        test=RetrievalSplit(ArrayImageDataset(te_x[te], te_y[te])),
    )
