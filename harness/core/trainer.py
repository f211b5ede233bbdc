"""The Trainer: the state of one run and its steps (train an epoch, validate, probe,
checkpoint). The loop over epochs, resumption and the run's files are in
:mod:`harness.core.train`; the components it holds are built by
:mod:`harness.core.components`. Conventions: see :mod:`harness.core.train`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from harness.config import RunConfig
from harness.core.checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from harness.core.components import (
    build_losses,
    build_model,
    build_optimizers,
    probe_indices,
    seed_everything,
    unique_parameters,
)
from harness.core.device import amp_dtype, apply_layout, needs_grad_scaler, pick_device
from harness.core.evaluate import embed, evaluate_split
from harness.core.loaders import EvalLoaders, batch_seed, training_loader
from harness.core.sizes import check_sizes
from harness.core.staleness import StepDrift, eval_mode, memory_error
from harness.core.xml import split_halves, xml_total_loss
from harness.data.device_augment import DeviceAugment, resolve_augment_on
from harness.data.registry import create_datasets
from harness.data.sampler import ClassBalancedBatchSampler
from harness.errors import ConfigError
from harness.results.contract import best_checkpoint, last_checkpoint

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


def select_key(config: RunConfig) -> str:
    return f"val.{config.train.select_metric}"


def prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}.{k}": float(v) for k, v in metrics.items()}


class Trainer:
    """The state of one run and its steps: train an epoch, validate, probe, checkpoint."""

    def __init__(self, config: RunConfig, out_dir: Path, on_step: StepCallback | None = None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.on_step = on_step
        self.device = pick_device(config.train.device)
        self.amp = amp_dtype(self.device, config.train.amp)
        check_sizes(config, self.device)  # before the model, its head and the memory exist

        seed_everything(config.seed)
        model = build_model(config)
        self.augment_on = resolve_augment_on(config.data.augment_on, self.device)
        self.data = create_datasets(config.data, config.seed, model.mean, model.std, self.augment_on)
        # augment_on=device: the loader yields uint8 crops, augmented here per batch
        self.device_augment = (DeviceAugment(config.data.augment, config.data.image_size, model.mean, model.std)
                               if self.augment_on == "device" else None)
        train_labels = self.data.train.labels
        if config.memory.kind != "none" and config.memory.size is None:  # a fraction of the data
            check_sizes(config, self.device, config.memory.capacity(len(train_labels), config.train.batch_size))
        self.model = model.to(self.device)
        self.memory_format = apply_layout(self.model, self.device)  # channels_last on CUDA only
        # Class ids -> 0..C-1 for the losses (proxy losses index their proxies by label).
        self.classes = torch.as_tensor(np.unique(train_labels), device=self.device)
        self.memory, self.xml_loss = build_losses(config, len(train_labels), len(self.classes))
        self.memory.to(self.device)
        if self.xml_loss is not None:
            self.xml_loss.to(self.device)
        loss_params = unique_parameters(
            list(self.memory.parameters())
            + ([] if self.xml_loss is None else list(self.xml_loss.parameters()))
        )
        self.optimizer, self.warmup_optimizer, self.scheduler = build_optimizers(
            config, self.model, loss_params
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=needs_grad_scaler(self.amp))
        self.sampler = self._build_sampler()
        cuda = self.device.type == "cuda"
        self.train_loader = training_loader(
            self.data.train, self.sampler, config.seed, config.data.workers, pin_memory=cuda
        )
        # validation runs every epoch: its loader keeps its workers between epochs
        self.eval_loaders = EvalLoaders(config.train.eval_batch_size, config.data.workers, cuda)
        eval_tf = self.data.test.query.transform
        self.probe = self.data.train.subset(
            probe_indices(len(train_labels), config.train.probe_size, config.seed)
        ).with_transform(eval_tf)
        self.eval_train = self.data.train.with_transform(eval_tf)  # memory rows re-embedded
        staleness = config.train.staleness
        probe_batch = probe_indices(len(train_labels), staleness.probe, config.seed + 1)
        self.step_drift = StepDrift(
            self.model, self._load_images(self.eval_train, probe_batch),
            staleness.every if self.is_main else 0,  # rank 0 measures, as it evaluates
        )

        # Run state (checkpointed).
        self.epoch = 0
        self.best_epoch: int | None = None
        self.best_value = -math.inf
        self.best_val: dict[str, float] = {}
        self.test_untrained: dict[str, float] = {}
        self.probe_prev: torch.Tensor | None = None
        self.wall_before = 0.0  # seconds spent before a resumption

    is_main = True  # the process that evaluates and writes (DistributedTrainer: rank 0)

    # -- components

    def _load_images(self, dataset, indices) -> torch.Tensor:
        items = [dataset[int(i)] for i in indices]
        items = [it for it in items if it is not None]
        if not items:
            return torch.zeros(0)
        return torch.stack([it[0] for it in items]).to(self.device)

    def _build_sampler(self):
        t = self.config.train
        return ClassBalancedBatchSampler(
            self.data.train.labels, t.batch_size, t.samples_per_class,
            seed=self.config.seed, iters_per_epoch=t.iters_per_epoch,
        )

    def close(self) -> None:
        """Stop the persistent loader workers."""
        self.eval_loaders.close()
        self.train_loader = None

    def _eval_kwargs(self) -> dict[str, Any]:
        return dict(
            ks=tuple(self.config.eval.ks),
            batch_size=self.config.train.eval_batch_size,
            device=self.device,
            workers=self.config.data.workers,
            amp_dtype=self.amp,
        )

    # -- stages

    def is_warmup(self, epoch: int) -> bool:
        return epoch <= self.config.optim.warmup_epochs

    def _set_stage(self, warmup: bool) -> None:
        """Warm-up: only the new layers get gradients and the backbone's BN stays frozen."""
        new = {id(p) for p in self.model.new_parameters()}
        for p in self.model.parameters():
            p.requires_grad_(not warmup or id(p) in new)
        self.model.train()
        if warmup:
            self.model.backbone.eval()

    def current_lr(self, epoch: int) -> float:
        opt = self.warmup_optimizer if self.is_warmup(epoch) else self.optimizer
        return float(opt.param_groups[0]["lr"])

    # -- one epoch

    def train_epoch(self, epoch: int) -> dict[str, float] | None:
        """Mean loss parts over the epoch, or None when the loss became non-finite."""
        warmup = self.is_warmup(epoch)
        optimizer = self.warmup_optimizer if warmup else self.optimizer
        self._set_stage(warmup)
        loader = self.train_loader
        loader.batch_sampler.set_epoch(epoch)  # sampler order and per-batch worker seeds
        total_steps = len(loader)
        sums: dict[str, float] = defaultdict(float)
        steps = skipped = 0
        self.step_drift.reset()
        for batch, (images, labels, n_skipped, sources) in enumerate(loader):
            skipped += n_skipped
            if len(labels) < 2:
                continue
            images = self.training_images(images, epoch, batch)
            halves = None
            if self.xml_loss is not None and not warmup:  # on the CPU labels: no wait for the GPU
                halves = tuple(h.to(self.device, non_blocking=True) for h in split_halves(labels))
            labels = torch.searchsorted(self.classes, labels.to(self.device, non_blocking=True))
            self.step_drift.before_step(steps)
            parts = self.train_step(
                images, labels, optimizer, halves,
                sources=sources.to(self.device, non_blocking=True), warmup=warmup,
            )
            if parts is None:
                return None
            self.step_drift.after_step()
            for k, v in parts.items():
                sums[k] += v
            steps += 1
            if self.on_step is not None:
                self.on_step(steps, total_steps)
        if not warmup:
            self.scheduler.step()
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        out["skipped_images"] = float(skipped)
        return out

    def training_images(self, images: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """A loaded batch on the training device, in the model's memory format; with
        ``augment_on: device`` augmented here, seeded by (seed, epoch, batch) as the
        loader's workers are."""
        images = images.to(self.device, non_blocking=True)
        if self.device_augment is not None:
            images = self.device_augment(images, batch_seed(self.config.seed, epoch, batch))
        return images.contiguous(memory_format=self.memory_format)

    def train_step(self, images, labels, optimizer, halves=None, sources=None, warmup=False) -> dict[str, float] | None:
        """One optimizer step; its loss parts, or None when the loss is not finite.

        ``warmup``: the pre-warm-up of docs/METHODS.md §4: L(B, B) alone for every method, the
        memory neither used nor filled (nor its Kalman filter or iteration count
        advanced), no XML term. ``sources``: the batch's training-image indices.

        The parts are read on the host once, after the step is queued: a non-finite
        step has then been applied, which is harmless, as the run ends without
        checkpointing this epoch.
        """
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.forward_train(images)
        local = out
        # The losses run in fp32: similarities and the closed-form XML fit are
        # sensitive to half precision.
        out = type(out)(*(None if t is None else t.float() for t in out))
        out, labels = self.gather_batch(out, labels)
        if warmup:
            plain = self.memory.batch_loss(out.embeddings, labels)
        else:
            sources = None if sources is None else self.gather_sources(sources)
            plain = self.memory(out.embeddings, labels, sources)
        parts = dict(self.memory.last_parts)  # loss.batch, loss.memory
        total = plain
        if self.xml_loss is not None and not warmup:
            xml = self.xml_loss(out, labels, self.model.prototypes, self.model.embed_pooled, halves)
            parts["loss.xml"] = xml.detach()
            total = xml_total_loss(plain, xml, self.config.xml.weight)
        parts["loss"] = total.detach()
        finite = torch.isfinite(parts["loss"])
        if total.requires_grad:
            self.scaler.scale(total).backward()
            finite = self.reduce_gradients(finite)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            self.skip_backward(local)
            finite = self.agree_finite(finite)
        # The step's one host read: all parts (and whether every rank's loss was finite)
        # in one copy.
        values = torch.stack([torch.as_tensor(v, device=self.device).float()
                              for v in [*parts.values(), finite]]).tolist()
        host = dict(zip(parts, values[:-1]))
        if not (math.isfinite(host["loss"]) and values[-1]):
            return None
        return host

    # Data-parallel hooks (harness/core/distributed.py): one process is the whole batch.
    def forward_train(self, images):
        """The model's forward of a training step (DistributedTrainer: through torch's
        DDP wrapper, whose reducer then averages the gradients during backward)."""
        return self.model(images)

    def skip_backward(self, out) -> None:
        """A training forward whose loss has no gradient (here: nothing to do)."""

    def gather_batch(self, out, labels):
        """The model outputs and labels of the global batch (here: this batch)."""
        return out, labels

    def gather_sources(self, sources):
        """The training-image indices of the global batch (here: this batch)."""
        return sources

    def reduce_gradients(self, finite: torch.Tensor) -> torch.Tensor:
        """Combine the gradients of all ranks (here: nothing to combine); ``finite``: this
        rank's loss is finite (a device tensor) -> every rank's is (here: this one's)."""
        return finite

    def agree_finite(self, finite: torch.Tensor) -> torch.Tensor:
        """Whether every rank's loss is finite, for a step without gradients."""
        return finite

    def agree_outcome(self, outcome: int) -> int:
        """The end of an epoch as every rank sees it (``OUTCOME_*`` of harness.core.train;
        here: this process's own)."""
        return outcome

    # -- evaluation

    def evaluate(self, split, persistent: bool = False) -> dict[str, float]:
        """``persistent``: a split evaluated every epoch (validation) keeps its loader."""
        kw = self._eval_kwargs()
        return evaluate_split(self.model, split, loader_for=self.eval_loaders if persistent else None, **kw)

    def has_validation(self) -> bool:
        return len(self.data.val.query) > 0

    def embed_probe(self) -> torch.Tensor:
        kw = self._eval_kwargs()
        kw.pop("ks")
        # A few dozen images, in this process: a persistent loader of its own would keep
        # data.workers more processes alive for the whole run (validation's are enough).
        kw["workers"] = 0
        return embed(self.model, self.probe, **kw)[0].float().cpu()

    def drift(self) -> dict[str, float]:
        """Per-image L2 distance of the probe embeddings to the previous epoch's."""
        if len(self.probe) == 0:
            return {}
        current = self.embed_probe()
        prev = self.probe_prev
        self.probe_prev = current
        if prev is None:
            return {"drift_mean": float("nan"), "drift_max": float("nan")}
        d = (current - prev.to(current.device)).norm(dim=1)
        return {"drift_mean": float(d.mean()), "drift_max": float(d.max())}

    def staleness(self) -> dict[str, float]:
        """The epoch's staleness diagnostics (harness/core/staleness.py): step drift
        (Δk = 1) over the epoch, the memory's error now, and their cost in seconds."""
        if not self.is_main:
            return {}
        t = time.perf_counter()
        cfg = self.config.train.staleness
        kw = self._eval_kwargs()
        kw.pop("ks")
        kw["workers"] = 0  # a few hundred images: worker start-up would cost more

        def embed_images(indices):
            return embed(self.model, self.eval_train.subset(indices), **kw)[0]

        with eval_mode(self.model), torch.no_grad():
            queries = self.model(self.step_drift.images).embeddings.float() if len(self.step_drift.images) else torch.zeros(0)
        out = self.step_drift.epoch_metrics()
        out.update(memory_error(self.memory, embed_images, queries, cfg.sample, self.config.seed + self.epoch))
        out["staleness_seconds"] = self.step_drift.seconds + time.perf_counter() - t
        return out

    def update_best(self, epoch: int, val: dict[str, float]) -> None:
        """Keep best.pt by the selection metric; without validation, the last epoch."""
        key = select_key(self.config)
        if self.has_validation():
            if key not in val:
                raise ConfigError(
                    f"train.select_metric: '{self.config.train.select_metric}' is not a "
                    f"validation metric (have: {', '.join(sorted(k[4:] for k in val))})"
                )
            value = val[key]
            if not (value > self.best_value):
                return
            self.best_value = value
        self.best_epoch, self.best_val = epoch, dict(val)
        save_checkpoint(
            {"model": self.model.state_dict(), "config": self.config.model_dump(mode="json"),
             "epoch": epoch, "val": dict(val)},
            best_checkpoint(self.out_dir),
        )

    def test_best(self) -> dict[str, float]:
        best = best_checkpoint(self.out_dir)
        if best.is_file():
            self.model.load_state_dict(load_checkpoint(best)["model"])
        return prefixed("test", self.evaluate(self.data.test))

    # -- checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "warmup_optimizer": None if self.warmup_optimizer is None else self.warmup_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "memory": self.memory.state_dict(),
            "xml_loss": None if self.xml_loss is None else self.xml_loss.state_dict(),
            "rng": rng_states(),
            "epoch": self.epoch,
            "best": {"epoch": self.best_epoch, "value": self.best_value, "val": self.best_val},
            "test_untrained": self.test_untrained,
            "probe_prev": self.probe_prev,
            "wall_seconds": self.wall_before,
            "config": self.config.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.warmup_optimizer is not None and state.get("warmup_optimizer") is not None:
            self.warmup_optimizer.load_state_dict(state["warmup_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        load_scaler_state(self.scaler, state.get("scaler") or {})
        self.memory.load_state_dict(state["memory"])
        if self.xml_loss is not None and state.get("xml_loss") is not None:
            self.xml_loss.load_state_dict(state["xml_loss"])
        self.epoch = int(state["epoch"])
        best = state["best"]
        self.best_epoch, self.best_value, self.best_val = best["epoch"], best["value"], best["val"]
        self.test_untrained = state.get("test_untrained", {})
        probe = state.get("probe_prev")
        self.probe_prev = None if probe is None else probe.cpu()  # where embed_probe keeps it
        self.wall_before = float(state.get("wall_seconds", 0.0))
        set_rng_states(state["rng"])

    def save_last(self, wall_seconds: float) -> None:
        state = self.state_dict()
        state["wall_seconds"] = wall_seconds
        save_checkpoint(state, last_checkpoint(self.out_dir))


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Restore a GradScaler; a run saved without loss scaling (fp32, bf16: an empty
    state) resumed with fp16 starts from a fresh scale instead of failing."""
    if not state:
        if scaler.is_enabled():
            log.info("checkpoint has no grad-scaler state (saved without fp16): starting from a fresh scale")
        return
    scaler.load_state_dict(state)
