"""Per-step time of the training step with the device-to-host syncs removed vs before.

Before (git 7728673): each step read six values on the host in the middle of the step --
the memory's two loss parts, the XML loss, the total loss (``float(tensor)``), the
pending affine's range check (``bool(tensor)``) and the prototypes' ``initialized`` flag
-- plus two implicit syncs on a GPU: ``split_halves`` on the device labels
(``torch.unique`` and a boolean mask) and ``torch.linalg.solve``'s error check. Now the
loss parts stay on the device and are copied together once, after the step is queued;
the range check runs every 16 adaptations; the halves come from the CPU labels and the
solve is ``solve_ex``.

Both variants run in the same process on the same Trainer and batches, interleaved
(one step of each per round, after a warm-up); "before" re-enables the old sync points
(the old ``train_step`` and ``fit_prototypes`` verbatim, the range check every step,
the flag read per forward). The table gives the median wall and CPU (process time) ms
per step, their ratios, and the explicit host reads per step (tensor -> python
conversions in harness code, counted).
On a CPU a "sync" costs almost nothing (there is no queue to drain), so the CPU ratio
shows the bookkeeping is not slower; the gain is on a GPU, where each read stalls the
host until the device has caught up.

    python benchmarks/step_syncs.py [--memory axbn] [--image-size 32] [--batch 32] [--rounds 30]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.config import build_config
from harness.core import xml as X
from harness.core.trainer import Trainer
from harness.doctor.fixtures import tiny_config
from interleaved import rounds, timed  # benchmarks/interleaved.py (this script's folder)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.host_reads import host_reads  # noqa: E402  (shared with tests/core/test_host_reads.py)
from fixtures.host_syncs import host_syncs  # noqa: E402  (shared with tests/core/test_memory.py)


def old_train_step(self, images, labels, optimizer, halves=None):
    """``Trainer.train_step`` as of git 7728673 (before the host-sync work), verbatim but for the signature."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
        out = self.model(images)
    out = type(out)(*(None if t is None else t.float() for t in out))
    plain = self.memory(out.embeddings, labels)
    parts = {f"loss.{k}" if not k.startswith("loss") else k: float(v)
             for k, v in getattr(self.memory, "last_parts", {}).items()}
    total = plain
    if self.xml_loss is not None:
        xml = self.xml_loss(out, labels, self.model.prototypes, self.model.embed_pooled)
        parts["loss.xml"] = float(xml.detach())
        total = X.xml_total_loss(plain, xml, self.config.xml.weight)
    value = float(total.detach())
    if not math.isfinite(value):
        return None
    if total.requires_grad:
        self.scaler.scale(total).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
    parts["loss"] = value
    return parts


def old_fit_prototypes(H, G, prior, alpha):
    m = H.shape[1]
    H32, G32, V = H.float(), G.float(), prior.float()
    lhs = H32.T @ H32 + alpha * torch.eye(m, device=H.device, dtype=H32.dtype)
    rhs = H32.T @ G32 + alpha * V
    return torch.linalg.solve(lhs, rhs)


def old_indices(self, embeddings, labels, ref_emb, ref_labels, slots):
    """``CrossBatchMemory._indices`` before the sync-free pair selection (boolean masks over the pairs)."""
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    if self._compute_miner is not None:
        t = self._compute_miner(embeddings, labels, ref_emb, ref_labels)
    else:
        t = lmu.get_all_pairs_indices(labels, ref_labels)
    keep = t[1] != slots[t[0]]
    if len(t) == 3:
        return t[0][keep], t[1][keep], t[2][keep]
    return t[0][keep], t[1][keep], t[2], t[3]


