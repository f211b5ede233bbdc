"""``harness doctor``: a one-minute self-check of a node before it runs trials.

Checks, in order: the NVIDIA driver and the GPUs it sees (NVML, independent of torch),
whether the driver is new enough for torch's CUDA build (one line naming both versions),
torch's CUDA build and whether it can use those GPUs, that a Ray task sees exactly the
GPUs Ray assigned to it (none for a zero-GPU task), which faiss is installed (one
distribution) and that the exact retrieval search on the training device agrees with
the CPU one, bf16/fp16 autocast support, two data-parallel ranks (all-reduce, SyncBatchNorm, DDP's
gradient mean: NCCL on two GPUs, gloo on the CPU), then a tiny run of two epochs on the training
device for every memory kind with XML, one of them killed (SIGKILL) after its first
epoch and resumed (its loader with worker processes and, on CUDA, pinned memory), with every state tensor checked on the training device, and an
evaluation of its best checkpoint; last, the loader's images/s per CPU (with the data
settings a GPU trial of the shipped SOP experiment gets: image cache, augmentation on the
GPU) and the GPU's training images/s including that augmentation, i.e. the vCPUs a GPU trial needs (a FAIL under ``--require-gpu``
when the node has fewer per GPU). On a CPU-only machine it says so and checks the CPU
path. Each check gives one row of a verdict table: PASS, FAIL, SKIP or INFO. The checks
themselves are in :mod:`harness.doctor.checks`; this module runs them.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from harness.doctor.checks import (  # noqa: F401  (Check and the verdicts: the doctor's API)
    FAIL,
    INFO,
    PASS,
    SKIP,
    Check,
    check_amp,
    check_collectives,
    check_driver,
    check_driver_cuda,
    check_evaluate,
    check_faiss,
    check_kill_resume,
    check_memory_kinds,
    check_ray_gpus,
    check_throughput,
    check_torch,
    first_line,
)


# ------------------------------------------------------------------ driver


def run_doctor(require_gpu: bool = False, with_ray: bool = True,
               on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """All checks in order; a check that raises is a FAIL row, the rest still run."""
    checks: list[Check] = []

    def add(fn, *args):
        t0 = time.perf_counter()
        try:
            out = fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure becomes a verdict row
            name = getattr(fn, "__name__", "check").removeprefix("check_").replace("_", " ")
            out = Check(name, FAIL, first_line(e) + " | " + traceback.format_exc().strip().splitlines()[-3].strip())
        extra = None
        if isinstance(out, tuple):
            out, extra = out
        out.seconds = time.perf_counter() - t0
        checks.append(out)
        if on_check is not None:
            on_check(out)
        return extra

    driver_gpus = add(check_driver) or 0
    add(check_driver_cuda)
    device = add(check_torch, driver_gpus, require_gpu)
    if device is None:
        checks.append(Check("training checks", SKIP, "no usable training device (see above)"))
        return checks
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if with_ray:
        add(check_ray_gpus, gpus)
    else:
        checks.append(Check("Ray GPU assignment", SKIP, "--no-ray"))
    add(check_faiss, device)
    add(check_amp, device)
    add(check_collectives, device)
    with tempfile.TemporaryDirectory(prefix="harness-doctor-") as tmp:
        root = Path(tmp)
        add(check_memory_kinds, device, root)
        run_dir = add(check_kill_resume, device, root)
        add(check_evaluate, device, run_dir)
    add(check_throughput, device, require_gpu)
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.verdict == FAIL for c in checks)
