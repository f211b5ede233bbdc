"""``deepfashion2``: DeepFashion2 consumer-to-shop retrieval.

Layout: ``root/{train,validation}/annos/<id>.json`` beside ``image/<id>.jpg``. Each JSON
has ``source`` ("user" | "shop"), ``pair_id`` and ``item1``, ``item2``, ... with
``bounding_box`` [x1, y1, x2, y2], ``category_id`` and ``style``. A retrieval label is
the (pair_id, category_id, style) triple, items with style > 0 only (style 0 marks an
item without a shop counterpart); the ground-truth box is cropped. ``train`` trains;
``validation`` is the test split: query = source "user", gallery = source "shop".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/{train,validation}/annos/<id>.json (source, pair_id, itemN: bounding_box, "
    "category_id, style) and root/{train,validation}/image/<id>.jpg"
)


def read_items(split_dir: Path) -> list[tuple[str, tuple[int, int, int], list[float], str]]:
    """(image path, (pair_id, category_id, style), box, source) per item with style > 0."""
    annos = split_dir / "annos"
    if not annos.is_dir():
        raise DataError(f"deepfashion2: {annos} not found; expected layout: {LAYOUT}")
    out = []
    for path in sorted(annos.glob("*.json")):
        try:
            anno = json.loads(path.read_text())
            source, pair_id = anno["source"], int(anno["pair_id"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"deepfashion2: {path}: not a DeepFashion2 annotation ({e!r}); re-download it") from None
        image = split_dir / "image" / (path.stem + ".jpg")
        for key, item in anno.items():
            if not (key.startswith("item") and key[4:].isdigit() and isinstance(item, dict)):
                continue
            style = int(item.get("style", 0))
            if style <= 0:
                continue
            try:
                box = [float(v) for v in item["bounding_box"]]
                label = (pair_id, int(item["category_id"]), style)
            except (KeyError, TypeError, ValueError):
                raise DataError(f"deepfashion2: {path}: {key} lacks bounding_box / category_id") from None
            out.append((str(image), label, box, source))
    if not out:
        raise DataError(f"deepfashion2: no items with style > 0 under {annos}; expected layout: {LAYOUT}")
    return out


def _dataset(items, label_ids) -> ImageFileDataset:
    return ImageFileDataset(
        [i[0] for i in items],
        np.array([label_ids[i[1]] for i in items], dtype=np.int64),
        boxes=np.array([i[2] for i in items], dtype=np.float32).reshape(-1, 4),
    )


@register_dataset("deepfashion2", layout=LAYOUT)
def read_deepfashion2(root: Path) -> DatasetParts:
    train = read_items(root / "train")
    val = read_items(root / "validation")
    # One integer per triple, shared by query and gallery (and disjoint from train ids).
    label_ids = {t: i for i, t in enumerate(sorted({i[1] for i in train} | {i[1] for i in val}))}
    query = [i for i in val if i[3] == "user"]
    gallery = [i for i in val if i[3] == "shop"]
    if not query or not gallery:
        raise DataError(f"deepfashion2: {root / 'validation'} needs both 'user' and 'shop' sources")
    return DatasetParts(
        train=_dataset(train, label_ids),
        test=RetrievalSplit(_dataset(query, label_ids), _dataset(gallery, label_ids)),
    )
