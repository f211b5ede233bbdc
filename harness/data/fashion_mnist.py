"""``fashion-mnist``: the standard IDX files (``.gz`` or raw).

Read from ``data.root`` or ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``). Classes 0-4 train (from ``train-*``), classes 5-9 test
(one-set, from ``t10k-*``): class-disjoint, and the test set stays the official one.
"""

from __future__ import annotations

import gzip
import zlib
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


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file: magic (0, 0, dtype 0x08, ndim), big-endian dims, uint8 data.
    ``ndim``: the dimensions the file must have (3 for images, 1 for labels)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"fashion-mnist: cannot read {path} ({e}); re-download the IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"fashion-mnist: {path}: bytes 0-3 are not a uint8 IDX magic number "
                        "(expected 00 00 08 <ndim>); re-download it")
    if ndim is not None and raw[3] != ndim:
        raise DataError(f"fashion-mnist: {path}: byte 3 says {raw[3]} dimensions; expected {ndim} "
                        f"({'images N x rows x columns' if ndim == 3 else 'labels N'}); is it the right file?")
    offset = 4 + 4 * raw[3]
    if len(raw) < offset:
        raise DataError(f"fashion-mnist: {path} is truncated inside its header ({len(raw)} bytes, the header "
                        f"needs {offset}); re-download it")
    dims = np.frombuffer(raw, dtype=">u4", count=raw[3], offset=4).astype(np.int64)
    if len(raw) - offset != int(np.prod(dims, dtype=object)):
        raise DataError(f"fashion-mnist: {path} is truncated or too long (header says {tuple(dims.tolist())}, "
                        f"{int(np.prod(dims, dtype=object))} bytes of data; the file has {len(raw) - offset}); "
                        "re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


@register_dataset(
    "fashion-mnist", layout=LAYOUT, default_roots=("/usr/share/datasets/fashion-mnist",), crop_pct=1.0
)
def read_fashion_mnist(root: Path) -> DatasetParts:
    arrays = {k: read_idx(find_idx(root, v), 3 if k.endswith("images") else 1) for k, v in FILES.items()}
    tr_x, tr_y = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    te_x, te_y = arrays["test_images"], arrays["test_labels"].astype(np.int64)
    if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
        raise DataError(f"fashion-mnist: image and label counts differ under {root}; re-download the files")
    tr, te = tr_y <= 4, te_y >= 5
    return DatasetParts(
        train=ArrayImageDataset(tr_x[tr], tr_y[tr]),
        test=RetrievalSplit(ArrayImageDataset(te_x[te], te_y[te])),
    )
