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

from harness.data.annotations import parse_int, read_text, short
from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/{train,validation}/annos/<id>.json (source, pair_id, itemN: bounding_box, "
    "category_id, style) and root/{train,validation}/image/<id>.jpg"
)


def _int(value, where: str, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return parse_int(value if isinstance(value, str) else short(value), where, field)


def _box(value, where: str) -> list[float]:
    box = []
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        box = [float(v) for v in value]
    if len(box) != 4 or not all(np.isfinite(box)):
        raise DataError(f"{where}: {short(value)} is not a box; expected [x1, y1, x2, y2] (4 numbers)")
    return box


def read_items(split_dir: Path) -> list[tuple[str, tuple[int, int, int], list[float], str]]:
    """(image path, (pair_id, category_id, style), box, source) per item with style > 0."""
    annos = split_dir / "annos"
    if not annos.is_dir():
        raise DataError(f"deepfashion2: {annos} not found; expected layout: {LAYOUT}")
    out = []
    for path in sorted(annos.glob("*.json")):
        where = f"deepfashion2: {path}"
        try:
            anno = json.loads(read_text(path, "deepfashion2", LAYOUT))
        except ValueError as e:
            raise DataError(f"{where}:{getattr(e, 'lineno', '?')}: not valid JSON ({getattr(e, 'msg', e)}); "
                            "expected a DeepFashion2 annotation; re-download it") from None
        if not isinstance(anno, dict):
            raise DataError(f"{where}: a JSON {type(anno).__name__}; expected an object with source, pair_id, item1, ...")
        for key in ("source", "pair_id"):
            if key not in anno:
                raise DataError(f"{where}: no '{key}' field; expected a DeepFashion2 annotation (source, pair_id, itemN)")
        source = anno["source"]
        if source not in ("user", "shop"):
            raise DataError(f"{where}: source: {short(source)}; expected 'user' or 'shop'")
        pair_id = _int(anno["pair_id"], where, "pair_id")
        image = split_dir / "image" / (path.stem + ".jpg")
        for key, item in anno.items():
            if not (key.startswith("item") and key[4:].isdigit()):
                continue
            if not isinstance(item, dict):
                raise DataError(f"{where}: {key}: a JSON {type(item).__name__}; expected an object "
                                "(bounding_box, category_id, style)")
            style = _int(item.get("style", 0), where, f"{key}.style")
            if style <= 0:
                continue
            for field in ("bounding_box", "category_id"):
                if field not in item:
                    raise DataError(f"{where}: {key} lacks {field}; expected bounding_box, category_id and style")
            box = _box(item["bounding_box"], f"{where}: {key}.bounding_box")
            label = (pair_id, _int(item["category_id"], where, f"{key}.category_id"), style)
            out.append((str(image), label, box, source))
    if not out:
        raise DataError(f"deepfashion2: no items with style > 0 under {annos}; expected layout: {LAYOUT}")
    return out


def _dataset(items, label_ids, split: str) -> ImageFileDataset:
    return ImageFileDataset(
        [i[0] for i in items],
        np.array([label_ids[(split, *i[1])] for i in items], dtype=np.int64),
        boxes=np.array([i[2] for i in items], dtype=np.float32).reshape(-1, 4),
    )


@register_dataset("deepfashion2", layout=LAYOUT)
def read_deepfashion2(root: Path) -> DatasetParts:
    train = read_items(root / "train")
    val = read_items(root / "validation")
    # One integer per (split, triple), shared by query and gallery: pair ids are numbered
    # per split folder, so a triple of train and the same numbers in validation are other
    # products, and train and test stay class-disjoint.
    label_ids = {t: i for i, t in enumerate([("train", *t) for t in sorted({i[1] for i in train})]
                                            + [("validation", *t) for t in sorted({i[1] for i in val})])}
    query = [i for i in val if i[3] == "user"]
    gallery = [i for i in val if i[3] == "shop"]
    if not query or not gallery:
        raise DataError(f"deepfashion2: {root / 'validation'} needs both 'user' and 'shop' sources")
    return DatasetParts(
        train=_dataset(train, label_ids, "train"),
        test=RetrievalSplit(_dataset(query, label_ids, "validation"), _dataset(gallery, label_ids, "validation")),
    )
