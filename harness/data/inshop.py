"""``inshop``: DeepFashion In-Shop Clothes Retrieval, ``list_eval_partition.txt``.

Format: line 1 the image count, line 2 ``image_name item_id evaluation_status``, then
``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery``.
The file may sit at ``root/`` or ``root/Eval/``; image paths resolve against ``root/``
or ``root/Img/``. Train items train; query vs gallery for the test (item ids shared).
Every line is checked (harness/data/annotations.py): three fields, a known status, each
image once, no item both in train and in query/gallery, paths under the root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.annotations import no_duplicates, read_lines, relative_path, short
from harness.data.datasets import DatasetParts, ImageFileDataset, RetrievalSplit, register_dataset
from harness.errors import DataError

LAYOUT = (
    "root/[Eval/]list_eval_partition.txt (line 1 count, line 2 'image_name item_id "
    "evaluation_status'), root/[Img/]img/<...>/<item_id>/<image>.jpg"
)
HEADER = ["image_name", "item_id", "evaluation_status"]
STATUSES = ("train", "query", "gallery")


@register_dataset("inshop", layout=LAYOUT)
def read_inshop(root: Path) -> DatasetParts:
    path = next((p for p in (root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt") if p.is_file()), None)
    if path is None:
        raise DataError(f"inshop: list_eval_partition.txt not found under {root}; expected layout: {LAYOUT}")
    where = f"inshop: {path}"
    lines = read_lines(path, "inshop", LAYOUT)
    # ASCII digits only: str.strip() also drops control characters such as \x1c and
    # isdigit() takes '²', neither of which int() reads.
    count_text = lines[0][1].strip(" \t")
    if lines[0][0] != 1 or not (count_text.isascii() and count_text.isdigit()):
        raise DataError(f"{where}:1: {short(count_text, 40)} is not the image count; expected line 1 to be "
                        f"a whole number; expected layout: {LAYOUT}")
    if len(lines) < 2 or lines[1][0] != 2 or lines[1][1].split() != HEADER:
        raise DataError(f"{where}:2: line 2 should be '{' '.join(HEADER)}'; expected layout: {LAYOUT}")
    rows = []
    for n, ln in lines[2:]:
        r = ln.split()
        if len(r) != 3:
            raise DataError(f"{where}:{n}: expected 3 fields '<image> <item_id> train|query|gallery', got {len(r)}")
        if r[2] not in STATUSES:
            raise DataError(f"{where}:{n}: evaluation_status {short(r[2])}; expected train, query or gallery")
        rows.append((n, r))
    count = int(count_text)
    if count != len(rows):
        raise DataError(f"{where}:1: says {count} images but {len(rows)} are listed; expected the two to agree "
                        "(a truncated file? re-download it)")
    if not rows:
        raise DataError(f"{where} lists no images; expected layout: {LAYOUT}")
    no_duplicates([(r[0], n) for n, r in rows], where, "image_name")
    train_items: dict[str, int] = {}
    for n, r in rows:
        if r[2] == "train":
            train_items.setdefault(r[1], n)
    both = next(((n, r[1]) for n, r in rows if r[2] != "train" and r[1] in train_items), None)
    if both is not None:
        n, item = both
        raise DataError(f"{where}:{n}: item_id {item!r} is a test item here but a train item on line "
                        f"{train_items[item]}; expected class-disjoint train and query/gallery items")
    first = rows[0][1][0]
    base = root / "Img" if not (root / first).exists() and (root / "Img" / first).exists() else root
    item_ids = {item: i for i, item in enumerate(sorted({r[1] for _, r in rows}))}
    paths = [relative_path(r[0], base, f"{where}:{n}") for n, r in rows]
    labels = np.array([item_ids[r[1]] for _, r in rows], dtype=np.int64)
    status = np.array([r[2] for _, r in rows])
    ds = ImageFileDataset(paths, labels)
    pick = lambda s: ds.subset(np.flatnonzero(status == s))  # noqa: E731
    if not (status == "query").any() or not (status == "gallery").any():
        missing = "query" if not (status == "query").any() else "gallery"
        raise DataError(f"{where}: no '{missing}' images; expected train, query and gallery lines")
    return DatasetParts(train=pick("train"), test=RetrievalSplit(pick("query"), pick("gallery")))
