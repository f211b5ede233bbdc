"""A Tune trial that trains on N data-parallel workers (Ray Train inside Ray Tune).

With ``search.resources.workers: N > 1`` a sweep's trainable is
:func:`train_retrieval_distributed`: the Tune trial is a light driver that runs a Ray
Train ``TorchTrainer`` of N workers (``cpus_per_worker`` / ``gpus_per_worker`` each;
NCCL on GPUs, gloo on CPUs). Every worker runs ``run_training`` on its rank
(``harness/core/distributed.py``: one global batch, one memory on every rank).

Reporting: rank 0 reports every epoch and the final summary through
``ray.train.report`` with its run folder as the checkpoint (written once, by rank 0);
the other ranks report the same number of times without one (Ray Train's reports are
a barrier). ``TuneReportCallback`` forwards rank 0's metrics to the Tune trial, so the
results tables get exactly the rows of a single-worker trial.

Restarts: the Ray Train run is named after the Tune trial and stored under the
sweep's ``tune/train-runs/``, so a restarted trial (lost worker, ``--resume``) starts a
TorchTrainer of the same name, which resumes from its latest checkpoint; every rank
copies it and continues from the last epoch. A run resumes only on the worker count
that wrote it (``train.workers`` is part of the stored config).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ray.train
from ray import tune
from ray.train import ScalingConfig
from ray.tune.integration.ray_train import TuneReportCallback

from harness.config import build_config
from harness.results.contract import DEFAULT_METRIC
from harness.sweep.failures import is_deterministic
from harness.results.trial_spec import spec_of
from harness.results.contract import FINAL_REPORT_FILE, TRIAL_META_FILE
from harness.trainables.trial_runner import draws_pictures, ray_train_reporter, report_failure, run_trial, tune_reporter
from harness.trainables.trial_setup import run_folder, trial_run_config

# Resources of the Tune trial itself, a driver that only waits on its TorchTrainer: no
# CPU (the workers hold the real resources, so a 4-GPU node fits 4 workers with all its
# CPUs, and a head node with CPU: 0 can host drivers); Ray needs a non-empty request,
# hence a token of memory.
DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """One rank: restore the run folder, train, report (rank 0) or follow (the rest)."""
    import torch  # here, not at the top: the driver imports this module, only ranks need torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(loop_config["cpus"])))
    if not loop_config["gpus"]:
        # CPU workers on a GPU node: no GPU (Ray >= 2.50 leaves CUDA_VISIBLE_DEVICES set)
        from harness.core.device import isolate_gpus  # torch: in the ranks only, as above

        isolate_gpus([])
    elif torch.cuda.is_available():
        # torch: in the ranks only, as above (a `from` import: `import ray.train.torch`
        # would make `ray` a local name of this whole function)
        from ray.train.torch import get_device

        # Ray Train shows a node's workers all their GPUs (NCCL peer access); this
        # rank's is the current device, which train.device "auto" ("cuda") then uses.
        torch.cuda.set_device(get_device())
    run_config = build_config(loop_config["run_config"], source="data-parallel trial")
    train_fn = loop_config.get("train_fn")
    if train_fn is None:
        from harness.core.train import run_training as train_fn  # torch: as above

    with run_folder(f"{loop_config['name']}-rank{rank}", ray.train.get_checkpoint()) as out_dir:
        if rank == 0:
            run_trial(run_config, out_dir, loop_config["metric"], loop_config["mode"], train_fn,
                      ray_train_reporter, save_retrievals=loop_config.get("save_retrievals", False))
            return
        # The other ranks train in lockstep and match rank 0's reports one for one.
        if (out_dir / FINAL_REPORT_FILE).is_file():
            ray_train_reporter({"rank": rank})
            return
        epochs_seen = 0

        def follow(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal epochs_seen
            epochs_seen = epoch
            ray_train_reporter({"epoch": epoch})

        try:
            train_fn(run_config, out_dir, on_epoch=follow, resume=True)
        except Exception as e:
            # rank 0 meets the same error and reports the trial failed: match its final report
            restarted = (out_dir / TRIAL_META_FILE).is_file()
            if not is_deterministic(e, started_training=epochs_seen > 0 or restarted):
                raise
        ray_train_reporter({"rank": rank, "final": True})


def scaling_config(workers: int, cpus_per_worker: float, gpus_per_worker: float):
    resources = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker:
        resources["GPU"] = float(gpus_per_worker)
    return ScalingConfig(num_workers=int(workers), use_gpu=bool(gpus_per_worker),
                         resources_per_worker=resources)


def train_retrieval_distributed(
    config: dict[str, Any],
    base: dict[str, Any] | None = None,
    metric: str = DEFAULT_METRIC,
    mode: str = "max",
    workers: int = 2,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    train_storage: str | None = None,
    train_fn: Callable[..., Any] | None = None,
) -> None:
    """The Tune function trainable of an N-worker trial (see the module docstring)."""
    from ray.train.torch import TorchConfig, TorchTrainer  # imports torch: only in the trial, not the driver

    spec = spec_of(config)
    try:
        run_config = trial_run_config(base, spec, **{"train.workers": int(workers)})
    except Exception as e:  # noqa: BLE001 - a config error is reported, not retried
        report_failure(tune_reporter, e, mode, epochs_run=0)
        return
    ctx = tune.get_context()
    # Stable across restarts of this trial (Tune keeps its id), new for a new Tuner.
    trial_name, trial_id = ctx.get_trial_name(), ctx.get_trial_id()
    name = trial_name if trial_id in trial_name else f"{trial_name}-{trial_id}"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "run_config": run_config.model_dump(mode="json"), "metric": metric, "mode": mode,
            "cpus": cpus_per_worker, "gpus": gpus_per_worker, "name": name, "train_fn": train_fn,
            "save_retrievals": draws_pictures(spec),
        },
        scaling_config=scaling_config(workers, cpus_per_worker, gpus_per_worker),
        # the process group's timeout: how long a rank waits for the others in a collective
        torch_config=TorchConfig(timeout_s=int(math.ceil(run_config.train.collective_timeout_s))),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=train_storage,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Tune restarts the trial (search.max_failures); the run resumes from its checkpoint
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()
