"""Registry, validation carving, transforms, corrupt-image handling (digits + files)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing

from harness.config import DataConfig
from harness.data import (
    ImageFileDataset,
    collate_skip_corrupt,
    create_datasets,
    list_datasets,
    register_dataset,
)
from harness.data.registry import DatasetParts, RetrievalSplit, cap_images, get_dataset_info, split_validation
from harness.data.transforms import train_transform
from harness.errors import DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _classes(ds):
    return set(np.unique(ds.labels).tolist())


def test_registry_lists_all_datasets():
    assert {"digits", "fashion-mnist", "sop", "cub", "cars196", "inshop", "deepfashion2"} <= set(list_datasets())
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        get_dataset_info("nope")


def test_digits_bundle_class_disjoint_and_sized():
    b = create_datasets(DataConfig(name="digits", image_size=24), seed=0, mean=MEAN, std=STD)
    assert _classes(b.train) | _classes(b.val.query) == {0, 1, 2, 3, 4}
    assert not _classes(b.train) & _classes(b.val.query)
    assert _classes(b.test.query) == {5, 6, 7, 8, 9} and b.test.gallery is None
    image, label = b.train[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert isinstance(label, int) and label in _classes(b.train)
    # Normalised with the model's mean/std: the black background maps to -mean/std.
    for c in range(3):
        assert image[c].min().item() == pytest.approx(-MEAN[c] / STD[c], abs=1e-3)


def test_validation_split_is_seeded():
    def val_classes(seed):
        b = create_datasets(DataConfig(name="digits"), seed=seed, mean=MEAN, std=STD)
        return _classes(b.val.query)

    assert val_classes(3) == val_classes(3)
    assert len({frozenset(val_classes(s)) for s in range(6)}) > 1


def test_val_fraction_zero_gives_empty_validation():
    b = create_datasets(DataConfig(name="digits", val_fraction=0.0), seed=0, mean=MEAN, std=STD)
    assert len(b.val.query) == 0 and _classes(b.train) == {0, 1, 2, 3, 4}


def test_val_fraction_too_large_is_data_error():
    with pytest.raises(DataError, match="val_fraction"):
        create_datasets(DataConfig(name="digits", val_fraction=0.9), seed=0, mean=MEAN, std=STD)


def test_max_train_images_keeps_whole_classes_first():
    b = create_datasets(DataConfig(name="digits", max_train_images=200), seed=0, mean=MEAN, std=STD)
    assert len(b.train) == 200
    counts = np.bincount(b.train.labels)
    full = get_dataset_info("digits").reader(None).train
    full_counts = np.bincount(full.labels)
    # All but at most one class are complete.
    partial = [c for c in np.flatnonzero(counts) if counts[c] != full_counts[c]]
    assert len(partial) <= 1


def test_transforms_per_augment_mode():
    ra = train_transform("randaugment", 32, MEAN, STD)
    kinds = [type(t) for t in ra.transforms]
    assert RandAugment in kinds and RandomErasing in kinds
    erasing = next(t for t in ra.transforms if isinstance(t, RandomErasing))
    assert erasing.probability == pytest.approx(0.2)
    ra_op = next(t for t in ra.transforms if isinstance(t, RandAugment))
    assert ra_op.ops[0].magnitude == 9 and ra_op.ops[0].magnitude_std == 0.5
    std_names = [type(t).__name__ for t in train_transform("standard", 32, MEAN, STD).transforms]
    assert "RandomResizedCropAndInterpolation" in std_names and "RandomHorizontalFlip" in std_names
    assert "ColorJitter" not in std_names and "RandAugment" not in std_names
    none_names = [type(t).__name__ for t in train_transform("none", 32, MEAN, STD).transforms]
    assert not any("Random" in n for n in none_names)


def test_corrupt_image_skipped_and_counted(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (10, 10), (200, 10, 10)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:40])  # truncated JPEG
    missing = tmp_path / "missing.jpg"
    t = train_transform("none", 8, MEAN, STD)
    ds = ImageFileDataset([good, bad, missing, good], [0, 0, 1, 1], transform=t)
    assert ds[1] is None and ds[2] is None
    images, labels, n_skipped = collate_skip_corrupt([ds[i] for i in range(4)])
    assert n_skipped == 2 and images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_skip_corrupt)
    assert next(iter(loader))[2] == 2
    empty = collate_skip_corrupt([None, None])
    assert empty[0].numel() == 0 and empty[2] == 2


def test_datasets_pickle_small():
    b = create_datasets(DataConfig(name="digits"), seed=0, mean=MEAN, std=STD)
    blob = pickle.dumps(b.train)
    # uint8 8x8 images + labels: a few tens of kB, cheap to send to workers.
    assert len(blob) < 100_000
    restored = pickle.loads(blob)
    assert torch.equal(restored[3][0], b.train[3][0])


def test_register_dataset_decorator_round_trip():
    from harness.data import ArrayImageDataset

    @register_dataset("toy-test", layout="(none)", needs_root=False, crop_pct=1.0)
    def toy(root):
        imgs = np.zeros((12, 4, 4), np.uint8)
        y = np.repeat(np.arange(6), 2)
        return DatasetParts(ArrayImageDataset(imgs[:8], y[:8]), RetrievalSplit(ArrayImageDataset(imgs[8:], y[8:])))

    b = create_datasets(DataConfig(name="toy-test", image_size=8, val_fraction=0.25), 0, MEAN, STD)
    assert len(b.train) == 4 and len(b.val.query) == 4 and len(b.test.query) == 4


def test_split_validation_and_cap_do_not_mutate():
    full = get_dataset_info("digits").reader(None).train
    n = len(full)
    train, val = split_validation(full, 0.4, seed=1)
    capped = cap_images(train, 50, seed=1)
    assert len(full) == n and len(train) + len(val.query) == n and len(capped) == 50


@pytest.mark.slow
def test_loader_speed_benchmark_smoke():
    """benchmarks/loader_speed.py, tiny: SOP-layout JPEGs through the real loader, 0 and 1
    workers, for the baseline, the image cache, device augmentation and both."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "loader_speed.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--classes", "4", "--per-class", "4", "--jpeg-size", "48",
         "--image-size", "16", "--batch-size", "8", "--batches", "2", "--workers", "0", "1",
         "--gpu-rate", "800"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # columns: setting, workers, images/s, vs baseline, images per CPU-second, vs baseline
    rows = re.findall(r"^(baseline|\+ image cache|\+ device augment|cache \+ device augment)\s+(\d)"
                      r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", proc.stdout, re.M)
    assert [(r[0], r[1]) for r in rows] == [
        (s, w) for s in ("baseline", "+ image cache", "+ device augment", "cache + device augment") for w in "01"]
    assert all(float(r[2]) > 0 and float(r[4]) > 0 for r in rows)
    assert all(r[3] == r[5] == "1.00" for r in rows[:2])  # the baseline against itself
    assert re.search(r"^device augment \(randaugment, 16px, batch 8\) on cpu \(1 thread\): [\d.]+ images/s$",
                     proc.stdout, re.M)
    assert re.search(r"^a GPU training 800 images/s needs vCPUs .*: baseline \d+, \+ image cache \d+, "
                     r"\+ device augment \d+, cache \+ device augment \d+$", proc.stdout, re.M)
    assert "16 training images" in proc.stdout
