"""The doctor's 2-rank collective check: what a data-parallel trial's ranks do to each
other, on this node, in seconds.

Two spawned ranks (NCCL on two GPUs when the node has them, else gloo on the CPU)
joined through a file store, each running: an all-reduce of a known tensor; the
harness's own synchronised BatchNorm (``sync_batchnorm``: torch's SyncBatchNorm on
CUDA, GlobalBatchNorm2d on the CPU) on its half of a batch, against a plain BatchNorm
on the whole batch (outputs and input gradients); and a DDP-wrapped layer whose
gradient must come back as the mean over the ranks (the reducer that averages a
trial's gradients during backward).
"""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import torch

WORLD = 2
TOL = 1e-4


def _rank(rank: int, backend: str, store: str, out: str, timeout_s: float) -> None:
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from harness.core.global_batchnorm import sync_batchnorm

    try:
        torch.set_num_threads(1)
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=timeout_s))
        problems = []
        # all-reduce: ranks hold 1 and 2 -> 3 everywhere
        t = torch.full((1024,), float(rank + 1), device=device)
        dist.all_reduce(t)
        if not bool((t == 3).all()):
            problems.append(f"all-reduce gave {t[0].item()} instead of 3")
        # synchronised BatchNorm: this rank's half of the batch == its rows of the whole
        g = torch.Generator().manual_seed(0)
        whole = (torch.randn(8, 4, 5, 5, generator=g) * 3 + 1).to(device)
        upstream = torch.randn(8, 4, 5, 5, generator=g).to(device)
        ref_bn = nn.BatchNorm2d(4).to(device).train()
        x_ref = whole.clone().requires_grad_(True)
        y_ref = ref_bn(x_ref)
        (y_ref * upstream).sum().backward()
        bn = sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), device).to(device).train()
        rows = slice(rank * 4, rank * 4 + 4)
        x = whole[rows].clone().requires_grad_(True)
        y = bn(x)
        (y * upstream[rows]).sum().backward()
        if not torch.allclose(y, y_ref[rows], atol=TOL, rtol=TOL):
            problems.append(f"SyncBN output differs from one BatchNorm by {float((y - y_ref[rows]).abs().max()):.1e}")
        # the input gradient of global statistics depends on the other rank's rows
        if not torch.allclose(x.grad, x_ref.grad[rows], atol=TOL, rtol=TOL):
            problems.append("SyncBN input gradient differs from one BatchNorm's "
                            f"by {float((x.grad - x_ref.grad[rows]).abs().max()):.1e}")
        # DDP: the gradient after backward is the mean over ranks
        layer = nn.Linear(4, 1, bias=False).to(device)
        with torch.no_grad():
            layer.weight.fill_(1.0)
        ddp = DistributedDataParallel(layer, device_ids=[rank] if backend == "nccl" else None)
        ddp(torch.full((1, 4), float(rank + 1), device=device)).sum().backward()
        if not torch.allclose(layer.weight.grad, torch.full_like(layer.weight, 1.5)):
            problems.append(f"DDP gradient {layer.weight.grad.flatten()[0].item()} is not the mean 1.5")
        dist.destroy_process_group()
        Path(f"{out}.{rank}").write_text("\n".join(problems) or "ok")
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        Path(f"{out}.{rank}").write_text(f"error: {type(e).__name__}: {e}".splitlines()[0]
                                        + "\n" + traceback.format_exc())


def two_rank_problems(backend: str, timeout_s: float = 60.0) -> list[str]:
    """Run the 2-rank check with ``backend``; the problems found (empty: all passed)."""
    ctx = torch.multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="harness-doctor-dist-") as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "out")
        procs = [ctx.Process(target=_rank, args=(r, backend, store, out, timeout_s)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout_s + 60)
        problems = []
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                p.join()
                problems.append(f"rank {r} did not finish in {timeout_s + 60:.0f} s")
                continue
            path = Path(f"{out}.{r}")
            text = path.read_text() if path.is_file() else f"exited with {p.exitcode} and no report"
            if text != "ok":
                problems.append(f"rank {r}: {text.splitlines()[0]}")
        return problems
