"""How often does a search pick another setting when it is run again? One split and one
seed per trial, against search.objective's class-disjoint folds (and seeds).

The search is a small grid (learning rates of the glyph-pretrained tiny CNN on
``glyphs``, no memory), run ``--repeats`` times; repeat ``r`` differs from the others
only in its seed (``seed: r``), which is all that separates two runs of the same search
on another day. Today's objective carves its validation classes with the run seed, so
each repeat also sees another validation split, as a user re-running a sweep would.
With ``--folds K`` every trial trains K runs (one per class-disjoint fold, the folds the
same in every repeat) and scores their mean; ``--seeds S`` likewise over seeds.

Prints, per objective: the setting each repeat chose, how many pairs of repeats chose
differently, and the cost in training runs; ``--json`` keeps every value.

    python benchmarks/objective_stability.py [--repeats 4] [--folds 3] [--lrs 3e-4 1e-3 2e-3 4e-3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from harness.config import build_config
from harness.core.train import run_training
from harness.trainables.objective import objective_training

METRIC = "val.map@r"

BASE = {
    "data": {"name": "glyphs", "image_size": 32, "val_fraction": 0.2, "augment": "none"},
    "model": {"backbone": "tiny_cnn_small", "pretrained": "glyphs", "embedding_size": 128},
    "loss": {"name": "SupConLoss", "params": {"temperature": 0.1}, "miner": "PairMarginMiner",
             "miner_params": {"pos_margin": 0.2, "neg_margin": 0.8}},
    "memory": {"kind": "none"},
    "optim": {"weight_decay": 1e-4, "warmup_epochs": 1, "warmup_lr": 1e-3},
    "train": {"epochs": 3, "batch_size": 32, "samples_per_class": 4, "iters_per_epoch": 40,
              "select_metric": "map@r", "probe_size": 64, "eval_batch_size": 512,
              "eval_untrained": False, "staleness": {"every": 0}},
}


def score(lr: float, seed: int, folds: int, seeds: int, out: Path) -> tuple[float, list[float]]:
    cfg = build_config(BASE, {"optim.lr": lr, "seed": seed})
    train = objective_training(run_training, {"folds": folds, "seeds": seeds}, seed, METRIC, "max")
    result = train(cfg, out)
    values = [u["value"] for u in result.units] or [result.best_val[METRIC]]
    return float(result.best_val[METRIC]), values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 2e-3, 4e-3])
    ap.add_argument("--epochs", type=int, default=3, help="1 pre-warm-up + fine-tuning epochs")
    ap.add_argument("--iters", type=int, default=40, help="iterations per epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    BASE["train"].update(epochs=args.epochs, iters_per_epoch=args.iters)
    objectives = {"one split, one seed": (1, 1), f"{args.folds} folds x {args.seeds} seed(s)": (args.folds, args.seeds)}
    record: dict = {"lrs": args.lrs, "repeats": args.repeats, "objectives": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (folds, seeds) in objectives.items():
            t0 = time.perf_counter()
            table = {}
            for r in range(args.repeats):
                for lr in args.lrs:
                    mean, values = score(lr, r, folds, seeds, Path(tmp) / f"{folds}-{seeds}-{r}-{lr}")
                    table[(r, lr)] = (mean, values)
                    print(f"{name}: repeat {r} lr {lr:g}: {METRIC} {mean:.4f} {[round(v, 4) for v in values]}",
                          flush=True)
            chosen = [max(args.lrs, key=lambda lr: table[(r, lr)][0]) for r in range(args.repeats)]
            pairs = list(itertools.combinations(range(args.repeats), 2))
            changed = sum(chosen[a] != chosen[b] for a, b in pairs)
            seconds = time.perf_counter() - t0
            record["objectives"][name] = {
                "folds": folds, "seeds": seeds, "chosen": chosen, "pairs": len(pairs), "changed": changed,
                "runs": args.repeats * len(args.lrs) * folds * seeds, "seconds": seconds,
                "values": {f"{r}:{lr:g}": table[(r, lr)] for r, lr in table},
            }
    print(f"\n{'objective':<26} {'chosen lr per repeat':<32} {'pairs that differ':>18} {'runs':>5} {'seconds':>8}")
    for name, rec in record["objectives"].items():
        chosen = ", ".join(f"{lr:g}" for lr in rec["chosen"])
        print(f"{name:<26} {chosen:<32} {rec['changed']:>9} of {rec['pairs']:<6} {rec['runs']:>5} {rec['seconds']:>8.0f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
