"""``digits``: scikit-learn's embedded 8x8 digits (no download), the default dataset.

Classes 0-4 train, 5-9 test (one-set). The 8x8 grey images (0..16) are stored as a
small uint8 array and upscaled to ``data.image_size`` RGB by the transform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.datasets import ArrayImageDataset, DatasetParts, RetrievalSplit, register_dataset


@register_dataset("digits", layout="(none: scikit-learn's embedded load_digits)", needs_root=False, crop_pct=1.0)
def read_digits(root: Path | None = None) -> DatasetParts:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = d.target.astype(np.int64)
    train = labels <= 4
    return DatasetParts(
        train=ArrayImageDataset(images[train], labels[train]),
        test=RetrievalSplit(ArrayImageDataset(images[~train], labels[~train])),
    )
