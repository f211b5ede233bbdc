"""Dataset registry: every dataset is reachable by name from ``data.name``.

A dataset module registers a *reader* ``fn(root: Path | None) -> DatasetParts`` that
parses the official layout into file paths (or a small uint8 array) and labels, with
the standard class-disjoint train / test split. ``create_datasets`` then carves the
validation classes out of the training classes and attaches the timm transforms.

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

from harness.errors import DataError

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

    def load_image(self, index: int) -> Image.Image:
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


_DATASETS: dict[str, DatasetInfo] = {}


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
        _DATASETS[name] = DatasetInfo(
            name, reader, layout, needs_root, default_roots, crop_pct,
            root_is_file=root_is_file, user_data=user_data,
        )
        return reader

    return deco


def _ensure_builtin() -> None:
    # The dataset modules register themselves on import.
    from harness.data import cars196, cub, deepfashion2, digits, fashion_mnist, glyphs, inshop, sop  # noqa: F401
    from harness.data import folder, table  # noqa: F401


def list_datasets() -> list[str]:
    _ensure_builtin()
    return sorted(_DATASETS)


def get_dataset_info(name: str) -> DatasetInfo:
    _ensure_builtin()
    if name not in _DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def resolve_root(info: DatasetInfo, root: str | Path | None) -> Path | None:
    """The root to read: the given one, else the first existing default root."""
    if root is not None:
        p = Path(root).expanduser()
        if info.root_is_file:
            if not p.is_file():
                raise DataError(f"dataset '{info.name}': data.root {p} is not a file; expected: {info.layout}")
            return p
        if not p.is_dir():
            raise DataError(f"dataset '{info.name}': root {p} is not a directory; expected layout: {info.layout}")
        return p
    for candidate in info.default_roots:
        if Path(candidate).is_dir():
            return Path(candidate)
    if info.needs_root:
        hint = f" (or install it at {info.default_roots[0]})" if info.default_roots else ""
        raise DataError(
            f"dataset '{info.name}' needs data.root / --root{hint}; expected layout: {info.layout}"
        )
    return None


def read_dataset(name: str, root: str | Path | None) -> DatasetParts:
    """The official train / test split of ``name``, without transforms."""
    info = get_dataset_info(name)
    return info.reader(resolve_root(info, root))


def split_validation(train: LabeledDataset, val_fraction: float, seed: int):
    """Carve whole classes (seeded) out of ``train``: -> (train, val one-set split).

    ``val_fraction`` of the classes (at least 2 when positive, so validation has
    negatives) go to validation; at least 2 classes stay for training. With
    ``val_fraction == 0`` validation is empty (its metrics are NaN).
    """
    classes = np.unique(train.labels)
    n_val = 0 if val_fraction <= 0 else max(2, int(round(val_fraction * len(classes))))
    if val_fraction > 0 and len(classes) - n_val < 2:
        raise DataError(
            f"data.val_fraction={val_fraction} leaves fewer than 2 training classes "
            f"(of {len(classes)}); lower data.val_fraction"
        )
    rng = np.random.default_rng(seed)
    val_classes = rng.permutation(classes)[:n_val]
    is_val = np.isin(train.labels, val_classes)
    return train.subset(np.flatnonzero(~is_val)), RetrievalSplit(train.subset(np.flatnonzero(is_val)))


def cap_images(train: LabeledDataset, max_images: int | None, seed: int) -> LabeledDataset:
    """Keep at most ``max_images``, whole classes first (seeded), so batches stay m-per-class."""
    if max_images is None or len(train) <= max_images:
        return train
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(np.unique(train.labels))
    # Stable sort by the permuted class rank keeps each class contiguous.
    rank = {c: r for r, c in enumerate(order.tolist())}
    keys = np.fromiter((rank[c] for c in train.labels.tolist()), dtype=np.int64, count=len(train))
    keep = np.argsort(keys, kind="stable")[:max_images]
    return train.subset(np.sort(keep))


def create_datasets(cfg, seed: int, mean, std) -> DataBundle:
    """``DataConfig`` -> train (with training transform), val and test (eval transform)."""
    from harness.data.transforms import eval_transform, train_transform

    info = get_dataset_info(cfg.name)
    parts = info.reader(resolve_root(info, cfg.root))
    if parts.val is not None:  # predefined validation classes: nothing to carve
        train, val = parts.train, parts.val
    else:
        train, val = split_validation(parts.train, cfg.val_fraction, seed)
    if len(np.unique(train.labels)) < 2:
        raise DataError(f"dataset '{cfg.name}': fewer than 2 training classes under {cfg.root}")
    train = cap_images(train, cfg.max_train_images, seed)
    t_train = train_transform(cfg.augment, cfg.image_size, mean, std, info.crop_pct)
    t_eval = eval_transform(cfg.image_size, mean, std, info.crop_pct)

    def ev(split: RetrievalSplit) -> RetrievalSplit:
        return RetrievalSplit(
            split.query.with_transform(t_eval),
            None if split.gallery is None else split.gallery.with_transform(t_eval),
        )

    return DataBundle(train.with_transform(t_train), ev(val), ev(parts.test))


def collate_skip_corrupt(batch):
    """Default collate minus the corrupt items -> (images, labels, n_skipped)."""
    kept = [b for b in batch if b is not None]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), n_skipped
    images = torch.stack([b[0] for b in kept])
    labels = torch.tensor([b[1] for b in kept], dtype=torch.long)
    return images, labels, n_skipped


__all__ = [
    "LabeledDataset",
    "ImageFileDataset",
    "ArrayImageDataset",
    "RetrievalSplit",
    "DataBundle",
    "DatasetParts",
    "DatasetInfo",
    "register_dataset",
    "list_datasets",
    "get_dataset_info",
    "resolve_root",
    "read_dataset",
    "split_validation",
    "cap_images",
    "create_datasets",
    "collate_skip_corrupt",
]
