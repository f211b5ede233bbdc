"""Planning a sweep, before Ray starts: :class:`SweepPlan` and :func:`prepare_sweep`.

Everything that can be wrong with the input (experiment, storage, resume state,
cluster address, trackers, the Optuna database, the search space against the data:
:mod:`harness.sweep.preflight`) is checked here and raised as one :class:`HarnessError`
line, so a bad input touches nothing under the storage path. The plan is complete and
immutable once made; what changes while it runs is ``sweep.json``
(:class:`~harness.sweep.state.SweepState`). Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError, ResultsError
from harness.utils.paths import can_write, existing_ancestor
from harness.results.contract import STATE_FILE, TRIALS_FILE
from harness.sweep.cluster import check_address
from harness.sweep.experiment import Experiment, load_experiment
from harness.sweep.preflight import check_data_readable
from harness.sweep.results import ResultsStore, is_uri, join
from harness.sweep.state import SweepState


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: what to run, where, and how (made by :func:`prepare_sweep`)."""

    experiment: Experiment  # with the --tracking trackers
    storage: str
    store: ResultsStore
    optuna_storage: str  # SQLAlchemy URL of the Optuna studies (harness/sweep/optuna_storage.py)
    resume: bool = False
    reproduce_only: bool = False
    max_concurrent: int | None = None  # --max-concurrent; None: what the cluster holds
    address: str | None = None
    take_over: bool = False  # the user says the driver named in sweep.lock is dead
    warnings: tuple[str, ...] = ()  # one-line notices to print before anything runs

    @property
    def continuing(self) -> bool:
        """A sweep that already ran (``--resume``, ``--reproduce-only``): its state exists."""
        return self.resume or self.reproduce_only

    def resume_command(self) -> str:
        """The command that continues this sweep, valid from any working folder."""
        storage = self.storage if is_uri(self.storage) else str(Path(self.store.root).parent)
        return f"harness sweep {self.experiment.name} --resume --storage {storage}"

    def tune_dir(self, phase: str) -> str:
        return join(self.store.root, "tune", phase)


def check_storage_writable(storage: str) -> None:
    """A local storage path must be (or be creatable in) a writable folder."""
    if is_uri(storage):
        import pyarrow.fs  # only for URIs: pyarrow's filesystems are slow to import

        try:
            pyarrow.fs.FileSystem.from_uri(storage)
        except Exception as e:
            raise ConfigError(f"--storage {storage}: not a usable storage URI ({e})") from None
        return
    probe = existing_ancestor(Path(storage.removeprefix("file://")).expanduser().absolute())
    if not probe.is_dir():
        raise ConfigError(f"--storage {storage}: {probe} is a file, not a folder")
    if not can_write(probe):
        raise ConfigError(
            f"--storage {storage}: {probe} is not writable; pick another --storage folder"
        )


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
    tracking: list[str] | None = None,
    optuna_storage: str | None = None,
) -> SweepPlan:
    """Validate everything a sweep needs and return its complete plan; raise a one-line
    HarnessError otherwise. ``tracking``: the ``--tracking`` trackers; ``optuna_storage``:
    the ``--optuna-storage`` URL (default: the SQLite file beside the tables)."""
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError("--max-concurrent must be at least 1")
    check_storage_writable(storage)
    if address:
        check_address(address)  # an unreachable cluster: one line, nothing written
    continuing = resume or reproduce_only
    if continuing:
        stem = Path(name).stem if name.endswith((".yaml", ".yml")) else name
        store = ResultsStore(storage, stem)
        if not store.exists(STATE_FILE):
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
        state = SweepState.read(store)
        exp = state.experiment
        if reproduce_only and not state.get("search_done"):
            raise ResultsError(
                f"--reproduce-only: the search of '{stem}' has not finished; "
                f"finish it first with `harness sweep {name} --resume`"
            )
    else:
        exp = load_experiment(name, overrides, trials)
        store = ResultsStore(storage, exp.name)
        if store.exists(STATE_FILE) or store.exists(TRIALS_FILE):
            raise ResultsError(
                f"results of '{exp.name}' already exist at {store.root}; continue with "
                f"--resume, rerun reproductions with --reproduce-only, or use another --storage"
            )
        state = None
    warnings: list[str] = []
    if not continuing:
        warnings.extend(budget_warnings(exp))
        # every compared value's space against the data it trains on: one line, nothing written
        warnings.extend(check_data_readable(exp, address))
    # here, not at the top: Optuna and the trackers' checks are the slow part of a failing call
    from harness.sweep.optuna_storage import resolve_storage_url
    from harness.tracking.config import apply_tracking

    exp = apply_tracking(exp, tracking, resuming=continuing)
    url = resolve_storage_url(exp, store, state, optuna_storage)  # checked before Ray starts
    return SweepPlan(exp, storage, store, url, resume, reproduce_only, max_concurrent, address,
                     take_over, tuple(warnings))


def budget_warnings(exp: Experiment) -> list[str]:
    """Trials that a compare axis drops (search.trials not a multiple of the values),
    and the runs that search.objective's folds and seeds multiply."""
    budget = exp.trial_budget()  # what the searcher will run: an equal share per value
    scheduled = sum(budget.values())
    out = []
    if exp.search.algorithm != "grid" and len(budget) >= 2 and scheduled != exp.search.trials:
        out.append(f"search.trials {exp.search.trials} is not a multiple of the {len(budget)} "
                   f"compared values: {scheduled // len(budget)} trials each, {scheduled} in all")
    objective = exp.search.objective
    if objective.runs > 1:
        out.append(f"search.objective: each of the {scheduled} search trials trains "
                   f"{objective.folds} fold(s) x {objective.seeds} seed(s) = {objective.runs} runs: "
                   f"{exp.search_runs()} training runs before the {exp.reproductions_planned()} "
                   "reproductions")
    return out
