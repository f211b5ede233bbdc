"""``harness train`` with ``train.workers: N > 1``: N data-parallel ranks on this machine.

The calling process is a supervisor: it starts the N ranks with
``torch.multiprocessing.start_processes`` (spawned, *not* daemonic, so every rank can
start its DataLoader workers; each rank ends when the supervisor dies), shows rank 0's
progress (rank 0 sends its step and epoch events over a queue) and watches every rank's
exit code. When one rank fails or dies (an exception, SIGKILL, the OOM killer), the
others are stopped at once and the run ends with one line naming that rank and its
reason, instead of leaving the survivors blocked in a collective. Rank 0 trains in
``out_dir`` (checkpoints, logs, summary); ranks 1..N-1 in private folders (they write
nothing the user sees). The process group is NCCL with one GPU per rank when the run is
on CUDA (the machine needs N GPUs), gloo on CPUs, with ``train.collective_timeout_s`` as
its timeout. Sweeps use Ray Train instead (``trainables/distributed.py``); the training
code is the same (``harness/core/distributed.py``).
"""

from __future__ import annotations

import os
import pickle
import queue
import shutil
import signal
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.config import RunConfig, build_config
from harness.core.device import pick_device
from harness.core.distributed import PeerFailedError
from harness.core.train import EpochCallback, RunResult, StepCallback, run_training
from harness.errors import ConfigError, HarnessError
from harness.results.contract import last_checkpoint

# After the first failure, how long the other ranks get to end by themselves (and to
# report their own error) before they are terminated.
GRACE_SECONDS = 2.0


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


def _join(rank: int, world: int, store: str, backend: str, threads: int, timeout_s: float) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (HarnessErrors keep their type and
    exit code), else a WorkerError with its last line."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any unpicklable error becomes its message
        return WorkerError(f"{type(error).__name__}: {error}")


def _secondary(error: BaseException) -> bool:
    """An error a rank meets because another rank failed first: rank 0's failure learnt
    at the outcome exchange, or a collective whose peer is gone (gloo raises a plain
    RuntimeError, "Connection closed by peer", from inside torch.distributed)."""
    if isinstance(error, (PeerFailedError, dist.DistError)):
        return True
    tb = error.__traceback__
    while tb is not None:
        if f"{os.sep}torch{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _rank_main(rank: int, world: int, store: str, backend: str, threads: int, timeout_s: float,
               config: dict[str, Any], folders: list[str], resume: bool, events) -> None:
    """Rank ``rank`` (``torch.multiprocessing.start_processes`` passes it first), training
    in ``folders[rank]``."""
    folder = folders[rank]
    try:
        _join(rank, world, store, backend, threads, timeout_s)
        cfg = build_config(config)
        if rank == 0:
            result = run_training(
                cfg, Path(folder), resume=resume,
                on_epoch=lambda epoch, metrics: events.put(("epoch", epoch, metrics)),
                on_step=lambda step, total: events.put(("step", step, total)),
            )
            events.put(("result", result))
        else:
            run_training(cfg, Path(folder), resume=True)  # rank 0's checkpoint, copied
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        events.put(("error", rank, _portable(e), _secondary(e)))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _death(rank: int, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"rank {rank} was killed by {name}"
    return f"rank {rank} exited with code {exitcode}"


def _failure(ctx, failed: int, errors: dict[int, tuple[BaseException, bool]]) -> BaseException:
    """The one error that says why the run ended: a rank's own error first, then a rank
    that died without one (a signal), then an error caused by another rank's failure."""
    primary = [r for r, (_, secondary) in sorted(errors.items()) if not secondary]
    if primary:
        error = errors[primary[0]][0]
        if isinstance(error, HarnessError):
            return error
        return WorkerError(f"data-parallel rank {primary[0]} failed: {type(error).__name__}: {error}")
    silent = [r for r, p in enumerate(ctx.processes) if r not in errors and p.exitcode not in (0, None)
              and (r == failed or p.exitcode != -signal.SIGTERM)]
    if silent:
        return WorkerError(
            f"data-parallel {_death(silent[0], ctx.processes[silent[0]].exitcode)} during training "
            "(out of memory? see dmesg); run the same `harness train` again: it resumes from "
            "checkpoints/last.pt"
        )
    if errors:
        r = min(errors)
        return WorkerError(f"data-parallel rank {r} failed: {errors[r][0]}")
    return WorkerError(f"data-parallel {_death(failed, ctx.processes[failed].exitcode)}")


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
    last = last_checkpoint(out_dir)
    with tempfile.TemporaryDirectory(prefix="harness-ranks-") as tmp:
        store = os.path.join(tmp, "store")
        folders = [str(out_dir)]
        for rank in range(1, world):
            folder = Path(tmp) / f"rank{rank}"
            if resume and last.is_file():  # every rank resumes from rank 0's checkpoint
                last_checkpoint(folder).parent.mkdir(parents=True)
                shutil.copy2(last, last_checkpoint(folder))
            folders.append(str(folder))
        events = mp.get_context("spawn").Queue()
        raw = config.model_dump(mode="json")
        ctx = mp.start_processes(
            _rank_main,
            args=(world, store, backend, threads, config.train.collective_timeout_s, raw, folders,
                  resume, events),
            nprocs=world, join=False, daemon=False, start_method="spawn",
        )
        result: RunResult | None = None
        errors: dict[int, tuple[BaseException, bool]] = {}

        def handle(event) -> None:
            nonlocal result
            kind = event[0]
            if kind == "step" and on_step is not None:
                on_step(*event[1:])
            elif kind == "epoch" and on_epoch is not None:
                on_epoch(*event[1:])
            elif kind == "result":
                result = event[1]
            elif kind == "error":
                errors[event[1]] = (event[2], event[3])

        def drain(wait: float) -> None:
            try:
                handle(events.get(timeout=wait))
                while True:
                    handle(events.get_nowait())
            except queue.Empty:
                pass

        try:
            while True:
                drain(0.2)
                try:
                    if ctx.join(timeout=0, grace_period=GRACE_SECONDS):
                        break
                except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
                    drain(0.5)
                    raise _failure(ctx, e.error_index, errors) from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join()
        drain(0)
        if result is None:
            raise WorkerError("data-parallel rank 0 ended without a result; rerun `harness train` "
                              "with the same --out to resume")
    return result

