"""Is it the regime or the harness? One glyphs-memory run per variant, side by side.

For a learning rate and seed, trains the glyphs-memory base config (the glyph-pretrained
tiny CNN, pre-warm-up, SupCon + PairMarginMiner) with:

- ``none``: no memory;
- ``xbm``: the harness's memory (harness/core/memory.py);
- ``xbm-pml``: pytorch-metric-learning's own ``CrossBatchMemory`` around the same loss
  and miner, in place of ours (the library baseline: same data, same steps);
- ``xbm+batch`` and ``xbn``: the harness's memory with the batch loss / adapted.

and prints, per variant, the best validation MAP@R, the mean loss of the fine-tuning
epochs, the miner's mean positive and negative pair counts per step and how many steps
mined no positive pair (the loss scale and the pairs the memory adds), and the mean
memory error (harness/core/staleness.py). ``xbm`` against ``xbm-pml`` separates the
harness from the method; ``none`` against the memories shows the regime.

    python benchmarks/memory_diagnosis.py [--lr 3e-4] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from pytorch_metric_learning.losses import CrossBatchMemory as PMLCrossBatchMemory
from pytorch_metric_learning.miners import PairMarginMiner

from harness.core.train import run_training
from harness.core.trainer import Trainer
from harness.sweep.experiment import load_experiment

PAIRS: dict[str, list[int]] = defaultdict(list)


def count_pairs() -> None:
    """Record the miner's pair counts at every call (ours shares the class)."""
    forward = PairMarginMiner.forward

    def counted(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        PAIRS["pos"].append(len(out[0]))
        PAIRS["neg"].append(len(out[2]))
        return out

    PairMarginMiner.forward = counted


class PMLMemory(torch.nn.Module):
    """The library's CrossBatchMemory behind the interface the Trainer calls."""

    kind = "xbm"

    def __init__(self, ours):
        super().__init__()
        self.inner = PMLCrossBatchMemory(ours.loss, ours.embedding_size, ours.memory_size, miner=ours.miner)
        self.miner = ours.miner
        self.loss = ours.loss
        self.last_parts: dict[str, torch.Tensor] = {}

    @property
    def fill(self) -> int:
        return int(self.inner.memory_size if self.inner.has_been_filled else self.inner.queue_idx)

    def batch_loss(self, embeddings, labels):
        loss = self.loss(embeddings, labels, self.miner(embeddings, labels))
        self.last_parts = {"loss.batch": loss.detach(), "loss.memory": loss.new_zeros(())}
        return loss

    def forward(self, embeddings, labels, sources=None):
        loss = self.inner(embeddings, labels.to(embeddings.device))
        self.last_parts = {"loss.batch": loss.new_zeros(()), "loss.memory": loss.detach()}
        return loss


def run(variant: str, lr: float, seed: int, out: Path) -> dict:
    exp = load_experiment("glyphs-memory")
    kind = "xbm" if variant == "xbm-pml" else variant
    overrides = {"memory.kind": kind, "optim.lr": lr, "seed": seed, "train.eval_untrained": False}
    if variant == "xbm-pml":
        overrides["train.staleness.sample"] = 0  # the library's queue records no image ids
    cfg = exp.run_config(overrides)
    PAIRS.clear()
    build = Trainer.__init__

    def with_library_memory(self, *a, **kw):
        build(self, *a, **kw)
        if variant == "xbm-pml":
            self.memory = PMLMemory(self.memory).to(self.device)

    Trainer.__init__ = with_library_memory
    t = time.perf_counter()
    epochs = []
    try:
        result = run_training(cfg, out / variant, on_epoch=lambda e, m: epochs.append(m), resume=False)
    finally:
        Trainer.__init__ = build
    warm = cfg.optim.warmup_epochs
    steps_warm = warm * cfg.train.iters_per_epoch
    # pair counts of the fine-tuning steps (xbm+batch mines twice per step: both kept)
    pos, neg = PAIRS["pos"][steps_warm:], PAIRS["neg"][steps_warm:]
    fine = epochs[warm:]

    def mean(key):
        vals = [m[key] for m in fine if key in m and math.isfinite(m[key])]
        return sum(vals) / len(vals) if vals else math.nan

    return {
        "variant": variant, "lr": lr, "seed": seed, "status": result.status,
        "best_val_map@r": max(m.get("val.map@r", math.nan) for m in epochs),
        "loss": mean("loss"), "pos_pairs": sum(pos) / max(len(pos), 1), "neg_pairs": sum(neg) / max(len(neg), 1),
        "steps_without_positives": sum(p == 0 for p in pos), "memory_error": mean("memory_error_mean"),
        "seconds": time.perf_counter() - t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variants", default="none,xbm,xbm-pml,xbm+batch,xbn")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    count_pairs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            rows.append(run(variant, args.lr, args.seed, Path(tmp)))
            r = rows[-1]
            print(f"{r['variant']:>10}  val MAP@R {r['best_val_map@r'] * 100:6.2f}  loss {r['loss']:6.3f}  "
                  f"pairs/step +{r['pos_pairs']:8.1f} -{r['neg_pairs']:9.1f}  no-positive steps "
                  f"{r['steps_without_positives']:3d}  memory error {r['memory_error']:.3f}  {r['seconds']:5.1f} s",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
