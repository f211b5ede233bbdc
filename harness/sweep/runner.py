"""run_sweep: Ray Tune + Optuna search per compared value, then reproductions.

Plan (the "Metric Learning Reality Check" protocol):

1. **search**: one Ray Tune experiment; every compared value (``compare`` axis) has its
   own Optuna study and its own share of the trial budget (:class:`CompareSearcher`),
   and, when configured, its own ASHA early stopping (:class:`PerValueScheduler`), so
   each method is tuned for itself while all trials share the cluster's slots.
2. **reproduction**: the best search configuration of every compared value, rerun on
   every reproduction seed and evaluated on the test split. Reports compare these.

Everything that can be wrong with the input is checked by :func:`prepare_sweep` before
Ray starts. Results go to ``<storage>/<experiment>/`` through :class:`ResultsStore`;
Ray Tune's own experiment folders live under ``<storage>/<experiment>/tune/`` and make
``--resume`` work (``Tuner.restore``, the pickled searcher keeps the Optuna history).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from harness.errors import (
    ClusterError,
    ConfigError,
    ResultsError,
    SweepFailedError,
    SweepInterrupted,
)
from harness.sweep.experiment import Experiment, load_experiment, method_of
from harness.sweep.failures import reason_from_traceback
from harness.sweep.results import (
    SCHEMA_VERSION,
    SPACE,
    STATE,
    ResultsStore,
    is_uri,
    join,
)
from harness.sweep.space import create_sampler, define_by_run, space_description
from trainables.retrieval import OBJECTIVE

SEARCH = "search"
REPRODUCTION = "reproduction"


# ---- planning (no Ray) --------------------------------------------------------------


@dataclass
class SweepPlan:
    experiment: Experiment
    storage: str
    store: ResultsStore
    resume: bool = False
    reproduce_only: bool = False
    max_concurrent: int | None = None
    address: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    take_over: bool = False  # the user says the driver named in sweep.lock is dead
    warnings: list[str] = field(default_factory=list)

    def resume_command(self) -> str:
        """The command that continues this sweep, valid from any working folder."""
        storage = self.storage if is_uri(self.storage) else str(Path(self.store.root).parent)
        return f"harness sweep {self.experiment.name} --resume --storage {storage}"

    def tune_dir(self, phase: str) -> str:
        return join(self.store.root, "tune", phase)


def check_storage_writable(storage: str) -> None:
    """A local storage path must be (or be creatable in) a writable folder."""
    if is_uri(storage):
        import pyarrow.fs

        try:
            pyarrow.fs.FileSystem.from_uri(storage)
        except Exception as e:
            raise ConfigError(f"--storage {storage}: not a usable storage URI ({e})") from None
        return
    p = Path(storage.removeprefix("file://")).expanduser().absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--storage {storage}: {probe} is a file, not a folder")
    try:  # a real write (permission bits do not bind root, /proc refuses even root)
        fd, tmp = tempfile.mkstemp(prefix=".harness-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError:
        raise ConfigError(
            f"--storage {storage}: {probe} is not writable; pick another --storage folder"
        ) from None


def prepare_sweep(
    name: str,
    overrides: list[str] | None = None,
    trials: int | None = None,
    storage: str = "./results",
    resume: bool = False,
    reproduce_only: bool = False,
    max_concurrent: int | None = None,
    address: str | None = None,
    take_over: bool = False,
) -> SweepPlan:
    """Validate everything a sweep needs; raise a one-line HarnessError otherwise."""
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError("--max-concurrent must be at least 1")
    check_storage_writable(storage)
    if address:
        check_address(address)  # an unreachable cluster: one line, nothing written
    continuing = resume or reproduce_only
    if continuing:
        stem = Path(name).stem if name.endswith((".yaml", ".yml")) else name
        store = ResultsStore(storage, stem)
        if not store.exists(STATE):
            flag = "--resume" if resume else "--reproduce-only"
            raise ResultsError(
                f"{flag}: no sweep '{stem}' under {store.storage} (nothing at {store.root}); "
                f"start it with `harness sweep {name}`"
            )
        if overrides or trials is not None:
            raise ConfigError(
                "--set/--trials cannot change a sweep that already ran; "
                "start a new one with another --storage"
            )
        state, exp = read_state(store)
        if reproduce_only and not state.get("search_done"):
            raise ResultsError(
                f"--reproduce-only: the search of '{stem}' has not finished; "
                f"finish it first with `harness sweep {name} --resume`"
            )
    else:
        exp = load_experiment(name, overrides, trials)
        store = ResultsStore(storage, exp.name)
        if store.exists(STATE) or store.exists("trials.parquet"):
            raise ResultsError(
                f"results of '{exp.name}' already exist at {store.root}; continue with "
                f"--resume, rerun reproductions with --reproduce-only, or use another --storage"
            )
        state = {}
    plan = SweepPlan(exp, storage, store, resume, reproduce_only, max_concurrent, address, state,
                     take_over=take_over)
    if not continuing:
        plan.warnings.extend(budget_warnings(exp))
    return plan


def budget_warnings(exp: Experiment) -> list[str]:
    """Trials that a compare axis drops (search.trials not a multiple of the values)."""
    labels = exp.compare_labels
    if exp.search.algorithm == "grid" or len(labels) < 2:
        return []
    share = exp.search.trials // len(labels)
    if share * len(labels) == exp.search.trials:
        return []
    return [f"search.trials {exp.search.trials} is not a multiple of the {len(labels)} compared "
            f"values: {share} trials each, {share * len(labels)} in all"]


def read_state(store: ResultsStore) -> tuple[dict[str, Any], Experiment]:
    """``sweep.json`` and the experiment it records; a damaged one is one line."""
    lost = (f"the sweep's state is lost; its tables still render with `harness report "
            f"{store.root}`, or start the sweep again with another --storage")
    try:
        state = store.read_json(STATE)
        return state, Experiment.model_validate(state["experiment"])
    except ResultsError as e:
        raise ResultsError(f"{e}; {lost}") from None
    except (KeyError, TypeError, ValueError):
        raise ResultsError(f"{store.path(STATE)} is not a sweep state file; {lost}") from None


# ---- Ray Tune pieces ------------------------------------------------------------------


class CompareSearcher(Searcher):
    """One Optuna searcher per compared value, each with its own trial budget.

    Suggestions go to the value with the fewest trials so far, so all values make
    progress together and share the parallel slots.
    """

    def __init__(self, searchers: dict[str, Any], budget: dict[str, int], metric: str,
                 mode: str, seed: int, phase_overrides: dict[str, dict[str, Any]]):
        super().__init__(metric=metric, mode=mode)
        self.searchers = searchers
        self.budget = budget
        self.seed = seed
        self.phase_overrides = phase_overrides
        self.assigned: dict[str, str] = {}  # tune trial id -> compare label

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours; Tune's param_space stays empty

    def suggest(self, trial_id: str):
        counts = {label: 0 for label in self.budget}
        for label in self.assigned.values():
            counts[label] += 1
        open_labels = [lb for lb in self.budget if counts[lb] < self.budget[lb]]
        if not open_labels:
            return self.FINISHED
        label = min(open_labels, key=lambda lb: counts[lb])
        params = self.searchers[label].suggest(trial_id)
        if params is None:
            return None
        if params == self.FINISHED:  # a finished grid
            self.budget[label] = counts[label]
            return self.suggest(trial_id)
        self.assigned[trial_id] = label
        overrides = {**self.phase_overrides[label], **params}
        return {"spec": {"phase": SEARCH, "compare_value": _unlabel(label),
                         "overrides": overrides, "params": params, "seed": self.seed}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.assigned and OBJECTIVE in result:
            self.searchers[self.assigned[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.assigned:
            self.searchers[self.assigned[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _label(v: str | None) -> str:
    return "__none__" if v is None else v


def _unlabel(v: str) -> str | None:
    return None if v == "__none__" else v


class SweepScheduler(FIFOScheduler):
    """FIFO, and every trial's files go under ``tune_path``, the phase's Tune folder
    in the storage of *this* driver's command line.

    ``Tuner.restore`` re-points the trials it restores, but trials the restored search
    algorithm creates afterwards inherit the storage of the first start (Ray pickles it
    with the generator): a resumed copy of a storage wrote checkpoints into the
    original. ``on_trial_add`` runs before a trial's first write and moves it over.
    """

    def __init__(self, tune_path: str | None = None):
        super().__init__()
        self.tune_path = tune_path

    def on_trial_add(self, tune_controller, trial):
        if getattr(self, "tune_path", None):  # absent in sweeps pickled by older versions
            _follow_storage(trial, self.tune_path)
        super().on_trial_add(tune_controller, trial)


def _follow_storage(trial, tune_path: str) -> None:
    import copy

    from ray.train._internal.storage import get_fs_and_path

    parent, name = tune_path.rstrip("/").rsplit("/", 1)
    fs, fs_path = get_fs_and_path(parent)
    old = trial.storage
    if old is None or (old.storage_fs_path == fs_path and old.experiment_dir_name == name):
        return
    new = copy.copy(old)
    new.storage_filesystem = fs
    new.storage_fs_path = fs_path
    new.experiment_dir_name = name
    trial.set_storage(new)


class PerValueScheduler(SweepScheduler):
    """ASHA per compared value: a method's trials are only stopped in favour of
    better trials of the same method, never of another one."""

    def __init__(self, make: Callable[[], Any], tune_path: str | None = None):
        super().__init__(tune_path)
        self._make = make
        self._by_value: dict[str, Any] = {}

    def _of(self, trial):
        label = str(trial.config.get("spec", {}).get("compare_value"))
        if label not in self._by_value:
            self._by_value[label] = self._make()
        return self._by_value[label]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial):
        if getattr(self, "tune_path", None):  # absent in sweeps pickled by older versions
            _follow_storage(trial, self.tune_path)
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._of(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self._of(trial).on_trial_error(tune_controller, trial)


class _AshaFactory:
    """Picklable maker of one ASHA scheduler (Tune pickles the scheduler)."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    def __call__(self):
        from ray.tune.schedulers import ASHAScheduler

        asha = self.exp.search.scheduler
        epochs = self.exp.run_config().train.epochs
        # max_t one past the last epoch: ASHA must not stop a trial at its last epoch
        # report, before the trainable reports its final (test) result.
        return ASHAScheduler(
            time_attr="epoch", metric=OBJECTIVE, mode=self.exp.search.mode, max_t=epochs + 1,
            grace_period=min(asha.grace_period, epochs), reduction_factor=asha.reduction_factor,
            brackets=asha.brackets,
        )