@contextmanager
def old_sync_points(trainer: Trainer):
    from harness.core.memory import CrossBatchMemory

    pooling_forward = X.PrototypePooling.forward
    fit = X.fit_prototypes
    indices = CrossBatchMemory._indices

    def forward_reading_flag(self, features):
        if self.training:
            bool(self.initialized)  # the old per-forward read of the flag
        return pooling_forward(self, features)

    trainer.memory.range_check_interval = 1
    X.PrototypePooling.forward = forward_reading_flag
    X.fit_prototypes = old_fit_prototypes
    CrossBatchMemory._indices = old_indices
    try:
        yield lambda images, labels, opt, halves: old_train_step(trainer, images, labels, opt)
    finally:
        trainer.memory.range_check_interval = 16
        X.PrototypePooling.forward = pooling_forward
        X.fit_prototypes = fit
        CrossBatchMemory._indices = indices


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", default="axbn", choices=["xbm", "xbn", "axbn"])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    raw = tiny_config(args.memory, "auto", epochs=1, batch_size=args.batch, iters_per_epoch=8)
    raw["data"]["image_size"] = args.image_size
    raw["memory"]["size"] = 1024
    cfg = build_config(raw)
    # host reads made by harness code, or by the old step copied into this file
    counted = (str(Path(X.__file__).resolve().parents[1]), str(Path(__file__).resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp))
        trainer._set_stage(False)
        trainer.train_loader.batch_sampler.set_epoch(1)
        batches = []
        for images, labels, *_ in trainer.train_loader:
            halves = X.split_halves(labels)
            dev = trainer.device
            batches.append((images.to(dev), torch.searchsorted(trainer.classes, labels.to(dev)),
                            tuple(h.to(dev) for h in halves)))
        new_step = lambda images, labels, opt, halves: trainer.train_step(images, labels, opt, halves)  # noqa: E731
        times = {"before": [], "now": []}
        cpu_times = {"before": [], "now": []}
        reads = {"before": [], "now": []}
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

        def one(variant: str, b: int, record: bool):
            images, labels, halves = batches[b % len(batches)]
            with (old_sync_points(trainer) if variant == "before" else _nothing()) as step:
                step = step or new_step
                with host_reads(counted) as calls:
                    dt, dc = timed(lambda: step(images, labels, trainer.optimizer, halves), sync)
            if record:
                times[variant].append(dt)
                cpu_times[variant].append(dc)
                reads[variant].append(len(calls))

        for r, variant, record in rounds(("before", "now"), args.warmup, args.rounds):
            one(variant, r, record=record)
        # the operations that make a GPU's host wait, counted on one more step of each
        # (untimed: the counting mode slows every op)
        sync_ops: dict[str, tuple[int, int]] = {}
        for variant in ("before", "now"):
            images, labels, halves = batches[0]
            with (old_sync_points(trainer) if variant == "before" else _nothing()) as step:
                step = step or new_step
                with host_syncs() as syncs:
                    step(images, labels, trainer.optimizer, halves)
            ours = sum(" at harness/" in s or " at benchmarks/" in s for s in syncs)
            torch_ops = sum(" at torch/" in s for s in syncs)
            sync_ops[variant] = (ours, len(syncs) - ours - torch_ops, torch_ops)
        trainer.close()

    print(f"train step: {args.memory} + XML, tiny_cnn_small at {args.image_size}px, batch {args.batch}, "
          f"memory 1024, device {trainer.device}, threads {torch.get_num_threads()}; "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")
    print(f"{'variant':<34}{'wall ms/step':>13}{'CPU ms/step':>13}{'host reads/step':>17}"
          f"{'sync ops: ours+pml+torch':>26}{'wall / before':>15}{'CPU / before':>14}")
    base = statistics.median(times["before"])
    cbase = statistics.median(cpu_times["before"])
    for variant, label in (("before", "before: syncs mid-step (baseline)"), ("now", "now: one read after the step")):
        med, cmed = statistics.median(times[variant]), statistics.median(cpu_times[variant])
        ours, pml, tops = sync_ops[variant]
        print(f"{label:<34}{med * 1e3:>13.2f}{cmed * 1e3:>13.2f}{statistics.mean(reads[variant]):>17.2f}"
              f"{f'{ours}+{pml}+{tops}':>26}{med / base:>15.3f}{cmed / cbase:>14.3f}")
    return 0


@contextmanager
def _nothing():
    yield None


if __name__ == "__main__":
    sys.exit(main())
