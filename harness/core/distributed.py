"""Data-parallel training inside one run: N ranks, one global batch, one shared memory.

A run with ``train.workers: N > 1`` trains on N processes joined in a
``torch.distributed`` process group (NCCL on GPUs, gloo on CPUs; Ray Train's
``TorchTrainer`` starts them, see ``trainables/distributed.py``). The contract is
that the run computes exactly what one process with the whole batch computes
(docs/METHODS.md §1-2), up to float rounding:

* **Batches.** Every rank draws the same global batch of ``train.batch_size`` from the
  class-balanced sampler (same seed) and loads its own contiguous slice of whole class
  blocks (:class:`RankBatchSampler`). Gathered in rank order, the slices are the
  single-process batch in the single-process order, so XML's class-disjoint halves,
  the miners and the memory's enqueue order are unchanged.
* **Loss.** Each rank gathers the embeddings (and, for XML, the GAP vectors and
  histograms) of all ranks with :func:`gather_rows` and computes the loss of the
  *global* batch against the memory, replicated on every rank. So the loss, its
  normalisation (pytorch-metric-learning's means over pairs / anchors), the miner's
  pairs, the enqueued memory, XBN's batch moments and AXBN's Kalman state (|B| is the
  global batch) are identical on every rank and equal to the single-process ones.
  Computing the loss of local queries against gathered references instead would change
  those means (each rank would average over its own anchors), so it is not done.
* **Gradients.** ``gather_rows`` is differentiable: its backward sums, over ranks, the
  gradient every rank computed for a slice, so rank r receives ``W · ∂L/∂z_r`` for its
  own embeddings. Parameters used after the gather (the head inside XML's ``e(·)``,
  the prototypes of the closed-form fit, a loss's proxies) get the full ``∂L/∂θ`` on
  every rank. :meth:`DistributedTrainer.reduce_gradients` averages all gradients over
  ranks (one flat all-reduce), which gives exactly ``∂L/∂θ`` for both kinds.
  (pytorch-metric-learning's ``DistributedLossWrapper`` multiplies the loss by W and
  detaches the other ranks' embeddings, which over-counts parameters used after the
  gather; hence our own gather.)
* **BatchNorm.** Batch statistics are those of the global batch: torch's
  ``SyncBatchNorm`` on GPUs (timm's converter, which keeps ``BatchNormAct2d``'s
  activation), :class:`GlobalBatchNorm2d` on CPUs (torch's SyncBatchNorm is GPU-only).
* **Prototypes.** XML's prototypes are initialised from the local features of the
  gathered first batch and broadcast from rank 0.
* **Files.** Rank 0 evaluates, writes checkpoints, logs and ``summary.json``; the
  other ranks only train (they wait for rank 0 at the end of the epoch).
* **Ending together.** No rank may leave the lockstep alone, or the others block in
  their next collective until the process group's timeout. Whether every rank's loss
  was finite rides along in the step's gradient all-reduce, so all ranks stop at the
  same step; after each epoch's evaluation one small all-reduce tells every rank rank
  0's outcome (continue / diverged / failed): a divergence found by rank 0's evaluation
  ends every rank as diverged, and an error there ends the others with
  :class:`PeerFailedError` while rank 0 raises its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from harness.config import RunConfig
from harness.core.collectives import (
    average_gradients,
    broadcast_module,
    gather_labels,
    gather_rows,
    rank,
    rank_sizes,
    world_size,
)
from harness.core.global_batchnorm import sync_batchnorm
from harness.core.trainer import StepCallback, Trainer
from harness.errors import ConfigError, HarnessError

__all__ = ["WorkerStateError", "PeerFailedError", "RankBatchSampler", "DistributedTrainer",
           "check_workers"]


class WorkerStateError(HarnessError):
    """Ranks of one data-parallel run disagree (different epochs or configs)."""


class PeerFailedError(HarnessError):
    """Another rank of this data-parallel run failed (its own error says why)."""


def check_workers(config: RunConfig, world: int) -> None:
    """The global batch must split into whole class blocks, one share per rank."""
    t = config.train
    share = t.batch_size // world if world else 0
    if world < 1 or t.batch_size % world or share % t.samples_per_class:
        raise ConfigError(
            f"train.batch_size {t.batch_size} must split into {world} equal shares of whole "
            f"class blocks of train.samples_per_class={t.samples_per_class}; use a batch size "
            f"divisible by {world * t.samples_per_class} or another worker count"
        )


# ---------------------------------------------------------------------------- sampling


class RankBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Rank ``rank``'s contiguous slice of every global batch of ``sampler``.

    The slices are whole class blocks (``check_workers``), so the gathered batch is the
    global batch in its original order.
    """

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, int(rank), int(world)
        self.share = sampler.batch_size // world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        lo = self.rank * self.share
        for batch in self.sampler:
            yield batch[lo: lo + self.share]


