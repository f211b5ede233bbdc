"""DataLoader throughput alone (decode + augment in workers, pinned memory on CUDA).

Generates a folder of JPEGs in the Stanford Online Products layout (``Ebay_train.txt``,
``Ebay_test.txt``, ``<category>_final/*.JPG``), builds the training set through
``create_datasets`` (the real SOP reader and timm transforms) and times the exact
loader the training loop uses (``ClassBalancedBatchSampler`` + ``collate_skip_corrupt``)
for each worker count. ``--dataset digits`` times the in-memory digits instead.
"images/CPU-s" counts the CPU time the loading processes really spent (from /proc), so
it is what one dedicated CPU sustains even on a busy machine; ``--gpu-rate R`` turns it
into the vCPUs a GPU training at R images/s needs (``harness doctor`` measures R).

    .venv/bin/python benchmarks/loader_speed.py --workers 0 1 2 [--gpu-rate 400 800]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from harness.config import DataConfig
from harness.data import create_datasets
from harness.doctor.throughput import MEAN, STD, loader_images_per_s, loader_rates, make_sop_folder, vcpus_needed


def time_loader(dataset, workers: int, batch_size: int, m: int, batches: int) -> float:
    return loader_images_per_s(dataset, workers, batch_size, m, batches)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["sop", "digits"], default="sop")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--jpeg-size", type=int, default=500, help="width of the generated JPEGs (SOP photos: ~500)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--augment", default="randaugment", choices=["none", "standard", "randaugment"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--gpu-rate", type=float, nargs="*", default=[],
                    help="GPU training images/s to size vCPUs for (harness doctor prints the node's)")
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
        print(f"{'workers':>8}{'images/s':>12}{'vs 0 workers':>14}{'images/CPU-s':>14}")
        base = None
        per_cpu = []
        for w in args.workers:
            rate, cpu_rate = loader_rates(train, w, args.batch_size, 4, args.batches)
            base = base or rate
            per_cpu.append(cpu_rate)
            print(f"{w:>8}{rate:>12.1f}{rate / base:>14.2f}{cpu_rate:>14.1f}")
        if per_cpu:
            per_cpu = statistics.median(per_cpu)
            print(f"images/s per CPU (median images per CPU-second of the loading processes): {per_cpu:.1f}")
            for g in args.gpu_rate:
                print(f"a GPU training {g:.0f} images/s needs {vcpus_needed(g, per_cpu)} vCPUs "
                      f"({vcpus_needed(g, per_cpu) - 1} loader workers + the training process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
