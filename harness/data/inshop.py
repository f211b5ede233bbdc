"""``inshop``: DeepFashion In-Shop Clothes Retrieval, ``list_eval_partition.txt``.

Format: line 1 the image count, line 2 ``image_name item_id evaluation_status``, then
``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery``.
The file may sit at ``root/`` or ``root/Eval/``; image paths resolve against ``root/``
or ``root/Img/``. Train items train; query vs gallery for the test (item ids shared).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/[Eval/]list_eval_partition.txt (line 1 count, line 2 'image_name item_id "
    "evaluation_status'), root/[Img/]img/<...>/<item_id>/<image>.jpg"
)
HEADER = ["image_name", "item_id", "evaluation_status"]


@register_dataset("inshop", layout=LAYOUT)
def read_inshop(root: Path) -> DatasetParts:
    path = next((p for p in (root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt") if p.is_file()), None)
    if path is None:
        raise DataError(f"inshop: list_eval_partition.txt not found under {root}; expected layout: {LAYOUT}")
    lines = path.read_text().splitlines()
    if len(lines) < 2 or lines[1].split() != HEADER:
        raise DataError(f"inshop: {path}: line 2 should be '{' '.join(HEADER)}'; expected layout: {LAYOUT}")
    rows = [ln.split() for ln in lines[2:] if ln.strip()]
    if any(len(r) != 3 or r[2] not in ("train", "query", "gallery") for r in rows):
        raise DataError(f"inshop: {path}: every line needs '<image> <item_id> train|query|gallery'")
    if lines[0].strip().isdigit() and int(lines[0]) != len(rows):
        raise DataError(f"inshop: {path}: line 1 says {lines[0].strip()} images but {len(rows)} are listed")
    first = rows[0][0] if rows else ""
    base = root / "Img" if rows and not (root / first).exists() and (root / "Img" / first).exists() else root
    item_ids = {item: i for i, item in enumerate(sorted({r[1] for r in rows}))}
    paths = np.array([str(base / r[0]) for r in rows], dtype=object)
    labels = np.array([item_ids[r[1]] for r in rows], dtype=np.int64)
    status = np.array([r[2] for r in rows])
    ds = ImageFileDataset(paths, labels)
    pick = lambda s: ds.subset(np.flatnonzero(status == s))  # noqa: E731
    return DatasetParts(train=pick("train"), test=RetrievalSplit(pick("query"), pick("gallery")))
