"""Planning a sweep, before Ray starts: :class:`SweepPlan` and :func:`prepare_sweep`.

Everything that can be wrong with the input (experiment, storage, resume state,
cluster address, the search space against the data: :mod:`harness.sweep.preflight`)
is checked here and raised as one :class:`HarnessError` line, so a bad input touches
nothing under the storage path. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, ResultsError
from harness.paths import can_write, existing_ancestor
from harness.results_contract import STATE_FILE, TRIALS_FILE
from harness.sweep.cluster import check_address
from harness.sweep.experiment import Experiment, load_experiment
from harness.sweep.preflight import check_data_readable
from harness.sweep.results import ResultsStore, is_uri, join


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

    # SQLAlchemy URL of the Optuna studies (harness/sweep/optuna_storage.py); None: run_sweep
    # puts them in the SQLite file beside the tables
    optuna_storage: str | None = None

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
        state, exp = read_state(store)
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
        state = {}
    plan = SweepPlan(exp, storage, store, resume, reproduce_only, max_concurrent, address, state,
                     take_over=take_over)
    if not continuing:
        plan.warnings.extend(budget_warnings(exp))
        # every compared value's space against the data it trains on: one line, nothing written
        plan.warnings.extend(check_data_readable(exp, address))
    return plan


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


def read_state(store: ResultsStore) -> tuple[dict[str, Any], Experiment]:
    """``sweep.json`` and the experiment it records; a damaged one is one line."""
    lost = (f"the sweep's state is lost; its tables still render with `harness report "
            f"{store.root}`, or start the sweep again with another --storage")
    try:
        state = store.read_json(STATE_FILE)
        return state, Experiment.model_validate(state["experiment"])
    except ResultsError as e:
        raise ResultsError(f"{e}; {lost}") from None
    except (KeyError, TypeError, ValueError):
        raise ResultsError(f"{store.path(STATE_FILE)} is not a sweep state file; {lost}") from None
