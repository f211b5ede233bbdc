"""Ray Tune trainable wrapping :func:`harness.core.train.run_training`.

One trial = one ``run_training`` call. Every epoch is reported to Tune together with
the run directory as a Tune checkpoint (``last.pt``, ``best.pt``, ``epochs.jsonl``), so
a trial whose worker dies restarts from its last epoch on another worker. A diverged
run is reported as such and ends normally: the sweep goes on. So does a trial whose
configuration or data cannot work: it is reported as ``failed`` with its one-line
reason and not retried (:mod:`harness.sweep.failures`).

The trial config is ``{"spec": TrialSpec}`` (:mod:`harness.trial_spec`: the phase,
the compared method, the dotted config overrides, the seed); the experiment's base
config arrives through ``tune.with_parameters``.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune

from harness.clock import utc_iso
from harness.core.install import library_versions
from harness.results_contract import (
    COL_EPOCH,
    COL_ERROR,
    COL_PHASE,
    COL_STATUS,
    DEFAULT_METRIC,
    OBJECTIVE_KEY,
    OBJECTIVE_SO_FAR_KEY,
    PHASE_REPRODUCTION,
    PHASE_SEARCH,
    STATUS_COMPLETED,
    STATUS_FAILED,
)
from harness.sweep.failures import is_deterministic, one_line
from harness.trial_spec import spec_of
from trainables.objective import objective_training
from trainables.trial_setup import read_epochs, run_folder, seal_checkpoint, trial_run_config

# Every trial reports its objective under OBJECTIVE_KEY (Optuna and ASHA read it): the
# experiment's metric, best so far on validation; the worst value before one exists.
TRIAL_META = "trial.json"
# The trial's final report, kept in its last checkpoint: a trial that Tune restarts
# after it had already finished (the driver died before Tune's experiment snapshot
# recorded the end) reports it again instead of running anything.
FINAL_REPORT = "final.json"


def worst(mode: str) -> float:
    return -math.inf if mode == "max" else math.inf


def scored_value(record: dict[str, Any], metric: str) -> Any:
    """What an epoch record scores the trial on: the search metric, or for a trial of
    several runs (trainables/objective.py) the mean of their best-so-far values."""
    return record.get(OBJECTIVE_SO_FAR_KEY, record.get(metric))


def better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def train_retrieval(
    config: dict[str, Any],
    base: dict[str, Any] | None = None,
    metric: str = DEFAULT_METRIC,
    mode: str = "max",
    cpus: float = 1.0,
    train_fn: Callable[..., Any] | None = None,
    objective: dict[str, Any] | None = None,
) -> None:
    """The Tune function trainable (see the module docstring). ``objective``: the
    experiment's ``search.objective``; a search trial of several folds or seeds trains
    them all and reports their mean (:mod:`trainables.objective`)."""
    spec = spec_of(config)
    try:
        run_config = trial_run_config(base, spec)
    except Exception as e:  # noqa: BLE001 - a config error is reported, not retried
        _report_failure(e, mode, epochs_run=0)
        return
    if train_fn is None:
        # here, not at the top: the driver imports this module, only trials need torch
        from harness.core.train import run_training as train_fn
    from harness.core.device import isolate_gpus  # torch: in the trial only, as above

    if spec.get(COL_PHASE) == PHASE_SEARCH:
        train_fn = objective_training(train_fn, objective, run_config.seed, metric, mode)

    # Exactly the GPUs Ray assigned (none for `gpus: 0`: Ray >= 2.50 no longer blanks
    # CUDA_VISIBLE_DEVICES then), before anything touches CUDA in this process.
    isolate_gpus(ray.get_gpu_ids())

    # Intra-op threads: exactly the CPUs this trial was given, so parallel trials do
    # not oversubscribe the node.
    import torch  # in the trial only, as above

    torch.set_num_threads(max(1, int(cpus)))

    with run_folder(tune.get_context().get_trial_id(), tune.get_checkpoint()) as out_dir:
        _run_trial(run_config, out_dir, metric, mode, train_fn, save_retrievals=draws_pictures(spec))


def draws_pictures(spec) -> bool:
    """The best configurations' reproductions keep their test-set neighbours for the
    report's retrieval pictures."""
    return spec.get(COL_PHASE) == PHASE_REPRODUCTION and spec.get("best_config") is not False


