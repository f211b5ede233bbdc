"""The one place that builds a ``tune.Tuner`` (or restores one) for a sweep phase.

:func:`fit_phase` starts a phase's Tune experiment under ``<storage>/<experiment>/tune/
<phase>``, or restores it with ``Tuner.restore`` when the sweep resumes, giving the
restored experiment this driver's callbacks, storage and Optuna database.
:func:`create_trainable` wraps the trainable (one worker, or a data-parallel driver).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ray import tune

from harness.results_contract import PHASE_SEARCH
from harness.sweep.disk import DiskFullWatch
from harness.sweep.experiment import Experiment
from harness.sweep.progress import SweepProgress
from harness.sweep.recorder import ResultsRecorder
from harness.sweep.results import is_uri, join
from harness.sweep.scheduler import SweepScheduler
from harness.sweep.searcher import CompareSearcher
from harness.tracking import create_tracking_callbacks, with_tune_tensorboard
from harness.trial_spec import spec_of
from trainables.distributed import DRIVER_RESOURCES, train_retrieval_distributed
from trainables.retrieval import train_retrieval

if TYPE_CHECKING:
    from harness.sweep.plan import SweepPlan

def trial_name(trial) -> str:
    """Short trial names and folders (Tune's default embeds the whole config)."""
    spec = spec_of(trial.config) or {}
    return spec.get("trial_id") or f"{spec.get('phase', 'trial')}-{trial.trial_id}"


def _absolute(path: str) -> str:
    return path if is_uri(path) else str(Path(path.removeprefix("file://")).expanduser().absolute())


def create_trainable(exp: Experiment, train_fn: Callable | None, storage_root: str | None = None):
    res = exp.search.resources
    if res.workers > 1:  # a light Tune driver around a Ray Train TorchTrainer
        fn = tune.with_parameters(
            train_retrieval_distributed, base=exp.base, metric=exp.search.metric,
            mode=exp.search.mode, workers=res.workers, cpus_per_worker=res.worker_cpus,
            gpus_per_worker=res.worker_gpus, train_fn=train_fn,
            train_storage=None if storage_root is None else _absolute(join(storage_root, "tune", "train-runs")))
        return tune.with_resources(fn, DRIVER_RESOURCES)
    fn = tune.with_parameters(train_retrieval, base=exp.base, metric=exp.search.metric,
                              mode=exp.search.mode, cpus=res.cpus, train_fn=train_fn,
                              objective=exp.search.objective.model_dump())
    return tune.with_resources(fn, {"cpu": res.cpus, "gpu": res.gpus})


# A trial reuses a finished trial's worker process (torch, timm and the data already
# imported) instead of starting a new one; run_training keeps no global state.
REUSE_ACTORS = True


def create_callbacks(plan: SweepPlan, phase: str, planned: int, slots: int, git: str | None,
                     watch: tune.Callback | None) -> list[tune.Callback]:
    """The driver's callbacks of a phase: the full-disk stop (first: before a row is
    written to that disk), rows, live view, Ctrl-C watch, trackers, and the trials'
    TensorBoard logger that leaves out non-finite values (a failed trial's)."""
    exp = plan.experiment
    return with_tune_tensorboard([
        DiskFullWatch(),
        ResultsRecorder(exp, plan.storage, git, watch),
        SweepProgress(f"{exp.name}: {phase}", exp.search.metric, exp.search.mode, planned, slots,
                      runs_per_trial=exp.search.objective.runs if phase == PHASE_SEARCH else 1),
        *([watch] if watch is not None else []),
        *create_tracking_callbacks(exp, plan.store.root),
    ])


def _run_config(plan: SweepPlan, phase: str, callbacks: list[tune.Callback]):
    exp = plan.experiment
    return tune.RunConfig(
        name=phase,
        storage_path=join(plan.store.root, "tune"),
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=exp.search.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=0,
    )


def fit_phase(plan: SweepPlan, phase: str, trainable, callbacks: list[tune.Callback],
              tune_config: tune.TuneConfig, param_space: dict[str, Any] | None = None):
    """Restore the phase's Tune experiment when resuming one, else start it fresh;
    run it to the end and return Tune's ``ResultGrid``."""
    path = plan.tune_dir(phase)
    if plan.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, restart_errored=False)
        _use_callbacks(tuner, callbacks)
        scheduler = tuner._local_tuner._tune_config.scheduler
        if isinstance(scheduler, SweepScheduler):  # restored with the first start's path
            scheduler.tune_path = path
        searcher = tuner._local_tuner._tune_config.search_alg
        searcher = getattr(searcher, "searcher", searcher)  # inside a ConcurrencyLimiter
        if isinstance(searcher, CompareSearcher):  # its studies: this driver's database URL
            searcher.optuna_url = plan.optuna_storage
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=_run_config(plan, phase, callbacks))
    return tuner.fit()


def _use_callbacks(tuner, callbacks: list[tune.Callback]) -> None:
    """Give a restored Tuner this driver's callbacks.

    ``Tuner.restore`` brings back the callbacks pickled at the first start, and with
    them the storage path of that start: a moved or copied storage (or a relative
    ``--storage`` given from another folder) would get its rows written to the old
    place. Ray has no public way to replace them, so the restored run config's list is
    swapped; the epochs the old recorder had buffered come along.
    """
    run_config = tuner._local_tuner.get_run_config()
    old = [cb for cb in run_config.callbacks or [] if isinstance(cb, ResultsRecorder)]
    for cb in callbacks:
        if isinstance(cb, ResultsRecorder) and old:
            cb._epochs = dict(old[0]._epochs)
    run_config.callbacks = list(callbacks)


def phase_tune_config(**settings: Any) -> tune.TuneConfig:
    """A phase's TuneConfig: ``settings`` plus the short trial names and actor reuse
    both phases share."""
    return tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                           reuse_actors=REUSE_ACTORS, **settings)
