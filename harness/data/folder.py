"""``folder``: your own images in an ImageFolder tree (``data.root`` names the folder).

``root/<class>/<image>`` (a seeded class-disjoint train/test split), or
``root/train/<class>/...`` and ``root/test/<class>/...`` (optionally ``root/val/...``),
where ``test/`` (and ``val/``) may hold ``query/<class>/...`` and ``gallery/<class>/...``
for a query/gallery protocol. Image files are those torchvision's ImageFolder reads;
hidden entries are skipped.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from harness.data.labeled_files import LabeledFiles, build_parts
from harness.data.datasets import DatasetParts, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/<class>/<image> (split seeded by class), or root/train/<class>/<image> and "
    "root/test/<class>/<image> [root/val/...; test/query/<class>/, test/gallery/<class>/]"
)


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(d: Path) -> tuple[list[Path], list[str]]:
    """ImageFolder's listing of ``d``: (paths, class names)."""
    classes = [p.name for p in _subdirs(d)]
    if not classes:
        return [], []
    samples = make_dataset(str(d), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                           allow_empty=True)
    return [Path(p) for p, _ in samples], [classes[i] for _, i in samples]


@register_dataset("folder", layout=LAYOUT, user_data=True)
def read_folder(root: Path) -> DatasetParts:
    top = {p.name for p in _subdirs(root)}
    files = LabeledFiles([], [], [], [], source=f"{root}/")
    if "train" in top or "test" in top:
        if not {"train", "test"} <= top:
            missing = "test" if "train" in top else "train"
            raise DataError(f"folder: {root}/ has {({'train', 'test'} - {missing}).pop()}/ but no {missing}/; "
                            f"expected layout: {LAYOUT}")
        parts = [("train", root / "train"), ("test", root / "test")] + ([("val", root / "val")] if "val" in top else [])
        for split, d in parts:
            sub = {p.name for p in _subdirs(d)}
            roles = [(r, d / r) for r in ("query", "gallery")] if sub == {"query", "gallery"} else [("", d)]
            for role, rd in roles:
                paths, labels = _images(rd)
                files.paths += paths
                files.labels += labels
                files.splits += [split] * len(paths)
                files.roles += [role] * len(paths)
    else:
        paths, labels = _images(root)
        files.paths, files.labels = paths, labels
        files.splits = files.roles = [""] * len(paths)
    if not files.paths:
        raise DataError(f"folder: no image files under {root}/; expected layout: {LAYOUT}")
    return build_parts("folder", files)
