"""The training loop: one run of one config, checkpointed every epoch, resumable.

``run_training(config, out_dir)`` builds the components from the config (model, data,
loss through a cross-batch memory, optional XML regulariser, optimizers), trains over
the class-balanced sampler, validates on the class-disjoint validation split, keeps the
best checkpoint by ``train.select_metric`` and finally evaluates that checkpoint, and
only that one, on the test split. METHODS.md sections 1, 2 and 4.

Files under ``out_dir``: ``config.yaml``, ``checkpoints/last.pt`` (every epoch),
``checkpoints/best.pt``, ``epochs.jsonl`` (one line per epoch, the ``on_epoch``
metrics) and ``summary.json`` (RunResult fields plus the flat ``val.*``, ``test.*`` and
``test_untrained.*`` metrics).

Conventions chosen here:

* Epochs are numbered from 1; ``train.epochs`` counts the warm-up epochs too (the
  first ``optim.warmup_epochs`` epochs train the new layers alone with SGD; the step
  decay of the main stage counts main-stage epochs only).
* Drift (METHODS.md section 1, "Drift diagnostic"): the probe set is embedded once
  before training (epoch 0), so the drift of epoch 1 is its distance to the untrained
  network's embeddings and every epoch has a finite value.
* A non-finite loss, weight, buffer or embedding ends the run with status "diverged":
  the diverged epoch is not checkpointed and not reported to ``on_epoch``; the test
  split is not evaluated.
* One host read per step: the loss parts stay on the device and are copied to the
  host together once the step is queued (that read is also the divergence check);
  nothing in the memory / XML forward waits for the GPU.
* Resume loads ``last.pt`` to the CPU and each component copies its tensors to the
  training device; the drift probe stays on the CPU, where ``embed`` returns it.
* Without validation classes (``data.val_fraction: 0``) the last epoch is "best".
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

from harness.config import RunConfig
from harness.core.checkpoint import (
    config_from_checkpoint,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from harness.core.finite import NonFiniteError, nonfinite_tensors
from harness.core.device import amp_dtype, describe_device, needs_grad_scaler, pick_device
from harness.core.loaders import EvalLoaders, training_loader
from harness.errors import ConfigError

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
StepCallback = Callable[[int, int], None]

# Keys that may change between a run and its resumption: they steer the loop, not
# what is learnt (more epochs, other loader / device settings).
RESUMABLE_CHANGES = {
    "train.epochs", "train.device", "train.amp", "train.eval_batch_size", "data.workers",
    "train.eval_untrained",
}


@dataclass
class RunResult:
    status: str  # "completed" | "diverged"
    epochs_run: int
    best_epoch: int | None
    best_val: dict[str, float]  # "val.recall@1", "val.map@r", ...
    test: dict[str, float]  # "test.recall@1", ... (best checkpoint only)
    wall_seconds: float
    device: str  # "cpu" | "cuda:0 NVIDIA H100 ..."
    out_dir: Path
    # Extension: the test metrics of the network before training ("test_untrained.*").
    test_untrained: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The flat ``summary.json`` mapping."""
        d = {k: v for k, v in asdict(self).items() if k not in ("best_val", "test", "test_untrained")}
        d["out_dir"] = str(self.out_dir)
        return {**d, **self.best_val, **self.test, **self.test_untrained}


# ---------------------------------------------------------------------------- builders


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def has_prototypes(config: RunConfig) -> bool:
    """The model carries prototypes for prototype pooling and for XML (METHODS.md §2)."""
    return config.model.pooling == "prototype" or config.xml.enabled


def build_model(config: RunConfig) -> nn.Module:
    from harness.core.model import create_model

    return create_model(config.model, with_prototypes=has_prototypes(config))


