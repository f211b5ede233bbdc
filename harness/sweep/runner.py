"""run_sweep: Ray Tune + Optuna search per compared value, then reproductions.

Plan (the "Metric Learning Reality Check" protocol):

1. **search**: one Ray Tune experiment; every compared value (``compare`` axis) has its
   own Optuna study and its own share of the trial budget (:mod:`harness.sweep.searcher`),
   and, when configured, its own ASHA early stopping (:mod:`harness.sweep.scheduler`), so
   each method is tuned for itself while all trials share the cluster's slots.
2. **reproduction**: the best search configuration of every compared value (or every
   one, ``reproduce: all``), rerun on every reproduction seed and evaluated on the test
   split (:mod:`harness.sweep.reproduce`). Reports compare these.

Everything that can be wrong with the input is checked by :func:`prepare_sweep`
(:mod:`harness.sweep.plan`) before Ray starts. Results go to ``<storage>/<experiment>/``
through :class:`ResultsStore` (rows: :mod:`harness.sweep.recorder`); Ray Tune's own
experiment folders live under ``<storage>/<experiment>/tune/`` and make ``--resume``
work (:mod:`harness.sweep.tuner`: ``Tuner.restore``, the pickled searcher keeps the
Optuna history).
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import pyarrow.fs
import ray
from ray import tune

from harness.utils.clock import utc_iso
from harness.errors import ResultsError, SweepFailedError, SweepInterrupted
from harness.results.contract import (
    COL_ERROR,
    COL_PHASE,
    COL_STATUS,
    PHASE_REPRODUCTION,
    PHASE_SEARCH,
    SPACE_FILE,
    STATE_FILE,
    STATUS_FAILED,
    TRIALS_FILE,
)
from harness.sweep.cluster import start_ray, trial_slots
from harness.sweep.disk import disk_full_error, quiet_tune_disk_full_logs
from harness.sweep.failures import disk_full
from harness.sweep.interrupt import watching
from harness.sweep.lock import SweepLock
from harness.sweep.optuna_storage import recorded_url
from harness.sweep.plan import SweepPlan, prepare_sweep
from harness.sweep.recorder import ResultsRecorder, git_commit, reconcile
from harness.sweep.recover import damaged_tables, rebuild_tables, set_aside
from harness.sweep.reproduce import reproduction_specs
from harness.sweep.results import is_uri, join

from harness.sweep.scheduler import SweepScheduler, create_scheduler
from harness.sweep.searcher import create_compare_searcher
from harness.sweep.space import space_description
from harness.sweep.state import SweepState
from harness.sweep.tuner import create_callbacks, create_trainable, fit_phase, phase_tune_config
from harness.results.trial_spec import SPEC_KEY

__all__ = ["SweepOutcome", "prepare_sweep", "run_sweep", "run_search", "run_reproductions"]


@dataclass
class SweepOutcome:
    experiment: str
    root: str
    trials: int
    reproductions: int
    report: str | None = None


def run_search(plan: SweepPlan, train_fn: Callable | None, git: str | None,
               watch: tune.Callback | None = None) -> None:
    """The search phase: every compared value's trial budget, through Optuna."""
    exp = plan.experiment
    planned = sum(exp.trial_budget().values())
    slots, limit = trial_concurrency(plan)
    searcher = create_compare_searcher(exp, plan.optuna_storage, limit)
    scheduler = create_scheduler(exp, plan.tune_dir(PHASE_SEARCH))
    trainable = create_trainable(exp, train_fn, plan.store.root)
    callbacks = create_callbacks(plan, PHASE_SEARCH, planned, slots, git, watch)
    config = phase_tune_config(search_alg=searcher, scheduler=scheduler, num_samples=planned)
    results = fit_phase(plan, PHASE_SEARCH, trainable, callbacks, config)
    reconcile(ResultsRecorder(exp, plan.storage, git, watch), results)