# ---------------------------------------------------------------------------- trainer


class DistributedTrainer(Trainer):
    """A :class:`~harness.core.trainer.Trainer` for one rank of a data-parallel run.

    Built by ``run_training`` when ``train.workers > 1``; the process group must already
    be initialised with that many ranks (Ray Train's TorchTrainer does it).
    """

    def __init__(self, config: RunConfig, out_dir: Path, on_step: StepCallback | None = None):
        world = world_size()
        if world != config.train.workers:
            raise ConfigError(
                f"train.workers is {config.train.workers} but this process group has {world} "
                "rank(s); start data-parallel runs with `harness train` / `harness sweep`, "
                "which launch the workers"
            )
        check_workers(config, world)
        self.rank, self.world = rank(), world
        super().__init__(config, out_dir, on_step=on_step)
        sync_batchnorm(self.model, self.device)
        broadcast_module(self.model)
        broadcast_module(self.memory)
        if self.xml_loss is not None:
            broadcast_module(self.xml_loss)
        loss_modules = [self.memory] + ([] if self.xml_loss is None else [self.xml_loss])
        seen: set[int] = set()
        self._grad_params = [
            p for m in [self.model, *loss_modules] for p in m.parameters()
            if not (id(p) in seen or seen.add(id(p)))
        ]
        # the parameters averaged by hand after backward: all of them without overlap,
        # else those outside the model (the memory's and XML's; DDP reduces the model's)
        model_ids = {id(p) for p in self.model.parameters()}
        self._loss_params = [p for p in self._grad_params if id(p) not in model_ids]
        self._ddp: DistributedDataParallel | None = None
        self._ddp_trainable: tuple[bool, ...] | None = None
        self._ddp_unused: list[torch.nn.Parameter] = []
        self._used_hooks: list = []
        self._ddp_forward = False  # a DDP forward awaits its backward
        self._warmup_step = False
        self._sizes: tuple[int, ...] | None = None
        pooling = getattr(self.model, "pooling", None)
        self._proto_hook = None
        # the host mirror of ``initialized``: no device read (a GPU sync)
        if pooling is not None and hasattr(pooling, "initialized") and not pooling._initialized:
            self._proto_hook = pooling.register_forward_pre_hook(self._init_prototypes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- hooks of Trainer.train_step

    def _build_sampler(self):
        return RankBatchSampler(super()._build_sampler(), rank(), world_size())

    def gather_batch(self, out, labels):
        capacity = self.config.train.batch_size // self.world
        all_labels, sizes = gather_labels(labels, capacity, self._sizes)
        # XML reads the GAP vectors and histograms too; the plain loss (and the warm-up)
        # only the embeddings: gathering what no loss reads would hand the prototypes a
        # zero gradient that one process does not have
        xml = self.xml_loss is not None and not self._warmup_step
        parts = [out.embeddings] + ([out.gap, out.histogram] if xml else [])
        parts = [t for t in parts if t is not None]
        # one differentiable gather for every per-image tensor the losses read
        joined = gather_rows(torch.cat(parts, dim=1), capacity, sizes)
        split = list(joined.split([t.shape[1] for t in parts], dim=1))
        emb = split.pop(0)
        gap = split.pop(0) if xml else None
        hist = split.pop(0) if xml and out.histogram is not None else None
        # ``pooled`` is read by no loss: not gathered
        return type(out)(emb, None, gap, hist), all_labels

    def _set_stage(self, warmup: bool) -> None:
        super()._set_stage(warmup)
        if not self.config.train.overlap_grad_reduce:
            return
        # DDP's reducer buckets the parameters that require gradients when it is built:
        # a new wrapper whenever the trainable set changes (the warm-up freezes the
        # backbone). Every rank changes stage at the same epoch and step.
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if trainable != self._ddp_trainable:
            self._ddp_trainable = trainable
            if self._ddp is not None:  # its reducer's gradient hooks must not outlive it
                remove = getattr(self._ddp.reducer, "_remove_autograd_hooks", None)
                if remove is not None:
                    remove()
            self._ddp = None
            self._stop_watching_used()
            # The stage's first step runs without DDP (the flat all-reduce) and notes which
            # parameters autograd reaches from the loss: DDP then reduces exactly those.
            # One that the stage's loss does not reach (XML's prototypes in the warm-up,
            # which trains on the batch loss alone) keeps no gradient, as in one process.
            # Those reached only after the embeddings' gather (XML's head and prototypes)
            # are reduced by DDP too: its hooks fire when the gradient is accumulated.
            self._used: set[int] = set()
            self._used_hooks = [
                p.register_post_accumulate_grad_hook(lambda p: self._used.add(id(p)))
                for p in self.model.parameters() if p.requires_grad
            ]

    def _stop_watching_used(self) -> None:
        for h in getattr(self, "_used_hooks", []):
            h.remove()
        self._used_hooks = []

    def _build_ddp(self) -> None:
        """DDP over the model's parameters that the first step of this stage reached."""
        self._stop_watching_used()
        names = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in self._used]
        self._ddp_unused = [p for p in self.model.parameters() if p.requires_grad and id(p) not in self._used]
        if len(names) == sum(self._ddp_trainable):
            return  # nothing reached: nothing for DDP to reduce in this stage
        # (DDP reads this attribute of the module when it is built)
        self.model._ddp_params_and_buffers_to_ignore = names
        cuda = self.device.type == "cuda"
        self._ddp = DistributedDataParallel(
            self.model,
            device_ids=[torch.cuda.current_device() if self.device.index is None else self.device.index]
            if cuda else None,
            # BatchNorm statistics are the global batch's on every rank already
            forward_sync_buffers=False,
        )

    def forward_train(self, images):
        self._ddp_forward = self._ddp is not None and torch.is_grad_enabled()
        return self._ddp(images) if self._ddp_forward else self.model(images)

    def skip_backward(self, out) -> None:
        # a DDP forward without backward leaves its reducer untouched (no gradient hook
        # fired), so the next step starts clean; every rank takes this branch together,
        # the loss being the same on all (tests/core/test_distributed.py, "detached")
        self._ddp_forward = False

    def reduce_gradients(self, finite: Tensor) -> Tensor:
        if self._ddp_forward:
            # the model's gradients were averaged during backward (DDP's buckets); the
            # loss modules' (and any the first step did not reach) are averaged here
            self._ddp_forward = False
            return average_gradients(self._loss_params + self._ddp_unused, finite)
        agreed = average_gradients(self._grad_params, finite)
        if self._used_hooks:  # the first step of an overlapped stage
            self._build_ddp()
        return agreed

    def agree_finite(self, finite: Tensor) -> Tensor:
        bad = (~finite).reshape(1).float()
        dist.all_reduce(bad)
        return bad[0] == 0

    def agree_outcome(self, outcome: int) -> int:
        """Every rank's end-of-epoch outcome is the worst any rank saw (rank 0 is the
        one that evaluates): one all-reduce of one number."""
        t = torch.tensor([int(outcome)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather_sources(self, sources):
        return gather_labels(sources, self.config.train.batch_size // self.world, self._sizes)[0]

    def train_step(self, images, labels, optimizer, halves=None, **kw):
        # XML's class-disjoint halves are those of the gathered global batch: the loss
        # splits the global labels itself (the halves of this rank's slice would index
        # the wrong rows).
        self._warmup_step = bool(kw.get("warmup", False))
        # every rank's row count, from the host lengths before the forward is queued
        self._sizes = rank_sizes(len(labels))
        return super().train_step(images, labels, optimizer, halves=None, **kw)

    def _init_prototypes(self, module, args):
        """First batch: initialise the prototypes from the gathered features (as one
        process does from the whole batch), then broadcast rank 0's."""
        (features,) = args
        if module._initialized:  # resumed from a checkpoint: nothing to initialise, ever
            self._proto_hook.remove()
            self._proto_hook = None
            return None
        if not module.training:
            return None
        local = features.detach()
        capacity = self.config.train.batch_size // self.world
        n = torch.tensor([len(local)], device=local.device)
        counts = [torch.empty_like(n) for _ in range(self.world)]
        dist.all_gather(counts, n)
        sizes = tuple(int(c) for c in counts)
        with torch.no_grad():
            full = gather_rows(local.float(), capacity, sizes)
            module._init_from(full.to(local.dtype))
            dist.broadcast(module.prototypes.data, 0)
        self._proto_hook.remove()
        self._proto_hook = None
        return None

    # -- rank 0 evaluates and writes; the others only train

    def train_epoch(self, epoch: int):
        self._check_same("epoch", epoch)
        return super().train_epoch(epoch)

    def _check_same(self, what: str, value: int) -> None:
        t = torch.tensor([value], device=self.device)
        seen = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(seen, t)
        values = [int(s) for s in seen]
        if len(set(values)) > 1:
            raise WorkerStateError(
                f"data-parallel ranks disagree on the {what} ({values}); every rank must "
                "resume from the same checkpoints/last.pt: restart the run"
            )

    def evaluate(self, split, persistent: bool = False) -> dict[str, float]:
        return super().evaluate(split, persistent) if self.is_main else {}

    def embed_probe(self) -> Tensor:
        return super().embed_probe() if self.is_main else torch.empty(0)

    def drift(self) -> dict[str, float]:
        return super().drift() if self.is_main else {}

    def update_best(self, epoch: int, val: dict[str, float]) -> None:
        if self.is_main:
            super().update_best(epoch, val)

    def test_best(self) -> dict[str, float]:
        return super().test_best() if self.is_main else {}

    def save_last(self, wall_seconds: float) -> None:
        if self.is_main:
            super().save_last(wall_seconds)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["workers"] = self.world
        return state
