"""Data-parallel training step on 2 gloo ranks: gradient all-reduce after backward vs
overlapped with backward (torch's DDP reducer), on CPU.

Both variants run the harness's own DistributedTrainer step (forward, global-batch
gather, memory loss, backward, gradient averaging, AdamW step) on the same config and
batches, in the same pair of rank processes, interleaved in ``--rounds`` rounds (a fresh
trainer per round and variant) so that a change in the machine's load hits both alike:

* baseline: ``train.overlap_grad_reduce: false``, one flat all-reduce of every gradient
  after backward returns;
* overlapped: the default, DDP's buckets (1 MiB first, then 25 MB) each all-reduced
  asynchronously as soon as its gradients exist, while backward goes on.

The table gives the median ms per step (the slower rank's, after ``--warmup`` steps of
each round: the first step of a stage reduces flat, DDP's first uses one bucket) and the
ratio against the baseline, plus the largest loss difference between the variants (they
compute the same loss; tests/core/test_distributed.py checks gradients and state).
``--single`` adds one process with the whole batch and all the threads.

On a CPU the ranks share the machine's cores with gloo's communication threads, so the
overlap can hide at most the all-reduce's memory copies; on GPUs (NCCL) the reduction
runs on the network/NVLink-less PCIe while the GPU computes the next layers' gradients.

    python benchmarks/distributed_step.py [--backbone resnet18] [--batch 32] [--steps 6]
        [--warmup 3] [--rounds 3] [--kind xbm] [--xml] [--threads N] [--image-size 32] [--single]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

# The rank launcher and step recorder are shared with tests/core/test_distributed.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.data_parallel import equivalence_config, record_steps, run_ranks  # noqa: E402


def config(args, workers: int, overlap: bool = True):
    cfg = equivalence_config(args.kind, args.xml, workers=workers, batch_size=args.batch,
                             iters_per_epoch=args.steps, overlap_grad_reduce=overlap)
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"backbone": args.backbone, "embedding_size": 128}),
        "data": cfg.data.model_copy(update={"image_size": args.image_size}),
        "memory": cfg.memory.model_copy(update={"size": args.memory}),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="steps per round and variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at each round's start")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kind", default="xbm")
    p.add_argument("--xml", action="store_true")
    p.add_argument("--memory", type=int, default=512)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--single", action="store_true", help="also time 1 process x B")
    args = p.parse_args()
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")

    variants = [("2 ranks, all-reduce after backward (baseline)", False),
                ("2 ranks, overlapped (DDP reducer)", True)]
    jobs = [(config(args, 2, overlap), args.steps) for _ in range(args.rounds) for _, overlap in variants]
    ranks = run_ranks(2, jobs, threads=max(1, args.threads // 2))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    losses: dict[bool, list[float]] = {False: [], True: []}
    for i, (_, overlap) in enumerate(variants * args.rounds):
        per_rank = [r[i] for r in ranks]
        # a step ends for the run when its slowest rank ends
        seconds[overlap] += [max(s) for s in zip(*(r["seconds"] for r in per_rank))][args.warmup:]
        losses[overlap] += per_rank[0]["losses"]
    ms = {k: 1000 * statistics.median(v) for k, v in seconds.items()}
    base = ms[False]

    print(f"step: {args.backbone} {args.image_size}px, batch {args.batch}, memory {args.kind} "
          f"{args.memory}{' + xml' if args.xml else ''}, {args.rounds} interleaved rounds x "
          f"{args.steps - args.warmup} timed steps, {args.threads} threads in total, CPU, "
          f"torch {torch.__version__}")
    print(f"{'variant':<48}{'ms/step':>10}{'ratio':>8}")
    if args.single:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            single = record_steps(config(args, 1), Path(tmp), args.steps)
        single_ms = 1000 * statistics.median(single["seconds"][args.warmup:])
        print(f"{'1 process x B':<48}{single_ms:>10.1f}{single_ms / base:>8.2f}")
    for name, overlap in variants:
        print(f"{name:<48}{ms[overlap]:>10.1f}{ms[overlap] / base:>8.2f}")
    diff = max(abs(a - b) for a, b in zip(losses[False], losses[True]))
    print(f"|loss(baseline) - loss(overlapped)|: max over the steps {diff:.1e}")


if __name__ == "__main__":
    main()