def run_reproductions(plan: SweepPlan, train_fn: Callable | None, git: str | None,
                      watch: tune.Callback | None = None) -> int:
    """The reproduction phase (:func:`reproduction_specs`); returns how many it ran."""
    exp = plan.experiment
    specs = reproduction_specs(exp, plan.store.trials())
    if not specs:
        return 0
    path = plan.tune_dir(PHASE_REPRODUCTION)
    if plan.reproduce_only:
        _remove_tree(path)  # a fresh set of reproductions; rows are replaced by trial_id
    trainable = create_trainable(exp, train_fn, plan.store.root)
    slots, limit = trial_concurrency(plan)
    callbacks = create_callbacks(plan, PHASE_REPRODUCTION, len(specs), slots, git, watch)
    config = phase_tune_config(num_samples=1, max_concurrent_trials=limit,
                               scheduler=SweepScheduler(path))
    results = fit_phase(plan, PHASE_REPRODUCTION, trainable, callbacks, config,
                        param_space={SPEC_KEY: tune.grid_search(specs)})
    reconcile(ResultsRecorder(exp, plan.storage, git, watch), results)
    return len(specs)


def trial_concurrency(plan: SweepPlan) -> tuple[int, int | None]:
    """-> (trials the started Ray cluster runs at once, the limit to give Tune): the
    limit is ``--max-concurrent``; data-parallel trials are limited to the slots even
    without it, since Tune would otherwise start a (light) driver per trial and queue
    their worker groups."""
    slots = trial_slots(plan.experiment, plan.max_concurrent)
    if plan.max_concurrent is None and plan.experiment.search.resources.workers > 1:
        return slots, slots
    return slots, plan.max_concurrent


def _remove_tree(path: str) -> None:
    if is_uri(path):
        fs, p = pyarrow.fs.FileSystem.from_uri(path)
        if fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound:
            fs.delete_dir(p)
    else:
        shutil.rmtree(path, ignore_errors=True)