# ---- results rows -------------------------------------------------------------------


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _config_cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def trial_rows(exp: Experiment, spec: dict[str, Any], trial_id: str,
               last_result: dict[str, Any] | None, error: bool,
               buffered_epochs: list[dict[str, Any]], git_commit: str | None,
               reason: str | None = None,
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One trials.parquet row and its epochs.parquet rows (docs/architecture.md).

    ``reason``: why the trial failed (one line), when Tune ended it with an error."""
    last = last_result or {}
    summary = json.loads(last["summary_json"]) if last.get("final") and "summary_json" in last else None
    overrides = {**(spec.get("overrides") or {}), "seed": int(spec["seed"])}
    cfg = exp.run_config(overrides)
    method = method_of(cfg)
    epochs = summary["epochs"] if summary else buffered_epochs
    if summary:
        status = summary["status"]
        val = dict(summary["best_val"])
        test = {**summary["test"], **summary.get("test_untrained", {})}
        best_epoch, epochs_run = summary["best_epoch"], summary["epochs_run"]
        wall, device, host = summary["wall_seconds"], summary["device"], summary["host"]
        started, finished = summary["started_at"], summary["finished_at"]
        versions = summary["versions"]
    else:
        # a final report without summary: a trial that could not run (failures.py)
        status = last["status"] if last.get("final") and last.get("status") else (
            "failed" if error else "stopped")
        reason = reason or (last.get("error") if last.get("final") else None)
        metric, sign = exp.search.metric, (1 if exp.search.mode == "max" else -1)
        scored = [e for e in epochs if isinstance(e.get(metric), (int, float))]
        best = max(scored, key=lambda e: sign * e[metric]) if scored else None
        val = {k: v for k, v in (best or {}).items() if k.startswith("val.")}
        test = {}
        best_epoch = best["epoch"] if best else None
        epochs_run = max((int(e["epoch"]) for e in epochs), default=0)
        wall = float(sum(e.get("epoch_seconds", 0.0) for e in epochs))
        device, host = None, last.get("hostname")
        started, finished = last.get("started_at"), _utc_now()
        versions = None
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": exp.name,
        "trial_id": trial_id,
        "phase": spec["phase"],
        "compare_key": exp.compare_key,
        "compare_value": spec.get("compare_value"),
        "method": method,
        "status": status,
        "error": reason if status == "failed" else None,
        "params": json.dumps(spec.get("params") or {}),
        # reproductions: whether this is the compared value's best search configuration
        # (the one summary tables compare); null for search trials
        "best_config": spec.get("best_config") if spec["phase"] == REPRODUCTION else None,
    }
    row.update({f"config.{k}": _config_cell(v) for k, v in cfg.flat().items()})
    row["seed"] = int(spec["seed"])
    row.update({k if k.startswith("val.") else f"val.{k}": v for k, v in val.items()})
    row.update({k if k.startswith("test") else f"test.{k}": v for k, v in test.items()})
    row.update(
        best_epoch=best_epoch, epochs_run=epochs_run, wall_seconds=wall, device=device,
        gpus=float(exp.search.resources.gpus), started_at=started, finished_at=finished,
        versions=json.dumps(versions) if versions is not None else None,
        git_commit=git_commit, host=host,
    )
    epoch_rows = []
    for e in epochs:
        r = {"schema_version": SCHEMA_VERSION, "experiment": exp.name, "trial_id": trial_id,
             "phase": spec["phase"], "method": method, "epoch": int(e["epoch"])}
        r.update({k: float(v) for k, v in e.items()
                  if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)})
        epoch_rows.append(r)
    return row, epoch_rows


def _epoch_of_result(result: dict[str, Any]) -> dict[str, Any]:
    skip = {"final", "started_at", OBJECTIVE, "training_iteration", "timestamp", "time_this_iter_s",
            "time_total_s", "pid", "time_since_restore", "iterations_since_restore", "done",
            "node_ip", "hostname", "date", "trial_id", "experiment_tag", "checkpoint_dir_name",
            "should_checkpoint"}
    return {k: v for k, v in result.items() if k not in skip and not isinstance(v, (dict, str))}


class ResultsRecorder(tune.Callback):
    """Driver-side Tune callback: writes a trial's rows when it finishes (or fails).

    Picklable (Tune stores callbacks with the experiment); the store is reopened lazily.
    """

    def __init__(self, exp: Experiment, storage: str, git_commit: str | None,
                 watch: tune.Callback | None = None):
        self.exp = exp
        self.storage = storage
        self.git_commit = git_commit
        self.watch = watch  # InterruptWatch: trials cut short by Ctrl-C are not recorded
        self._store: ResultsStore | None = None
        self._epochs: dict[str, dict[int, dict[str, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(self.storage, self.exp.name)
        return self._store

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("final") and "epoch" in result:
            self._epochs.setdefault(trial.trial_id, {})[int(result["epoch"])] = _epoch_of_result(result)

    def record(self, spec: dict[str, Any], tune_trial_id: str, last_result: dict | None,
               error: bool, reason: str | None = None) -> None:
        if getattr(self.watch, "interrupted", None) and not (last_result or {}).get("final"):
            return  # cut short by Ctrl-C, not finished: the resume runs it again
        buffered = [self._epochs.get(tune_trial_id, {})[k]
                    for k in sorted(self._epochs.get(tune_trial_id, {}))]
        trial_id = spec.get("trial_id") or tune_trial_id
        row, epoch_rows = trial_rows(self.exp, spec, trial_id, last_result, error, buffered,
                                     self.git_commit, reason)
        self.store.upsert_epochs(epoch_rows)
        self.store.upsert_trials([row])
        self._epochs.pop(tune_trial_id, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.record(trial.config["spec"], trial.trial_id, trial.last_result, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.record(trial.config["spec"], trial.trial_id, trial.last_result, error=True,
                    reason=trial_error_reason(trial))


def trial_error_reason(trial) -> str | None:
    """The one-line reason of a trial Tune ended with an error (its error file)."""
    try:
        return reason_from_traceback(trial.get_error())
    except Exception:  # noqa: BLE001 - a missing error file must not stop the sweep
        return None


# ---- the sweep ----------------------------------------------------------------------


@dataclass
class SweepOutcome:
    experiment: str
    root: str
    trials: int
    reproductions: int
    report: str | None = None


# Seconds to wait for a TCP connection to --address before giving up (Ray itself
# retries an unreachable GCS for minutes).
CONNECT_TIMEOUT_S = 10.0


def check_address(address: str) -> None:
    """Fail fast, with one line, when nothing answers at ``--address host:port``."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host:
        host, port = target, "6379"  # Ray's default GCS port
    try:
        port_number = int(port)
    except ValueError:
        raise ClusterError(f"--address {address}: expected host:port (or 'auto')") from None
    try:
        socket.create_connection((host.strip("[]"), port_number), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__.replace("Error", "").lower() or str(e)
        raise ClusterError(
            f"--address {address}: no Ray cluster answers there ({reason}); start one with "
            f"`ray start --head --port {port_number}` on {host}, or leave out --address for a "
            "local Ray"
        ) from None


def start_ray(address: str | None) -> bool:
    """Join ``address`` or start a local instance sized to this machine.

    Returns whether this call started Ray (and so should shut it down)."""
    import logging

    import ray

    # Quiet drivers: our own live view replaces Tune's console reporter.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray announces at every start that token authentication is on (its default since
    # 2.5x): a notice, not a problem of the sweep.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    # Tune's own notes on Ctrl-C name its Python API; the driver prints the command.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return False
    if address:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"--address {address}: cannot join the Ray cluster ({first})") from None
    else:
        # address="local": never join a cluster some `ray start` on this machine left behind
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False,
                 _node_ip_address="127.0.0.1", logging_level="WARNING")
    return True


