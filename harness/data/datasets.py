"""What a dataset module needs: the dataset classes, a reader's return types, and
``register_dataset``, the decorator that enters a reader in the table that
:mod:`harness.data.registry` looks datasets up in.

Datasets hold only paths, labels and optional boxes (or a small array), and decode in
``__getitem__``: they pickle cheaply to DataLoader workers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from harness.data.image_cache import ImageCache

# A corrupt or truncated image raises one of these inside PIL / the OS.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class LabeledDataset(torch.utils.data.Dataset):
    """Images with int64 labels; ``__getitem__`` -> (Tensor[3,H,W], label) or None if corrupt."""

    labels: np.ndarray

    def __init__(self, labels, transform: Callable | None = None):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int):
        try:
            image = self.load_image(index)
            if self.transform is not None:
                image = self.transform(image)
        except _DECODE_ERRORS:
            # Skipped and counted by collate_skip_corrupt; never a crash mid-epoch.
            return None
        return image, int(self.labels[index])

    def subset(self, indices) -> "LabeledDataset":
        """A copy holding only ``indices`` (same transform)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def with_transform(self, transform: Callable | None) -> "LabeledDataset":
        out = copy.copy(self)
        out.transform = transform
        return out

    def with_image_cache(self, cache: ImageCache | None) -> "LabeledDataset":
        """A copy that loads through ``cache`` (data.image_cache); in-memory images
        have nothing to decode, so they ignore it."""
        return self

    def num_classes(self) -> int:
        return int(len(np.unique(self.labels)))


class ImageFileDataset(LabeledDataset):
    """Image files on disk (+ optional [x1, y1, x2, y2] boxes cropped after decoding)."""

    def __init__(self, paths, labels, boxes=None, transform: Callable | None = None):
        super().__init__(labels, transform)
        # Strings in a numpy array: one object per dataset rather than per path, and
        # fancy indexing for subsets.
        self.paths = np.asarray([str(p) for p in paths], dtype=object)
        self.boxes = None if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")

    image_cache: ImageCache | None = None

    def with_image_cache(self, cache: ImageCache | None) -> "ImageFileDataset":
        out = copy.copy(self)
        out.image_cache = cache
        return out

    def load_image(self, index: int) -> Image.Image:
        if self.image_cache is None:
            return self.decode_image(index)
        box = None if self.boxes is None else self.boxes[index]
        return self.image_cache.load(self.paths[index], box, lambda: self.decode_image(index))

    def decode_image(self, index: int) -> Image.Image:
        """The image file decoded (and cropped to its box), without the cache."""
        with Image.open(self.paths[index]) as im:
            image = im.convert("RGB")
        if self.boxes is not None:
            x1, y1, x2, y2 = self.boxes[index]
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            image = image.crop((int(x1), int(y1), int(round(x2)), int(round(y2))))
        return image

    def subset(self, indices) -> "ImageFileDataset":
        idx = np.asarray(indices, dtype=np.int64)
        out = copy.copy(self)
        out.paths = self.paths[idx]
        out.labels = self.labels[idx]
        out.boxes = None if self.boxes is None else self.boxes[idx]
        return out


class ArrayImageDataset(LabeledDataset):
    """Small images held in memory as uint8 [N, H, W] (grey) or [N, H, W, 3] (RGB)."""

    def __init__(self, images: np.ndarray, labels, transform: Callable | None = None):
        super().__init__(labels, transform)
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def subset(self, indices) -> "ArrayImageDataset":
        idx = np.asarray(indices, dtype=np.int64)
        out = copy.copy(self)
        out.images = self.images[idx]
        out.labels = self.labels[idx]
        return out


@dataclass
class RetrievalSplit:
    query: LabeledDataset
    gallery: LabeledDataset | None = None  # None: one-set mode (SOP, CUB, Cars)


@dataclass
class DataBundle:
    train: LabeledDataset  # training classes minus the validation classes
    val: RetrievalSplit  # class-disjoint, carved from the training classes
    test: RetrievalSplit  # used only for the final evaluation


@dataclass
class DatasetParts:
    """What a reader returns: the official split, before validation carving and transforms."""

    train: LabeledDataset
    test: RetrievalSplit
    # A predefined validation split (table/folder datasets); None: carved from train.
    val: RetrievalSplit | None = None


@dataclass
class DatasetInfo:
    name: str
    reader: Callable[[Path | None], DatasetParts]
    layout: str  # the expected layout under root, shown in errors and by `data check`
    needs_root: bool = True
    default_roots: tuple[str, ...] = ()
    # Eval crop: timm's 0.875 (resize 256 -> centre crop 224) for photos, 1.0 for
    # small centred images (digits, Fashion-MNIST) where a crop would cut the object.
    crop_pct: float = 0.875
    extra: dict = field(default_factory=dict)
    # data.root names a file (a CSV / Parquet table) rather than a folder.
    root_is_file: bool = False
    # Data the user assembled (table, folder): `data check` fails on classes with one
    # image and on query labels without a gallery image, not only on missing files.
    user_data: bool = False


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    *,
    layout: str,
    needs_root: bool = True,
    default_roots: tuple[str, ...] = (),
    crop_pct: float = 0.875,
    root_is_file: bool = False,
    user_data: bool = False,
):
    """Decorator: register ``reader(root) -> DatasetParts`` under ``name``."""

    def deco(reader: Callable[[Path | None], DatasetParts]):
        DATASETS[name] = DatasetInfo(
            name, reader, layout, needs_root, default_roots, crop_pct,
            root_is_file=root_is_file, user_data=user_data,
        )
        return reader

    return deco


def collate_skip_corrupt(batch):
    """Default collate minus the corrupt items -> (images, labels, n_skipped)."""
    kept = [b for b in batch if b is not None]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), n_skipped
    images = torch.stack([b[0] for b in kept])
    labels = torch.tensor([b[1] for b in kept], dtype=torch.long)
    return images, labels, n_skipped