def build_losses(config: RunConfig, n_train: int, num_classes: int):
    """-> (CrossBatchMemory wrapping the plain loss, XMLLoss or None). METHODS.md §1, §2, §4."""
    from harness.core.losses import create_loss, is_proxy_loss
    from harness.core.memory import CrossBatchMemory, KalmanMoments
    from harness.core.pairs import positive_pair_problem

    problem = positive_pair_problem(config)
    if problem:
        raise ConfigError(problem)
    if is_proxy_loss(config.loss.name) and config.memory.kind != "none":
        raise ConfigError(
            f"memory.kind: proxy loss {config.loss.name} has no reference set; "
            "use memory.kind=none or a pair-based loss"
        )
    loss, miner = create_loss(
        config.loss, num_classes=num_classes, embedding_size=config.model.embedding_size
    )
    memory = CrossBatchMemory(
        loss,
        config.model.embedding_size,
        config.memory.capacity(n_train),
        kind=config.memory.kind,
        miner=miner,
        start_iteration=config.memory.start_iteration,
        batch_loss_weight=config.memory.batch_loss_weight,
        kalman=KalmanMoments(**config.memory.kalman.model_dump()),
    )
    xml_loss = None
    if config.xml.enabled:
        from harness.core.xml import XMLLoss

        xml_loss = XMLLoss(loss, miner, alpha=config.xml.alpha)
    return memory, xml_loss


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def build_optimizers(config: RunConfig, model: nn.Module, loss_params: list[nn.Parameter]):
    """-> (AdamW, warm-up SGD or None, StepLR on the AdamW).

    The proxy parameters of a proxy loss form their own group at ``loss.proxy_lr``.
    The warm-up SGD trains the new layers (head, prototypes, and the loss's proxies)
    at ``optim.warmup_lr``.
    """
    opt = config.optim
    groups = [{"params": list(model.parameters()), "lr": opt.lr, "weight_decay": opt.weight_decay}]
    if loss_params:
        groups.append({"params": loss_params, "lr": config.loss.proxy_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=opt.lr_decay_every, gamma=opt.lr_decay
    )
    warmup = None
    if opt.warmup_epochs > 0:
        warmup = torch.optim.SGD(
            _unique(list(model.new_parameters()) + loss_params), lr=opt.warmup_lr, momentum=0.9
        )
    return optimizer, warmup, scheduler


def probe_indices(n_train: int, probe_size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of the training images for the drift diagnostic."""
    rng = np.random.default_rng([seed, 7])
    return np.sort(rng.choice(n_train, size=min(probe_size, n_train), replace=False))


def select_key(config: RunConfig) -> str:
    return f"val.{config.train.select_metric}"


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}.{k}": float(v) for k, v in metrics.items()}


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- trainer


class Trainer:
    """The state of one run and its steps: train an epoch, validate, probe, checkpoint."""

    def __init__(self, config: RunConfig, out_dir: Path, on_step: StepCallback | None = None):
        from harness.data.registry import create_datasets

        self.config = config
        self.out_dir = Path(out_dir)
        self.on_step = on_step
        self.device = pick_device(config.train.device)
        self.amp = amp_dtype(self.device, config.train.amp)

        seed_everything(config.seed)
        model = build_model(config)
        self.data = create_datasets(config.data, config.seed, model.mean, model.std)
        self.model = model.to(self.device)
        train_labels = self.data.train.labels
        # Class ids -> 0..C-1 for the losses (proxy losses index their proxies by label).
        self.classes = torch.as_tensor(np.unique(train_labels), device=self.device)
        self.memory, self.xml_loss = build_losses(config, len(train_labels), len(self.classes))
        self.memory.to(self.device)
        if self.xml_loss is not None:
            self.xml_loss.to(self.device)
        loss_params = _unique(
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

        # Run state (checkpointed).
        self.epoch = 0
        self.best_epoch: int | None = None
        self.best_value = -math.inf
        self.best_val: dict[str, float] = {}
        self.test_untrained: dict[str, float] = {}
        self.probe_prev: torch.Tensor | None = None
        self.wall_before = 0.0  # seconds spent before a resumption

    # -- components

    def _build_sampler(self):
        from harness.data.sampler import ClassBalancedBatchSampler

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
        for images, labels, n_skipped in loader:
            skipped += n_skipped
            if len(labels) < 2:
                continue
            halves = None
            if self.xml_loss is not None:  # on the CPU labels: no wait for the GPU
                from harness.core.xml import split_halves

                halves = tuple(h.to(self.device, non_blocking=True) for h in split_halves(labels))
            labels = torch.searchsorted(self.classes, labels.to(self.device, non_blocking=True))
            parts = self.train_step(images.to(self.device, non_blocking=True), labels, optimizer, halves)
            if parts is None:
                return None
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

    def train_step(self, images, labels, optimizer, halves=None) -> dict[str, float] | None:
        """One optimizer step; its loss parts, or None when the loss is not finite.

        The parts are read on the host once, after the step is queued: a non-finite
        step has then been applied, which is harmless, as the run ends without
        checkpointing this epoch.
        """
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.model(images)
        # The losses run in fp32: similarities and the closed-form XML fit are
        # sensitive to half precision.
        out = type(out)(*(None if t is None else t.float() for t in out))
        plain = self.memory(out.embeddings, labels)
        parts = {f"loss.{k}" if not k.startswith("loss") else k: v
                 for k, v in getattr(self.memory, "last_parts", {}).items()}
        total = plain
        if self.xml_loss is not None:
            from harness.core.xml import xml_total_loss

            xml = self.xml_loss(out, labels, self.model.prototypes, self.model.embed_pooled, halves)
            parts["loss.xml"] = xml.detach()
            total = xml_total_loss(plain, xml, self.config.xml.weight)
        parts["loss"] = total.detach()
        if total.requires_grad:
            self.scaler.scale(total).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        # The step's one host read: all parts in one copy.
        values = torch.stack([torch.as_tensor(v, device=self.device).float() for v in parts.values()]).tolist()
        host = dict(zip(parts, values))
        if not math.isfinite(host["loss"]):
            return None
        return host

    # -- evaluation

    def evaluate(self, split, persistent: bool = False) -> dict[str, float]:
        """``persistent``: a split evaluated every epoch (validation) keeps its loader."""
        from harness.core.evaluate import evaluate_split

        kw = self._eval_kwargs()
        return evaluate_split(self.model, split, loader_for=self.eval_loaders if persistent else None, **kw)

    def has_validation(self) -> bool:
        return len(self.data.val.query) > 0

    def embed_probe(self) -> torch.Tensor:
        from harness.core.evaluate import embed

        kw = self._eval_kwargs()
        kw.pop("ks")
        # embedded every epoch: a persistent loader, like validation
        return embed(self.model, self.probe, loader_for=self.eval_loaders, **kw)[0].float().cpu()

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

    def update_best(self, epoch: int, val: dict[str, float]) -> bool:
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
                return False
            self.best_value = value
        self.best_epoch, self.best_val = epoch, dict(val)
        save_checkpoint(
            {"model": self.model.state_dict(), "config": self.config.model_dump(mode="json"),
             "epoch": epoch, "val": dict(val)},
            self.out_dir / "checkpoints" / "best.pt",
        )
        return True

    def test_best(self) -> dict[str, float]:
        best = self.out_dir / "checkpoints" / "best.pt"
        if best.is_file():
            self.model.load_state_dict(load_checkpoint(best)["model"])
        return _prefixed("test", self.evaluate(self.data.test))

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
        save_checkpoint(state, self.out_dir / "checkpoints" / "last.pt")


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Restore a GradScaler; a run saved without loss scaling (fp32, bf16: an empty
    state) resumed with fp16 starts from a fresh scale instead of failing."""
    if not state:
        if scaler.is_enabled():
            log.info("checkpoint has no grad-scaler state (saved without fp16): starting from a fresh scale")
        return
    scaler.load_state_dict(state)


# ---------------------------------------------------------------------------- run


def _check_resumable(stored: RunConfig, config: RunConfig, path: Path) -> None:
    a, b = stored.flat(), config.flat()
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{path} belongs to a run with another config (differs in {', '.join(changed[:3])}); "
            "use another --out directory or --no-resume"
        )


def _truncate_epochs_log(path: Path, last_epoch: int) -> None:
    """Drop lines of epochs after the checkpoint (a crash between checkpoint and log)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= last_epoch]
    path.write_text("".join(ln + "\n" for ln in keep))


def run_training(
    config: RunConfig,
    out_dir: Path,
    on_epoch: EpochCallback | None = None,
    resume: bool = True,
    on_step: StepCallback | None = None,
) -> RunResult:
    """Train one run; see the module docstring for the files and conventions.

    ``on_epoch(epoch, metrics)`` is called after ``checkpoints/last.pt`` is written;
    ``on_step(step, steps_per_epoch)`` after every optimizer step (progress bars).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    trainer = Trainer(config, out_dir, on_step=on_step)  # data problems surface here
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "checkpoints" / "last.pt"
    epochs_log = out_dir / "epochs.jsonl"

    if resume and last.is_file():
        state = load_checkpoint(last)  # to the CPU; load_state_dict places each tensor
        _check_resumable(config_from_checkpoint(state, last), config, last)
        trainer.load_state_dict(state)
        _truncate_epochs_log(epochs_log, trainer.epoch)
    else:
        epochs_log.unlink(missing_ok=True)
        (out_dir / "checkpoints" / "best.pt").unlink(missing_ok=True)
        if config.train.eval_untrained:
            trainer.model.eval()
            trainer.test_untrained = _prefixed("test_untrained", trainer.evaluate(trainer.data.test))
        if len(trainer.probe):
            trainer.model.eval()
            trainer.probe_prev = trainer.embed_probe()
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    def elapsed() -> float:
        return trainer.wall_before + time.perf_counter() - start

    status = "completed"
    t = config.train
    while trainer.epoch < t.epochs:
        epoch = trainer.epoch + 1
        t_epoch = time.perf_counter()
        lr = trainer.current_lr(epoch)
        parts = trainer.train_epoch(epoch)
        # NaN/inf weights or BN statistics diverged too, even under a finite loss
        if parts is None or nonfinite_tensors(trainer.model):
            status = "diverged"
            break
        metrics: dict[str, float] = dict(parts)
        trainer.model.eval()
        try:  # embed() refuses NaN/inf embeddings: best.pt never holds such a model
            if epoch % t.val_every == 0 or epoch == t.epochs:
                val = _prefixed("val", trainer.evaluate(trainer.data.val, persistent=True)) if trainer.has_validation() else {}
                metrics.update(val)
                trainer.update_best(epoch, val)
            metrics.update(trainer.drift())
        except NonFiniteError:
            status = "diverged"
            break
        metrics["lr"] = lr
        metrics["memory_fill"] = float(trainer.memory.fill)
        metrics["epoch_seconds"] = time.perf_counter() - t_epoch
        trainer.epoch = epoch
        trainer.save_last(elapsed())
        with epochs_log.open("a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    test = trainer.test_best() if status == "completed" else {}
    trainer.close()
    result = RunResult(
        status=status,
        epochs_run=trainer.epoch,
        best_epoch=trainer.best_epoch,
        best_val=trainer.best_val,
        test=test,
        wall_seconds=elapsed(),
        device=describe_device(trainer.device),
        out_dir=out_dir,
        test_untrained=trainer.test_untrained,
    )
    write_json_atomic(out_dir / "summary.json", result.summary())
    return result
