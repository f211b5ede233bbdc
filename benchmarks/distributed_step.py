"""Training step time of 1 process x B vs 2 data-parallel ranks x B/2 on CPU (gloo).

A correctness-of-scaling check, not a speed-up claim: both variants run the harness's
own training step (Trainer vs DistributedTrainer: forward, global-batch gather, memory
loss, backward, gradient all-reduce, AdamW step) on the same config and the same
batches, with the same total number of CPU threads (1 process x T threads vs 2 ranks x
T/2). The table gives the median ms per step (after ``--warmup`` steps) and the ratio
against the single process, plus the largest loss difference between the two runs
(they compute the same loss; tests/core/test_distributed.py checks gradients and state).

On a CPU the ranks share the machine's cores, so the ideal ratio is about 1.0 (each
rank does half the backbone work with half the threads) plus the collectives' cost;
on GPUs each rank has its own device and the backbone share shrinks with N (see the
README).

    python benchmarks/distributed_step.py [--batch 64] [--steps 12] [--warmup 2]
        [--kind xbm] [--xml] [--threads N] [--image-size 32]
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


def config(args, workers: int):
    cfg = equivalence_config(args.kind, args.xml, workers=workers, batch_size=args.batch,
                             iters_per_epoch=args.steps)
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"backbone": args.backbone, "embedding_size": 128}),
        "data": cfg.data.model_copy(update={"image_size": args.image_size}),
        "memory": cfg.memory.model_copy(update={"size": args.memory}),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--kind", default="xbm")
    p.add_argument("--xml", action="store_true")
    p.add_argument("--memory", type=int, default=512)
    p.add_argument("--backbone", default="tiny_cnn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        single = record_steps(config(args, 1), Path(tmp), args.steps)
    ranks = run_ranks(2, [(config(args, 2), args.steps)], threads=max(1, args.threads // 2))
    two = [r[0] for r in ranks]

    def median_ms(seconds):
        return 1000 * statistics.median(seconds[args.warmup:])

    base = median_ms(single["seconds"])
    # a step ends for the run when its slowest rank ends
    two_ms = median_ms([max(s) for s in zip(*(r["seconds"] for r in two))])
    diffs = [abs(a - b) for a, b in zip(single["losses"], two[0]["losses"])]
    print(f"step: {args.backbone} {args.image_size}px, batch {args.batch}, memory {args.kind} "
          f"{args.memory}{' + xml' if args.xml else ''}, {args.steps - args.warmup} timed steps, "
          f"{args.threads} threads in total, CPU, torch {torch.__version__}")
    print(f"{'variant':<28}{'ms/step':>10}{'ratio':>8}")
    print(f"{'1 process x B (baseline)':<28}{base:>10.1f}{1.0:>8.2f}")
    print(f"{'2 ranks x B/2 (gloo)':<28}{two_ms:>10.1f}{two_ms / base:>8.2f}")
    # step 1 starts from the same weights; later steps from weights that differ by rounding
    print(f"|loss(1 process) - loss(2 ranks)|: step 1 {diffs[0]:.1e}, max over the steps {max(diffs):.1e}")


if __name__ == "__main__":
    main()
