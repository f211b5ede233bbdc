"""DataLoader throughput: today's loader against the image cache and device augmentation.

Generates a folder of JPEGs in the Stanford Online Products layout (``Ebay_train.txt``,
``Ebay_test.txt``, ``<category>_final/*.JPG``), builds the training set through
``create_datasets`` (the real SOP reader and transforms) and times the exact loader
the training loop uses (``ClassBalancedBatchSampler`` + ``collate_skip_corrupt``) for
each worker count and each of four settings, in one run:

* ``baseline``: today's path, decode + augment (timm, CPU) in the workers;
* ``+ image cache``: ``data.image_cache: true`` (filled before timing, as after the
  first epoch): the workers read the pre-resized image instead of decoding the JPEG;
* ``+ device augment``: ``data.augment_on: device``: what the workers still do (decode,
  timm's random-resized crop and flip, as uint8); the rest of the augmentation
  (RandAugment, normalisation, erasing) is timed separately on the
  device present (``device augment`` line: images/s of ``DeviceAugment``);
* ``cache + device augment``: both.

"images/CPU-s" counts the CPU time the loading processes really spent (from /proc), so
it is what one dedicated CPU sustains even on a busy machine; ratios are against the
baseline with the same worker count, measured in the same run. ``--gpu-rate R`` turns
each setting's median images/CPU-s into the vCPUs a GPU training at R images/s needs
(``harness doctor`` measures R). ``--dataset digits`` times the in-memory digits
(baseline only: nothing to decode or cache).

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
from harness.core.device import pick_device
from harness.data import create_datasets
from harness.doctor.throughput import (
    MEAN,
    STD,
    device_augment_images_per_s,
    loader_rates,
    make_sop_folder,
    sop_training_set,
    vcpus_needed,
)

# name -> (data.image_cache, data.augment_on)
SETTINGS = {
    "baseline": (False, "loader"),
    "+ image cache": (True, "loader"),
    "+ device augment": (False, "device"),
    "cache + device augment": (True, "device"),
}


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
        if args.dataset == "sop":
            root = Path(tmp) / "sop"
            make_sop_folder(root, args.classes, args.per_class, args.jpeg_size)
            sets = {name: sop_training_set(root, args.image_size, args.augment, image_cache=cache,
                                           augment_on=on, make=False,
                                           cache_root=Path(tmp) / "cache")  # never the user's cache
                    for name, (cache, on) in SETTINGS.items()}
        else:
            cfg = DataConfig(name="digits", image_size=args.image_size, augment=args.augment, val_fraction=0.0)
            sets = {"baseline": create_datasets(cfg, seed=0, mean=MEAN, std=STD).train}
        n = len(sets["baseline"])
        print(f"{args.dataset}: {n} training images, {args.image_size}px, augment={args.augment}, "
              f"batch {args.batch_size}, pin_memory={torch.cuda.is_available()}, cores {os.cpu_count()}, "
              f"torch threads 1")
        print(f"{'setting':<24}{'workers':>8}{'images/s':>10}{'vs baseline':>13}{'images/CPU-s':>14}{'vs baseline':>13}")
        base: dict[int, tuple[float, float]] = {}
        per_cpu: dict[str, list[float]] = {name: [] for name in sets}
        for name, train in sets.items():
            for w in args.workers:
                rate, cpu_rate = loader_rates(train, w, args.batch_size, 4, args.batches)
                base.setdefault(w, (rate, cpu_rate))
                per_cpu[name].append(cpu_rate)
                print(f"{name:<24}{w:>8}{rate:>10.1f}{rate / base[w][0]:>13.2f}{cpu_rate:>14.1f}"
                      f"{cpu_rate / base[w][1]:>13.2f}")
        medians = {name: statistics.median(v) for name, v in per_cpu.items() if v}
        b = medians.get("baseline")
        print("median images per CPU-second of the loading processes (what one loader vCPU sustains):")
        for name, m in medians.items():
            print(f"  {name:<24}{m:>8.1f}  ({m / b:.2f}x baseline)")
        if args.dataset == "sop":
            device = pick_device("auto")
            aug = device_augment_images_per_s(device, args.augment, args.image_size, batch=args.batch_size)
            print(f"device augment ({args.augment}, {args.image_size}px, batch {args.batch_size}) on "
                  f"{device.type}{' (1 thread)' if device.type == 'cpu' else ''}: {aug:.1f} images/s")
        for g in args.gpu_rate:
            needs = ", ".join(f"{name} {vcpus_needed(g, m)}" for name, m in medians.items())
            print(f"a GPU training {g:.0f} images/s needs vCPUs (loader workers + the training process): {needs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
