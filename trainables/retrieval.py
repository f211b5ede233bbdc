"""Ray Tune trainable wrapping :func:`harness.core.train.run_training`.

One trial = one ``run_training`` call (:func:`harness.trainables.trial_runner.run_trial`, the
runner both trainables share). Every epoch is reported to Tune together with the run
directory as a Tune checkpoint (``last.pt``, ``best.pt``, ``epochs.jsonl``), so a trial
whose worker dies restarts from its last epoch on another worker. A diverged run is
reported as such and ends normally: the sweep goes on. So does a trial whose
configuration or data cannot work: it is reported as ``failed`` with its one-line
reason and not retried (:mod:`harness.sweep.failures`).

The trial config is ``{"spec": TrialSpec}`` (:mod:`harness.results.trial_spec`: the phase,
the compared method, the dotted config overrides, the seed); the experiment's base
config arrives through ``tune.with_parameters``.
"""

from __future__ import annotations

from typing import Any, Callable

import ray
from ray import tune

from harness.results.contract import COL_PHASE, DEFAULT_METRIC, PHASE_SEARCH
from harness.results.trial_spec import spec_of
from harness.trainables.objective import objective_training
from harness.trainables.trial_runner import draws_pictures, report_failure, run_trial, tune_reporter
from harness.trainables.trial_setup import run_folder, trial_run_config


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
    them all and reports their mean (:mod:`harness.trainables.objective`)."""
    spec = spec_of(config)
    try:
        run_config = trial_run_config(base, spec)
    except Exception as e:  # noqa: BLE001 - a config error is reported, not retried
        report_failure(tune_reporter, e, mode, epochs_run=0)
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
        run_trial(run_config, out_dir, metric, mode, train_fn, tune_reporter, save_retrievals=draws_pictures(spec))