def _slots(exp: Experiment, max_concurrent: int | None) -> int:
    import ray

    res = ray.cluster_resources()
    need = exp.search.resources
    by_cpu = int(res.get("CPU", 1) // need.cpus)
    by_gpu = int(res.get("GPU", 0) // need.gpus) if need.gpus else by_cpu
    slots = max(1, min(by_cpu, by_gpu))
    return min(slots, max_concurrent) if max_concurrent else slots


def _trial_name(trial) -> str:
    """Short trial names and folders (Tune's default embeds the whole config)."""
    spec = trial.config.get("spec", {})
    return spec.get("trial_id") or f"{spec.get('phase', 'trial')}-{trial.trial_id}"


def _trainable(exp: Experiment, train_fn: Callable | None):
    from trainables.retrieval import train_retrieval

    res = exp.search.resources
    fn = tune.with_parameters(train_retrieval, base=exp.base, metric=exp.search.metric,
                              mode=exp.search.mode, cpus=res.cpus, train_fn=train_fn)
    return tune.with_resources(fn, {"cpu": res.cpus, "gpu": res.gpus})


# A trial reuses a finished trial's worker process (torch, timm and the data already
# imported) instead of starting a new one; run_training keeps no global state.
REUSE_ACTORS = True


def _callbacks(plan: SweepPlan, phase: str, planned: int, slots: int, git: str | None,
               watch: tune.Callback | None) -> list[tune.Callback]:
    from harness.sweep.progress import SweepProgress

    exp = plan.experiment
    return [
        ResultsRecorder(exp, plan.storage, git, watch),
        SweepProgress(f"{exp.name}: {phase}", exp.search.metric, exp.search.mode, planned, slots),
        *([watch] if watch is not None else []),
    ]


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


def _fit(plan: SweepPlan, phase: str, trainable, make_tuner: Callable[[], Any],
         callbacks: list[tune.Callback]):
    """Restore the phase's Tune experiment when resuming one, else start it fresh."""
    path = plan.tune_dir(phase)
    if plan.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, restart_errored=False)
        _use_callbacks(tuner, callbacks)
        scheduler = tuner._local_tuner._tune_config.scheduler
        if isinstance(scheduler, SweepScheduler):  # restored with the first start's path
            scheduler.tune_path = path
    else:
        tuner = make_tuner()
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


def _reconcile(plan: SweepPlan, results, git: str | None, watch=None) -> None:
    """Add any finished trial the callbacks missed (driver killed between a trial's end
    and its row being written) from Tune's own record of it."""
    have = set(plan.store.trials().get("trial_id", []))
    recorder = ResultsRecorder(plan.experiment, plan.storage, git, watch)
    for result in results:
        spec = result.config.get("spec") if result.config else None
        if not spec:
            continue
        tune_id = (result.metrics or {}).get("trial_id", "")
        trial_id = spec.get("trial_id") or tune_id
        if trial_id and trial_id not in have:
            recorder.record(spec, tune_id, result.metrics, error=result.error is not None,
                            reason=reason_from_traceback(str(result.error)) if result.error else None)


def run_search(plan: SweepPlan, train_fn: Callable | None, git: str | None,
               watch: tune.Callback | None = None):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    exp = plan.experiment
    budget = {_label(k): v for k, v in exp.trial_budget().items()}
    labels = list(budget)
    searchers = {
        lb: OptunaSearch(space=define_by_run(exp, _unlabel(lb)), metric=OBJECTIVE,
                         mode=exp.search.mode, sampler=create_sampler(exp, _unlabel(lb), i))
        for i, lb in enumerate(labels)
    }
    overrides = {lb: exp.compare_overrides(_unlabel(lb)) for lb in labels}
    searcher = CompareSearcher(searchers, budget, OBJECTIVE, exp.search.mode,
                               seed=exp.run_config().seed, phase_overrides=overrides)
    if plan.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)
    tune_path = plan.tune_dir(SEARCH)
    scheduler = (PerValueScheduler(_AshaFactory(exp), tune_path) if exp.search.scheduler
                 else SweepScheduler(tune_path))
    planned = sum(budget.values())
    trainable = _trainable(exp, train_fn)
    callbacks = _callbacks(plan, SEARCH, planned, _slots(exp, plan.max_concurrent), git, watch)

    def make():
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=planned, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name,
                                        reuse_actors=REUSE_ACTORS),
            run_config=_run_config(plan, SEARCH, callbacks),
        )

    results = _fit(plan, SEARCH, trainable, make, callbacks)
    _reconcile(plan, results, git, watch)