def tune_report(metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
    """Report to the Tune trial, with ``checkpoint_dir`` as its checkpoint."""
    checkpoint = None if checkpoint_dir is None else tune.Checkpoint.from_directory(str(seal_checkpoint(checkpoint_dir)))
    tune.report(metrics, checkpoint=checkpoint)


def _report_failure(error: BaseException, mode: str, epochs_run: int,
                    report: Callable[[dict[str, Any], Path | None], None] = tune_report) -> None:
    """End the trial as ``failed`` with its reason (a final report, no retry)."""
    report({OBJECTIVE_KEY: worst(mode), COL_EPOCH: int(epochs_run), "final": True,
            COL_STATUS: STATUS_FAILED, COL_ERROR: one_line(error), "started_at": utc_iso()}, None)


def _run_trial(run_config, out_dir: Path, metric: str, mode: str, train_fn,
               save_retrievals: bool = False,
               report: Callable[[dict[str, Any], Path | None], None] = tune_report) -> None:
    """One run_training call reporting every epoch (with its checkpoint) and the end.

    ``report(metrics, checkpoint_dir)``: Tune's by default; rank 0 of a data-parallel
    trial reports through Ray Train instead (trainables/distributed.py)."""
    final_path = out_dir / FINAL_REPORT
    if final_path.is_file():
        report(json.loads(final_path.read_text()), None)
        return
    meta_path = out_dir / TRIAL_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("started_at", utc_iso())
    meta["restarts"] = int(meta.get("restarts", -1)) + 1
    meta_path.write_text(json.dumps(meta))

    metric_key = metric.removeprefix("val.")
    best: float | None = None
    for rec in read_epochs(out_dir):  # best so far from epochs before a restart
        v = scored_value(rec, metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and better(v, best, mode):
            best = float(v)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal best
        v = scored_value(metrics, metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and better(v, best, mode):
            best = float(v)
        record = {k: float(x) for k, x in metrics.items() if isinstance(x, (int, float))}
        record.update(
            epoch=int(epoch),
            final=False,
            started_at=meta["started_at"],
            **{OBJECTIVE_KEY: worst(mode) if best is None else best},
        )
        # the run folder goes to Tune's storage every train.checkpoint_every epochs (and
        # at the last epoch): each upload is the whole folder, while the other ranks wait
        every = run_config.train.checkpoint_every
        keep = epoch % every == 0 or epoch >= run_config.train.epochs
        report(record, out_dir if keep else None)

    epochs_seen = 0

    def counting_on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal epochs_seen
        epochs_seen = epoch
        on_epoch(epoch, metrics)

    try:
        result = train_fn(run_config, out_dir, on_epoch=counting_on_epoch, resume=True)
    except Exception as e:
        if not is_deterministic(e, started_training=epochs_seen > 0 or meta["restarts"] > 0):
            raise  # Tune retries it from the last checkpoint
        _report_failure(e, mode, epochs_seen, report)
        return
    if save_retrievals and result.status == STATUS_COMPLETED:
        _save_retrievals(run_config, out_dir)

    best_val = {k: float(v) for k, v in (result.best_val or {}).items()}
    objective = best_val.get(metric, best_val.get(f"val.{metric_key}"))
    if result.status != STATUS_COMPLETED or objective is None or not math.isfinite(objective):
        objective = worst(mode)
    summary = {
        COL_STATUS: result.status,
        "epochs_run": int(result.epochs_run),
        "best_epoch": result.best_epoch,
        "best_val": best_val,
        "test": {k: float(v) for k, v in (result.test or {}).items()},
        "test_untrained": {
            k: float(v) for k, v in (getattr(result, "test_untrained", None) or {}).items()
        },
        "wall_seconds": float(result.wall_seconds),
        "device": str(result.device),
        "started_at": meta["started_at"],
        "finished_at": utc_iso(),
        "restarts": meta["restarts"],
        "versions": library_versions(),
        "host": socket.gethostname(),
        "epochs": read_epochs(out_dir),
        "units": list(getattr(result, "units", None) or []),
    }
    final = {
        OBJECTIVE_KEY: objective,
        COL_EPOCH: int(result.epochs_run),
        "final": True,
        COL_STATUS: result.status,
        "started_at": meta["started_at"],
        "summary_json": json.dumps(summary, default=_json_default),
    }
    final_path.write_text(json.dumps(final))
    report(final, out_dir)


def _save_retrievals(run_config, out_dir: Path) -> None:
    """The test-set neighbours behind the report's pictures; a failure here costs the
    pictures (logged), never the reproduction."""
    try:
        # here, not at the top: only the best reproductions draw pictures (PIL, numpy)
        from harness.retrieval_pictures import save_run_retrievals

        save_run_retrievals(run_config, out_dir)
    except Exception as e:  # noqa: BLE001 - the trial's result matters more than its picture
        logging.getLogger(__name__).warning("retrieval pictures not saved for %s: %s", out_dir, e)


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    return str(v)

