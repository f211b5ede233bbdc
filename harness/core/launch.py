"""``harness train`` with ``train.workers: N > 1``: N data-parallel ranks on this machine.

Rank 0 runs in the calling process (live progress, files in ``out_dir``); ranks 1..N-1
are spawned processes training in lockstep in private folders (they write nothing the
user sees). The process group is NCCL with one GPU per rank when the run is on CUDA
(the machine needs N GPUs), gloo on CPUs. Sweeps use Ray Train instead
(``trainables/distributed.py``); the training code is the same
(``harness/core/distributed.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from harness.config import RunConfig, build_config
from harness.core.device import pick_device
from harness.core.train import EpochCallback, RunResult, StepCallback, run_training
from harness.errors import ConfigError, HarnessError


class WorkerError(HarnessError):
    """A data-parallel rank of ``harness train`` failed."""


def _backend(config: RunConfig) -> str:
    device = pick_device(config.train.device)
    if device.type != "cuda":
        return "gloo"
    have = torch.cuda.device_count()
    if have < config.train.workers:
        raise ConfigError(
            f"train.workers={config.train.workers} needs one GPU per worker, this machine "
            f"has {have}; lower train.workers or use train.device: cpu"
        )
    return "nccl"


def _join(rank: int, world: int, store: str, backend: str, threads: int) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)


def _follower(rank: int, world: int, store: str, backend: str, threads: int,
              config: dict, folder: str, error_file: str) -> None:
    try:
        _join(rank, world, store, backend, threads)
        run_training(build_config(config), Path(folder), resume=True)
        dist.destroy_process_group()
    except BaseException:
        Path(error_file).write_text(traceback.format_exc())
        raise


def run_data_parallel(
    config: RunConfig,
    out_dir: Path,
    on_epoch: EpochCallback | None = None,
    resume: bool = True,
    on_step: StepCallback | None = None,
) -> RunResult:
    """``run_training`` on ``train.workers`` ranks; returns rank 0's result."""
    world = config.train.workers
    backend = _backend(config)
    threads = max(1, (os.cpu_count() or 1) // world)
    out_dir = Path(out_dir)
    last = out_dir / "checkpoints" / "last.pt"
    ctx = torch.multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="harness-ranks-") as tmp:
        store = os.path.join(tmp, "store")
        procs, errors = [], []
        for rank in range(1, world):
            folder = Path(tmp) / f"rank{rank}"
            if resume and last.is_file():  # every rank resumes from rank 0's checkpoint
                (folder / "checkpoints").mkdir(parents=True)
                shutil.copy2(last, folder / "checkpoints" / "last.pt")
            errors.append(Path(tmp) / f"rank{rank}.error")
            p = ctx.Process(target=_follower, daemon=True, args=(
                rank, world, store, backend, threads, config.model_dump(mode="json"),
                str(folder), str(errors[-1])))
            p.start()
            procs.append(p)
        try:
            _join(0, world, store, backend, threads)
            result = run_training(config, out_dir, on_epoch=on_epoch, resume=resume, on_step=on_step)
            for p in procs:
                p.join()
        except BaseException:
            for p in procs:
                if p.is_alive():
                    p.kill()
            failed = [e for e in errors if e.is_file()]
            if failed:
                raise WorkerError(
                    f"data-parallel rank failed: {failed[0].read_text().strip().splitlines()[-1]}"
                ) from None
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        failed = [e for e in errors if e.is_file()]
        if failed:
            raise WorkerError(f"data-parallel rank failed: {failed[0].read_text().strip().splitlines()[-1]}")
    return result