def best_search_trials(plan: SweepPlan, df: pd.DataFrame | None = None
                       ) -> dict[str | None, dict[str, Any]]:
    """The best finished search trial of every compared value (by the experiment's
    metric); ``df``: the trials table when the caller has read it already."""
    exp = plan.experiment
    df = plan.store.trials() if df is None else df
    if df.empty:
        return {}
    df = df[(df["phase"] == SEARCH) & (df["status"] == "completed")]
    metric = exp.search.metric
    if metric not in df.columns:
        return {}
    df = df[df[metric].notna()]
    best: dict[str | None, dict[str, Any]] = {}
    for label in exp.compare_labels:
        rows = df[df["compare_value"] == label] if label is not None else df
        if rows.empty:
            continue
        row = rows.sort_values(metric, ascending=exp.search.mode == "min").iloc[0]
        best[label] = row.to_dict()
    return best


def _slug(label: str | None) -> str:
    return "all" if label is None else "".join(c if c.isalnum() or c in "+-." else "_" for c in label)


def _search_trials_to_reproduce(plan: SweepPlan) -> list[tuple[str | None, dict[str, Any], bool]]:
    """(compared value, search row, is the value's best) for every configuration to
    reproduce: the best of each value, or with ``search.reproduce: all`` every completed
    search configuration (each distinct parameter set once)."""
    trials = plan.store.trials()
    best = best_search_trials(plan, trials)
    if plan.experiment.search.reproduce == "best":
        return [(label, row, True) for label, row in best.items()]
    df = trials[(trials["phase"] == SEARCH) & (trials["status"] == "completed")]
    out = []
    for label, best_row in best.items():
        rows = df[df["compare_value"] == label] if label is not None else df
        seen: set[str] = set()
        for row in rows.sort_values("trial_id").to_dict("records"):
            key = row.get("params") or "{}"
            if key in seen:
                continue
            seen.add(key)
            out.append((label, row, row["trial_id"] == best_row["trial_id"]))
    return out