def run_sweep(plan: SweepPlan, train_fn: Callable | None = None, render: bool = True,
              warn: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run (or resume) the sweep of a prepared plan. ``train_fn`` replaces
    ``run_training`` (tests only); ``warn`` gets one-line notices (damaged tables
    rebuilt, budget rounding) before anything runs."""
    lock = SweepLock(plan.store, take_over=plan.take_over,
                     resume_hint=f"continue with `{plan.resume_command()}`")
    lock.acquire()
    try:
        return _run_locked(plan, train_fn, render, warn or (lambda msg: None))
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's loop
        raise SweepInterrupted(f"continue with `{plan.resume_command()}`") from None
    except Exception as e:
        # a full disk, met by a trial (DiskFullWatch ended Tune's loop) or by the driver's
        # own writes (tables, Tune's state): one line, the rest of the sweep left to --resume
        found = disk_full(e)
        if found is None:
            raise
        raise disk_full_error(plan, found) from None
    finally:
        lock.release()


def _run_locked(plan: SweepPlan, train_fn: Callable | None, render: bool,
                warn: Callable[[str], None]) -> SweepOutcome:
    exp = plan.experiment
    git = git_commit()
    for line in plan.warnings:
        warn(line)
    if plan.continuing:  # read under the lock: another driver may have moved the sweep on
        state = SweepState.read(plan.store)
        _repair_tables(plan, git, warn)
    elif plan.store.exists(STATE_FILE):
        raise ResultsError(f"results of '{exp.name}' appeared at {plan.store.root} meanwhile; "
                           f"continue with `{plan.resume_command()}`")
    else:
        state = SweepState(plan.store)
    quiet_tune_disk_full_logs()
    started_ray = start_ray(plan.address)  # before any file: a failed start leaves nothing
    try:
        if not state:
            state.update(experiment=exp.model_dump(mode="json"), created_at=utc_iso(),
                         host=socket.gethostname(), search_done=False, reproduction_done=False,
                         optuna_storage=recorded_url(plan.optuna_storage, plan.store.root))
            plan.store.write_json(SPACE_FILE, space_description(exp))
        if not plan.reproduce_only and not state.get("search_done"):
            with watching() as watch:
                run_search(plan, train_fn, git, watch)
            _stop_if_interrupted(plan, watch, PHASE_SEARCH)
            state.update(search_done=True)
        if plan.reproduce_only or not state.get("reproduction_done"):
            with watching() as watch:
                run_reproductions(plan, train_fn, git, watch)
            _stop_if_interrupted(plan, watch, PHASE_REPRODUCTION)
            state.update(reproduction_done=True)
    finally:
        if started_ray:
            ray.shutdown()
    trials = plan.store.trials()
    n_search = int((trials[COL_PHASE] == PHASE_SEARCH).sum()) if not trials.empty else 0
    n_repro = int((trials[COL_PHASE] == PHASE_REPRODUCTION).sum()) if not trials.empty else 0
    _fail_if_nothing_ran(plan, trials)
    report = render_experiment_report(plan.store.root) if render else None
    return SweepOutcome(exp.name, plan.store.root, n_search, n_repro, report)


def _stop_if_interrupted(plan: SweepPlan, watch, phase: str) -> None:
    if watch.interrupted:
        done = plan.store.trials()
        n = int((done[COL_PHASE] == phase).sum()) if not done.empty else 0
        raise SweepInterrupted(
            f"{watch.interrupted} during the {phase} phase ({n} {phase} trials recorded); "
            f"continue with `{plan.resume_command()}`"
        )


def _fail_if_nothing_ran(plan: SweepPlan, trials: pd.DataFrame) -> None:
    """A phase whose every trial failed is a failed sweep (exit 1), with the reason."""
    if trials.empty:
        return
    for phase in (PHASE_SEARCH, PHASE_REPRODUCTION):
        rows = trials[trials[COL_PHASE] == phase]
        if rows.empty or not (rows[COL_STATUS] == STATUS_FAILED).all():
            continue
        reasons = rows[COL_ERROR].dropna() if COL_ERROR in rows else pd.Series(dtype=str)
        reason = reasons.value_counts().index[0] if len(reasons) else "no reason recorded"
        raise SweepFailedError(
            f"all {len(rows)} {phase} trials of '{plan.experiment.name}' failed: {reason} "
            f"(every reason: the error column of {plan.store.path(TRIALS_FILE)})"
        )


def _repair_tables(plan: SweepPlan, git: str | None, warn: Callable[[str], None]) -> None:
    """Set aside unreadable tables and rebuild them from Tune's state (recover.py)."""
    try:
        plan.store.read_json(SPACE_FILE)
    except ResultsError as e:  # missing or not JSON: it is derived from the experiment
        if plan.store.exists(SPACE_FILE):
            warn(f"{str(e).split(' (')[0]}: kept as {set_aside(plan.store, SPACE_FILE)}; rewritten")
        plan.store.write_json(SPACE_FILE, space_description(plan.experiment))
    damaged = damaged_tables(plan.store)
    if not damaged:
        return
    for name, reason in damaged.items():
        kept = set_aside(plan.store, name)
        warn(f"{reason.split(' (')[0]}: kept as {kept}; rebuilding it from the sweep's Tune state")
    rows = rebuild_tables(plan.store, [plan.tune_dir(PHASE_SEARCH), plan.tune_dir(PHASE_REPRODUCTION)],
                          lambda: ResultsRecorder(plan.experiment, plan.storage, git))
    warn(f"rebuilt {rows} trial rows of '{plan.experiment.name}' from its Tune state")


def render_experiment_report(root: str) -> str | None:
    """Render the experiment's report (Markdown and HTML) into ``<root>/report``."""
    if is_uri(root):  # the report renders from local tables; run `harness report` on a copy
        return None
    out_dir = join(root, "report")
    # here, not at the top: the report stack (scipy, matplotlib, sklearn) takes ~3 s to
    # import, which every `harness sweep` call, failing ones included, would pay first
    from harness.reports import render_report

    rendered = render_report(experiment_dirs=[root], out_dir=out_dir, formats=("md", "html"))
    return ", ".join(str(p) for p in rendered.values())


