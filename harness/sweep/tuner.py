"""The one place that builds a ``tune.Tuner`` (or restores one) for a sweep phase.

:func:`fit_phase` starts a phase's Tune experiment under ``<storage>/<experiment>/tune/
<phase>``, or restores it with ``Tuner.restore`` when the sweep resumes, giving the
restored experiment this driver's callbacks, storage and Optuna database.
:func:`create_trainable` wraps the trainable (one worker, or a data-parallel driver).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

import ray.cloudpickle
from ray import tune
from ray.tune.result import TRAINING_ITERATION

from harness.utils.atomic import atomic_write_bytes

from harness.results.contract import PHASE_SEARCH
from harness.sweep.disk import DiskFullWatch
from harness.sweep.experiment import Experiment
from harness.sweep.internals import (
    TUNER_STATE_FIRST_START_KEYS,
    UPLOAD_TEMP_PREFIX,
    atomic_local_uploads,
    dump_run_metadata,
    forget_last_upload,
    last_upload_target,
    load_run_metadata,
    record_checkpoint,
    set_last_checkpoint_index,
    trial_dir_name,
    tuner_run_config,
    tuner_state,
    tuner_tune_config,
)
from harness.sweep.progress import SweepProgress
from harness.sweep.recorder import ResultsRecorder
from harness.sweep.results import is_uri, join
from harness.sweep.scheduler import SweepScheduler
from harness.sweep.searcher import CompareSearcher
from harness.tracking import create_tracking_callbacks, with_tune_tensorboard
from harness.results.trial_spec import spec_of
from harness.trainables.distributed import DRIVER_RESOURCES, train_retrieval_distributed
from harness.trainables.retrieval import train_retrieval
from harness.trainables.trial_setup import is_complete_checkpoint

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
    atomic_local_uploads()  # a driver killed mid-snapshot leaves its state whole
    if plan.resume and tune.Tuner.can_restore(path):
        _remove_upload_leftovers(path)
        _repoint_search_state(path)
        repoint_lost_checkpoints(path)
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, restart_errored=False)
        _use_callbacks(tuner, callbacks)
        restored = tuner_tune_config(tuner)
        scheduler = restored.scheduler
        if isinstance(scheduler, SweepScheduler):  # restored with the first start's path
            scheduler.tune_path = path
        searcher = restored.search_alg
        searcher = getattr(searcher, "searcher", searcher)  # inside a ConcurrencyLimiter
        if isinstance(searcher, CompareSearcher):  # its studies: this driver's database URL
            searcher.optuna_url = plan.optuna_storage
        _save_restored_settings(tuner, path)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=_run_config(plan, phase, callbacks))
    return tuner.fit()


def _remove_upload_leftovers(path: str) -> None:
    """The temporary copies of uploads a killed driver left beside the phase's folder."""
    if is_uri(path):
        return
    for leftover in Path(path).parent.glob(f"{UPLOAD_TEMP_PREFIX}{Path(path).name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _repoint_search_state(path: str) -> None:
    """Tune's search-generator snapshots (``search_gen_state-*.json``, a cloudpickle)
    hold the experiment with the storage of the sweep's first start; a restored
    generator creates new trials with it and saves it again. Re-pointed here, before
    ``Tuner.restore`` reads them, to the storage they are in (a copied or moved sweep)."""
    if is_uri(path):
        return
    tune_root = str(Path(_absolute(path)).parent)
    for file in Path(path).glob("search_gen_state-*.json"):
        try:
            state = ray.cloudpickle.loads(file.read_bytes())
            storages = {id(s): s for s in (getattr(state.get("experiment"), "storage", None),
                                           (getattr(state.get("experiment"), "spec", None) or {}).get("storage"))
                        if s is not None}
        except Exception:  # noqa: BLE001 - not ours to judge: Tune's restore reads it as it is
            continue
        changed = False
        for storage in storages.values():
            if getattr(storage, "storage_fs_path", tune_root) != tune_root:
                storage.storage_fs_path, changed = tune_root, True
            # the record of its last upload (the old folder), kept for a retry of it
            last = last_upload_target(storage)
            if last is not None and not last.startswith(tune_root):
                changed = forget_last_upload(storage) or changed
        if changed:
            atomic_write_bytes(file, ray.cloudpickle.dumps(state))


def repoint_lost_checkpoints(path: str) -> None:
    """Point each trial at its newest whole checkpoint where the recorded one is older,
    gone, or none.

    Tune records a trial's newest checkpoint in ``experiment_state-*.json`` only at its
    next snapshot, and deletes the older one (``num_to_keep``) when the newer arrives. A
    driver killed in between leaves a state naming an older checkpoint: one still on
    disk (Tune would retrain the epochs since) or one already deleted (``Tuner.restore``
    would fail the trial: "does not exist on storage anymore"); or, for a trial whose
    first checkpoint came after the last snapshot, none (Tune would train it again from
    scratch). The newest complete ``checkpoint_*`` in the trial's folder (a copy cut
    short by the kill is not: :func:`is_complete_checkpoint`) is at least as far on; its
    training iteration counts the reports since the recorded one, one a checkpoint, and
    the trial's next checkpoint is numbered after it.
    """
    if is_uri(path):
        return
    for file in Path(path).glob("experiment_state-*.json"):
        try:
            state = json.loads(file.read_text())
            entries = state["trial_data"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge: Tune's restore reads it as it is
        changed = False
        for entry in entries:
            try:
                metadata = load_run_metadata(entry[1])
                latest = metadata.checkpoint_manager.latest_checkpoint_result
                recorded = None if latest is None or latest.checkpoint is None else PurePosixPath(latest.checkpoint.path)
                name = recorded.parent.name if recorded is not None else trial_dir_name(entry[0])
            except Exception:  # noqa: BLE001 - as above
                continue
            if name is None:
                continue
            trial_dir = Path(path) / name
            found = sorted((d for d in trial_dir.glob("checkpoint_*") if is_complete_checkpoint(d)),
                           key=lambda d: d.name)
            if not found:
                continue
            newest = found[-1].name
            if recorded is None:
                record_checkpoint(metadata, tune.Checkpoint(path=str(found[-1])),
                                  {TRAINING_ITERATION: _checkpoint_index(newest) + 1})
            elif _checkpoint_index(newest) <= _checkpoint_index(recorded.name):
                continue
            else:
                metrics = dict(latest.metrics)
                if TRAINING_ITERATION in metrics:
                    metrics[TRAINING_ITERATION] += _checkpoint_index(newest) - _checkpoint_index(recorded.name)
                # in place: the manager's list of kept checkpoints holds the same object
                latest.checkpoint = tune.Checkpoint(path=str(recorded.parent / newest),
                                                    filesystem=latest.checkpoint.filesystem)
                latest.metrics = metrics
            # Tune numbers the trial's next checkpoint on from the index its state
            # recorded: left there, the next one would land in the folder restored from,
            # which Tune (num_to_keep) then deletes as the older checkpoint
            entry[0] = set_last_checkpoint_index(entry[0], _checkpoint_index(newest))
            entry[1], changed = dump_run_metadata(metadata), True
        if changed:
            atomic_write_bytes(file, json.dumps(state).encode())


def _checkpoint_index(name: str) -> int:
    return int(name.rsplit("_", 1)[-1])


def _save_restored_settings(tuner, path: str) -> None:
    """``tuner.pkl`` again, with what this driver re-pointed in the restored Tuner: the
    storage path (``Tuner.restore`` takes it from the folder it restores, in memory
    only), the callbacks, the scheduler's folder and the searcher's database URL. Tune
    writes the file at the first start only, so a copied or moved sweep's kept naming
    the storage it was copied from."""
    if is_uri(path):
        return
    file = Path(path) / "tuner.pkl"
    old = pickle.loads(file.read_bytes())
    state = tuner_state(tuner)
    for key in TUNER_STATE_FIRST_START_KEYS:
        state[key] = old.get(key)  # as the first start saved them
    atomic_write_bytes(file, pickle.dumps(state))


def _use_callbacks(tuner, callbacks: list[tune.Callback]) -> None:
    """Give a restored Tuner this driver's callbacks.

    ``Tuner.restore`` brings back the callbacks pickled at the first start, and with
    them the storage path of that start: a moved or copied storage (or a relative
    ``--storage`` given from another folder) would get its rows written to the old
    place. Ray has no public way to replace them, so the restored run config's list is
    swapped; the epochs the old recorder had buffered come along.
    """
    run_config = tuner_run_config(tuner)
    old = [cb for cb in run_config.callbacks or [] if isinstance(cb, ResultsRecorder)]
    for cb in callbacks:
        if isinstance(cb, ResultsRecorder) and old:
            cb.take_buffered_epochs(old[0])
    run_config.callbacks = list(callbacks)


def phase_tune_config(**settings: Any) -> tune.TuneConfig:
    """A phase's TuneConfig: ``settings`` plus the short trial names and actor reuse
    both phases share."""
    return tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                           reuse_actors=REUSE_ACTORS, **settings)