def run_reproductions(plan: SweepPlan, train_fn: Callable | None, git: str | None,
                      watch: tune.Callback | None = None) -> int:
    exp = plan.experiment
    specs = []
    for label, row, is_best in _search_trials_to_reproduce(plan):
        params = json.loads(row.get("params") or "{}")
        overrides = {**exp.compare_overrides(label), **params}
        # ids stay stable across --resume: the parameter set names the configuration
        config_tag = "" if exp.search.reproduce == "best" else "-" + hashlib.sha1(
            json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        for seed in exp.search.reproduction_seeds:
            specs.append({"phase": REPRODUCTION, "compare_value": label, "overrides": overrides,
                          "params": params, "seed": int(seed), "best_config": is_best,
                          "trial_id": f"reproduction-{_slug(label)}{config_tag}-seed{seed}",
                          "source_trial": row["trial_id"]})
    if not specs:
        return 0
    path = plan.tune_dir(REPRODUCTION)
    if plan.reproduce_only:
        _remove_tree(path)  # a fresh set of reproductions; rows are replaced by trial_id
    trainable = _trainable(exp, train_fn)
    callbacks = _callbacks(plan, REPRODUCTION, len(specs), _slots(exp, plan.max_concurrent), git,
                           watch)

    def make():
        return tune.Tuner(
            trainable,
            param_space={"spec": tune.grid_search(specs)},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=plan.max_concurrent,
                                        scheduler=SweepScheduler(path),
                                        trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name,
                                        reuse_actors=REUSE_ACTORS),
            run_config=_run_config(plan, REPRODUCTION, callbacks),
        )

    results = _fit(plan, REPRODUCTION, trainable, make, callbacks)
    _reconcile(plan, results, git, watch)
    return len(specs)


