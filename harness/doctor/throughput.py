"""Throughput probes for sizing a trial's CPUs: loader images/s per CPU, GPU step images/s.

Used by ``harness doctor`` (on the node itself) and ``benchmarks/loader_speed.py``. A
GPU trial needs ``ceil(gpu_rate / per_cpu_rate)`` loader workers, plus one CPU for the
training process, to keep the GPU busy.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_sop_folder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> None:
    """JPEGs in the Stanford Online Products layout (smooth random images: photo-like sizes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    n = 0
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


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (Linux /proc), in seconds."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def loader_rates(dataset, workers: int, batch_size: int = 32, m: int = 4, batches: int = 6) -> tuple[float, float]:
    """-> (images/s of wall time, images per CPU-second) of the training loader
    (class-balanced sampler, persistent workers), excluding start-up and the first batch.

    The second counts the CPU time the loading processes (the workers, or this process
    without workers) actually spent: what one dedicated CPU sustains, even on a busy
    machine where wall time is shared with other work."""
    import os

    from harness.data import ClassBalancedBatchSampler, collate_skip_corrupt

    sampler = ClassBalancedBatchSampler(dataset.labels, batch_size, m, seed=0, iters_per_epoch=batches + 1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_skip_corrupt, num_workers=workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
    )
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers] if workers else [os.getpid()]
    c0, t0 = _cpu_seconds(pids), time.perf_counter()
    n = sum(len(images) for images, _, _ in it)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(pids) - c0
    return n / wall, n / max(cpu, 1e-9)


def loader_images_per_s(dataset, workers: int, batch_size: int = 32, m: int = 4, batches: int = 6) -> float:
    """Images/s (wall time) of the training loader; see :func:`loader_rates`."""
    return loader_rates(dataset, workers, batch_size, m, batches)[0]


# The experiment whose data settings size a GPU trial's CPUs (harness doctor).
SHIPPED_GPU_EXPERIMENT = "sop-axbn"


def shipped_gpu_data():
    """``data`` of the shipped SOP experiment as a GPU trial runs it: its image size,
    augmentation and image cache, with ``augment_on`` resolved for a CUDA device."""
    import yaml

    from harness.config import build_config
    from harness.data.device_augment import resolve_augment_on
    from harness.sweep.experiment import find_experiment

    path = find_experiment(SHIPPED_GPU_EXPERIMENT)
    data = build_config(yaml.safe_load(path.read_text())["base"], source=str(path)).data
    return data.model_copy(update={"augment_on": resolve_augment_on(data.augment_on, torch.device("cuda"))})


def describe_data(cfg) -> str:
    """``224 px, randaugment on the GPU, image cache on`` (the doctor's throughput row)."""
    where = "on the GPU" if cfg.augment_on == "device" else "in the loader"
    return f"{cfg.image_size} px, {cfg.augment} {where}, image cache {'on' if cfg.image_cache else 'off'}"


def warm_cache(dataset) -> None:
    """Load every image once, so ``data.image_cache`` holds them all (the later epochs)."""
    if getattr(dataset, "image_cache", None) is not None:
        for i in range(len(dataset)):
            dataset.load_image(i)


def sop_training_set(root: Path, image_size: int = 224, augment: str = "randaugment",
                     classes: int = 24, per_class: int = 8, jpeg_size: int = 500,
                     image_cache: bool = False, augment_on: str = "loader", make: bool = True,
                     cache_root: Path | None = None):
    """The training set of a generated SOP folder at ``root``; ``augment_on``: loader or
    device (resolved); with ``image_cache`` the cache (under ``cache_root``, default
    ``$HARNESS_CACHE_DIR/images``) is filled first."""
    from harness.config import DataConfig
    from harness.data import create_datasets

    if make:
        make_sop_folder(root, classes, per_class, jpeg_size)
    cfg = DataConfig(name="sop", root=str(root), image_size=image_size, augment=augment, val_fraction=0.0,
                     image_cache=image_cache)
    train = create_datasets(cfg, seed=0, mean=MEAN, std=STD, augment_on=augment_on, cache_root=cache_root).train
    warm_cache(train)
    return train


def per_cpu_loader_rate(batches: int = 4, data=None) -> float:
    """Images per CPU-second of one loader worker with the ``data`` settings (default:
    :func:`shipped_gpu_data`, what a GPU trial's workers do), cache filled beforehand."""
    data = shipped_gpu_data() if data is None else data
    with tempfile.TemporaryDirectory() as tmp:
        train = sop_training_set(Path(tmp) / "sop", data.image_size, data.augment, per_class=6,
                                 image_cache=data.image_cache, augment_on=data.augment_on,
                                 cache_root=Path(tmp) / "cache")  # never the user's cache
        return loader_rates(train, workers=1, batch_size=32, batches=batches)[1]


def device_augment_images_per_s(device: torch.device, augment: str = "randaugment", image_size: int = 224,
                                batch: int = 64, batches: int = 4) -> float:
    """Images/s of :class:`~harness.data.device_augment.DeviceAugment` on ``device``
    (the loader's uint8 crops in, augmented and normalised images out), after one
    warm-up batch."""
    from harness.data.device_augment import DeviceAugment

    aug = DeviceAugment(augment, image_size, MEAN, STD)
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    aug(images, 0)
    sync()
    t0 = time.perf_counter()
    for b in range(batches):
        aug(images, b + 1)
    sync()
    return batches * batch / (time.perf_counter() - t0)


def gpu_step_images_per_s(device: torch.device, backbone: str = "resnet50", batch: int = 64,
                          steps: int = 10, image_size: int = 224) -> float:
    """Forward + backward + AdamW step of the shipped backbone (random init) under the
    run's autocast dtype, images/s after 3 warm-up steps."""
    from harness.config import ModelConfig
    from harness.core.device import amp_dtype, apply_layout
    from harness.core.model import create_model

    model = create_model(ModelConfig(backbone=backbone, pretrained=False, embedding_size=512), with_prototypes=False)
    model.to(device).train()
    fmt = apply_layout(model, device)  # channels_last + cuDNN autotuning, as the trainer
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = amp_dtype(device, "auto")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).embeddings.float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def vcpus_needed(gpu_rate: float, per_cpu_rate: float) -> int:
    """Loader workers to feed ``gpu_rate`` images/s, plus the training process's CPU."""
    return math.ceil(gpu_rate / per_cpu_rate) + 1
