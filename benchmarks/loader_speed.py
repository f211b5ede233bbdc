"""DataLoader throughput alone (decode + augment in workers, pinned memory on CUDA).

Generates a folder of JPEGs in the Stanford Online Products layout (``Ebay_train.txt``,
``Ebay_test.txt``, ``<category>_final/*.JPG``), builds the training set through
``create_datasets`` (the real SOP reader and timm transforms) and times the exact
loader the training loop uses (``ClassBalancedBatchSampler`` + ``collate_skip_corrupt``)
for each worker count. ``--dataset digits`` times the in-memory digits instead.

    .venv/bin/python benchmarks/loader_speed.py --workers 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.config import DataConfig
from harness.data import ClassBalancedBatchSampler, collate_skip_corrupt, create_datasets

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_sop_folder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = 0
    # Smooth random images (a low-res pattern upscaled): JPEG sizes like real photos.
    for fname, cls in (("Ebay_train.txt", range(1, classes + 1)), ("Ebay_test.txt", range(classes + 1, classes + 3))):
        lines = ["image_id class_id super_class_id path"]
        for c in cls:
            for j in range(per_class):
                n += 1
                rel = f"chair_final/{c}_{j}.JPG"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(small).resize((size, int(size * 0.75)), Image.BILINEAR).save(root / rel, quality=90)
                lines.append(f"{n} {c} 1 {rel}")
        (root / fname).write_text("\n".join(lines) + "\n")


def time_loader(dataset, workers: int, batch_size: int, m: int, batches: int) -> float:
    cuda = torch.cuda.is_available()
    sampler = ClassBalancedBatchSampler(dataset.labels, batch_size, m, seed=0, iters_per_epoch=batches + 1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_skip_corrupt, num_workers=workers,
        pin_memory=cuda, persistent_workers=workers > 0,
    )
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not throughput
    t0 = time.perf_counter()
    n = 0
    for images, _, _ in it:
        n += len(images)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["sop", "digits"], default="sop")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--jpeg-size", type=int, default=320, help="width of the generated JPEGs")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--augment", default="randaugment", choices=["none", "standard", "randaugment"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = None
        if args.dataset == "sop":
            make_sop_folder(Path(tmp), args.classes, args.per_class, args.jpeg_size)
            root = tmp
        cfg = DataConfig(name=args.dataset, root=root, image_size=args.image_size, augment=args.augment, val_fraction=0.0)
        train = create_datasets(cfg, seed=0, mean=MEAN, std=STD).train
        print(f"{args.dataset}: {len(train)} training images, {args.image_size}px, augment={args.augment}, "
              f"batch {args.batch_size}, pin_memory={torch.cuda.is_available()}, cores {os.cpu_count()}")
        print(f"{'workers':>8}{'images/s':>12}{'vs 0 workers':>14}")
        base = None
        for w in args.workers:
            rate = time_loader(train, w, args.batch_size, 4, args.batches)
            base = base or rate
            print(f"{w:>8}{rate:>12.1f}{rate / base:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