def _remove_tree(path: str) -> None:
    if is_uri(path):
        import pyarrow.fs

        fs, p = pyarrow.fs.FileSystem.from_uri(path)
        if fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound:
            fs.delete_dir(p)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _save_state(plan: SweepPlan, **update: Any) -> None:
    plan.state.update(update)
    plan.store.write_json(STATE, plan.state)


def run_sweep(plan: SweepPlan, train_fn: Callable | None = None, render: bool = True,
              warn: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run (or resume) the sweep of a prepared plan. ``train_fn`` replaces
    ``run_training`` (tests only); ``warn`` gets one-line notices (damaged tables
    rebuilt, budget rounding) before anything runs."""
    from harness.sweep.lock import SweepLock

    lock = SweepLock(plan.store, take_over=plan.take_over,
                     resume_hint=f"continue with `{plan.resume_command()}`")
    lock.acquire()
    try:
        return _run_locked(plan, train_fn, render, warn or (lambda msg: None))
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's loop
        raise SweepInterrupted(f"continue with `{plan.resume_command()}`") from None
    finally:
        lock.release()


def _run_locked(plan: SweepPlan, train_fn: Callable | None, render: bool,
                warn: Callable[[str], None]) -> SweepOutcome:
    from harness.sweep.interrupt import watching

    exp = plan.experiment
    git = _git_commit()
    for line in plan.warnings:
        warn(line)
    if plan.state:  # another driver may have moved the sweep on since prepare_sweep
        plan.state = read_state(plan.store)[0]
        _repair_tables(plan, git, warn)
    elif plan.store.exists(STATE):
        raise ResultsError(f"results of '{exp.name}' appeared at {plan.store.root} meanwhile; "
                           f"continue with `{plan.resume_command()}`")
    started_ray = start_ray(plan.address)  # before any file: a failed start leaves nothing
    try:
        if not plan.state:
            _save_state(plan, experiment=exp.model_dump(mode="json"), created_at=_utc_now(),
                        host=socket.gethostname(), search_done=False, reproduction_done=False)
            plan.store.write_json(SPACE, space_description(exp))
        if not plan.reproduce_only and not plan.state.get("search_done"):
            with watching() as watch:
                run_search(plan, train_fn, git, watch)
            _stop_if_interrupted(plan, watch, SEARCH)
            _save_state(plan, search_done=True)
        if plan.reproduce_only or not plan.state.get("reproduction_done"):
            with watching() as watch:
                run_reproductions(plan, train_fn, git, watch)
            _stop_if_interrupted(plan, watch, REPRODUCTION)
            _save_state(plan, reproduction_done=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    trials = plan.store.trials()
    n_search = int((trials["phase"] == SEARCH).sum()) if not trials.empty else 0
    n_repro = int((trials["phase"] == REPRODUCTION).sum()) if not trials.empty else 0
    _fail_if_nothing_ran(plan, trials)
    report = render_experiment_report(plan.store.root) if render else None
    return SweepOutcome(exp.name, plan.store.root, n_search, n_repro, report)


def _stop_if_interrupted(plan: SweepPlan, watch, phase: str) -> None:
    if watch.interrupted:
        done = plan.store.trials()
        n = int((done["phase"] == phase).sum()) if not done.empty else 0
        raise SweepInterrupted(
            f"{watch.interrupted} during the {phase} phase ({n} {phase} trials recorded); "
            f"continue with `{plan.resume_command()}`"
        )


def _fail_if_nothing_ran(plan: SweepPlan, trials: pd.DataFrame) -> None:
    """A phase whose every trial failed is a failed sweep (exit 1), with the reason."""
    if trials.empty:
        return
    for phase in (SEARCH, REPRODUCTION):
        rows = trials[trials["phase"] == phase]
        if rows.empty or not (rows["status"] == "failed").all():
            continue
        reasons = rows["error"].dropna() if "error" in rows else pd.Series(dtype=str)
        reason = reasons.value_counts().index[0] if len(reasons) else "no reason recorded"
        raise SweepFailedError(
            f"all {len(rows)} {phase} trials of '{plan.experiment.name}' failed: {reason} "
            f"(every reason: the error column of {plan.store.path('trials.parquet')})"
        )


def _repair_tables(plan: SweepPlan, git: str | None, warn: Callable[[str], None]) -> None:
    """Set aside unreadable tables and rebuild them from Tune's state (recover.py)."""
    from harness.sweep.recover import damaged_tables, rebuild_tables, set_aside

    try:
        plan.store.read_json(SPACE)
    except ResultsError as e:  # missing or not JSON: it is derived from the experiment
        if plan.store.exists(SPACE):
            warn(f"{str(e).split(' (')[0]}: kept as {set_aside(plan.store, SPACE)}; rewritten")
        plan.store.write_json(SPACE, space_description(plan.experiment))
    damaged = damaged_tables(plan.store)
    if not damaged:
        return
    for name, reason in damaged.items():
        kept = set_aside(plan.store, name)
        warn(f"{reason.split(' (')[0]}: kept as {kept}; rebuilding it from the sweep's Tune state")
    rows = rebuild_tables(plan.store, [plan.tune_dir(SEARCH), plan.tune_dir(REPRODUCTION)],
                          lambda: ResultsRecorder(plan.experiment, plan.storage, git))
    warn(f"rebuilt {rows} trial rows of '{plan.experiment.name}' from its Tune state")


def render_experiment_report(root: str) -> str | None:
    """Render the report with ``reports.render_report`` once that package provides it."""
    try:
        from reports import render_report
    except ImportError:
        return None
    if is_uri(root):  # the report renders from local tables; run `harness report` on a copy
        return None
    out_dir = join(root, "report")
    rendered = render_report(experiment_dirs=[root], out_dir=out_dir, formats=("md", "html"))
    if isinstance(rendered, dict):
        return ", ".join(str(p) for p in rendered.values())
    return str(rendered) if rendered is not None else out_dir


def summary_table(store: ResultsStore, metric: str) -> list[tuple[str, int, float, float]]:
    """Per compared value: reproductions, mean and std of the test metric."""
    df = store.trials()
    if df.empty:
        return []
    df = df[df["phase"] == REPRODUCTION]
    col = "test." + metric.removeprefix("val.")
    if col not in df.columns:
        return []
    out = []
    for label, rows in df.groupby(df["compare_value"].fillna("(all)")):
        vals = rows[col].dropna()
        std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        out.append((str(label), len(vals), float(vals.mean()) if len(vals) else math.nan, std))
    return out
