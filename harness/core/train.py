"""The training loop: one run of one config, checkpointed every epoch, resumable.

``run_training(config, out_dir)`` builds the components from the config (model, data,
loss through a cross-batch memory, optional XML regulariser, optimizers), trains over
the class-balanced sampler, validates on the class-disjoint validation split, keeps the
best checkpoint by ``train.select_metric`` and finally evaluates that checkpoint, and
only that one, on the test split. docs/METHODS.md sections 1, 2 and 4.

Files under ``out_dir``: ``config.yaml``, ``checkpoints/last.pt`` (every epoch),
``checkpoints/best.pt``, ``epochs.jsonl`` (one line per epoch, the ``on_epoch``
metrics) and ``summary.json`` (RunResult fields plus the flat ``val.*``, ``test.*`` and
``test_untrained.*`` metrics).

Conventions chosen here:

* Epochs are numbered from 1; ``train.epochs`` counts the warm-up epochs too (the
  first ``optim.warmup_epochs`` epochs train the new layers alone with SGD; the step
  decay of the main stage counts main-stage epochs only).
* Drift (docs/METHODS.md section 1, "Drift diagnostic"): the probe set is embedded once
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
import time
from pathlib import Path
from typing import Callable

import yaml

from harness.utils.atomic import atomic_write_json
from harness.config import RunConfig
from harness.core.checkpoint import config_from_checkpoint, load_checkpoint
from harness.core.device import describe_device
from harness.core.distributed import DistributedTrainer, PeerFailedError
from harness.core.finite import NonFiniteError, nonfinite_tensors
from harness.core.run_result import RunResult
from harness.core.trainer import StepCallback, Trainer, prefixed
from harness.errors import ConfigError
from harness.results.contract import (
    CONFIG_FILE,
    EPOCH_LOG,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    SUMMARY_FILE,
    TrialStatus,
    best_checkpoint,
    last_checkpoint,
)

EpochCallback = Callable[[int, dict[str, float]], None]

# The end of an epoch (every rank of a data-parallel run agrees on the worst one).
OUTCOME_CONTINUE, OUTCOME_DIVERGED, OUTCOME_FAILED = 0, 1, 2

# Keys that may change between a run and its resumption: they steer the loop, not
# what is learnt (more epochs, other loader / device settings).
RESUMABLE_CHANGES = {
    "train.epochs", "train.device", "train.amp", "train.eval_batch_size", "data.workers",
    "train.eval_untrained", "train.collective_timeout_s", "train.checkpoint_every", "train.staleness.every", "train.staleness.probe", "train.staleness.sample",
}


# ---------------------------------------------------------------------------- run


def create_trainer(config: RunConfig, out_dir: Path, on_step: StepCallback | None = None) -> Trainer:
    """One process, or one rank of ``train.workers`` data-parallel ones."""
    if config.train.workers > 1:
        return DistributedTrainer(config, out_dir, on_step=on_step)
    return Trainer(config, out_dir, on_step=on_step)


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
    trainer = create_trainer(config, out_dir, on_step=on_step)  # data problems surface here
    out_dir.mkdir(parents=True, exist_ok=True)
    last = last_checkpoint(out_dir)
    epochs_log = out_dir / EPOCH_LOG

    if resume and last.is_file():
        state = load_checkpoint(last)  # to the CPU; load_state_dict places each tensor
        _check_resumable(config_from_checkpoint(state, last), config, last)
        trainer.load_state_dict(state)
        _truncate_epochs_log(epochs_log, trainer.epoch)
    else:
        epochs_log.unlink(missing_ok=True)
        best_checkpoint(out_dir).unlink(missing_ok=True)
        if config.train.eval_untrained:
            trainer.model.eval()
            trainer.test_untrained = prefixed("test_untrained", trainer.evaluate(trainer.data.test))
        if len(trainer.probe):
            trainer.model.eval()
            trainer.probe_prev = trainer.embed_probe()
    (out_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    def elapsed() -> float:
        return trainer.wall_before + time.perf_counter() - start

    status: TrialStatus = STATUS_COMPLETED
    t = config.train
    while trainer.epoch < t.epochs:
        epoch = trainer.epoch + 1
        t_epoch = time.perf_counter()
        lr = trainer.current_lr(epoch)
        parts = trainer.train_epoch(epoch)
        metrics: dict[str, float] = dict(parts or {})
        outcome, error = OUTCOME_CONTINUE, None
        # NaN/inf weights or BN statistics diverged too, even under a finite loss
        if parts is None or nonfinite_tensors(trainer.model):
            outcome = OUTCOME_DIVERGED
        else:
            trainer.model.eval()
            try:  # embed() refuses NaN/inf embeddings: best.pt never holds such a model
                if epoch % t.val_every == 0 or epoch == t.epochs:
                    val = prefixed("val", trainer.evaluate(trainer.data.val, persistent=True)) if trainer.has_validation() else {}
                    metrics.update(val)
                    trainer.update_best(epoch, val)
                metrics.update(trainer.drift())
                metrics.update(trainer.staleness())
            except NonFiniteError:
                outcome = OUTCOME_DIVERGED
            except Exception as e:  # noqa: BLE001 - raised below, once every rank knows
                outcome, error = OUTCOME_FAILED, e
        # Data-parallel ranks learn rank 0's outcome (it evaluates), so none is left
        # waiting for a rank that stopped; one process: its own outcome.
        agreed = trainer.agree_outcome(outcome)
        if error is not None:
            raise error
        if agreed == OUTCOME_FAILED:
            raise PeerFailedError(
                f"another data-parallel rank failed at the end of epoch {epoch} (its error is "
                "the run's reason); this rank stops with it"
            )
        if agreed == OUTCOME_DIVERGED:
            status = STATUS_DIVERGED
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

    test = trainer.test_best() if status == STATUS_COMPLETED else {}
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
    atomic_write_json(out_dir / SUMMARY_FILE, result.summary())
    return result
