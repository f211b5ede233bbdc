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


def sop_training_set(root: Path, image_size: int = 224, augment: str = "randaugment",
                     classes: int = 24, per_class: int = 8, jpeg_size: int = 500):
    from harness.config import DataConfig
    from harness.data import create_datasets

    make_sop_folder(root, classes, per_class, jpeg_size)
    cfg = DataConfig(name="sop", root=str(root), image_size=image_size, augment=augment, val_fraction=0.0)
    return create_datasets(cfg, seed=0, mean=MEAN, std=STD).train


def per_cpu_loader_rate(batches: int = 4) -> float:
    """Images per CPU-second of one worker decoding + augmenting at 224 px with the
    shipped RandAugment."""
    with tempfile.TemporaryDirectory() as tmp:
        train = sop_training_set(Path(tmp), per_class=6)
        return loader_rates(train, workers=1, batch_size=32, batches=batches)[1]


def gpu_step_images_per_s(device: torch.device, backbone: str = "resnet50", batch: int = 64,
                          steps: int = 10, image_size: int = 224) -> float:
    """Forward + backward + AdamW step of the shipped backbone (random init) under the
    run's autocast dtype, images/s after 3 warm-up steps."""
    from harness.config import ModelConfig
    from harness.core.device import amp_dtype
    from harness.core.model import create_model

    model = create_model(ModelConfig(backbone=backbone, pretrained=False, embedding_size=512), with_prototypes=False)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = amp_dtype(device, "auto")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(batch, 3, image_size, image_size, device=device)

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
