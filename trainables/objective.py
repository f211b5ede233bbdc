"""A search trial whose objective is a mean over folds and seeds (``search.objective``).

A Metric Learning Reality Check (Musgrave et al. 2020) scores a hyperparameter setting
by class-disjoint k-fold cross-validation, because one validation split and one seed
are noisy. Tune and Optuna score one number per trial, so one trial trains all of the
setting's runs (:meth:`harness.sweep.search_spec.ObjectiveSpec.units`: fold ``i`` of
``data.val_folds`` x seed ``s``) and reports their mean.

The runs train in **lockstep**: one epoch of each in turn, one at a time (each run is a
thread that holds the only turn), and the trial reports epoch ``e`` once every run has
finished it. So an early-stopping scheduler (ASHA) compares trials on the mean at equal
budget, the trial checkpoints all its runs at the same epoch, and the runs never compete
for the CPU. Each run keeps its own global RNG state between its turns (python, numpy,
torch), so it trains exactly as it would alone.

Files: each run in ``runs/fold<i>-seed<s>/`` of the trial folder (its own
``epochs.jsonl``, checkpoints and ``summary.json``); the trial folder's ``epochs.jsonl``
holds the mean over runs per epoch (what ``epochs.parquet`` shows), plus
``objective_so_far``: the mean of each run's best-so-far search metric, which is what the
trial reports to Tune. The trial's best validation metrics are the means of each run's
best; ``units`` of its result lists each run's value (``trials.parquet``:
``objective.mean``, ``objective.std``, ``objective.runs``).

A restarted trial (a lost worker, ``harness sweep --resume``) resumes each run from its
own last checkpoint; a run that had finished (its ``summary.json``) is read, not rerun.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any, Callable

from harness.config import RunConfig, build_config
from harness.core.run_result import RunResult
from harness.results.contract import (
    EPOCH_LOG,
    OBJECTIVE_SO_FAR_KEY,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    SUMMARY_FILE,
)
from harness.trainables.trial_setup import read_epochs

RUNS_DIR = "runs"


class _Stop(Exception):
    """Raised inside a run's thread when the trial ends early (another run failed)."""


class _Run:
    """One fold x seed run of the trial and its turn."""

    def __init__(self, index: int, label: dict[str, int], config: RunConfig, out_dir: Path):
        self.index = index
        self.label = label
        self.config = config
        self.out_dir = out_dir
        self.turn = threading.Event()
        self.rng: dict[str, Any] | None = None  # its global RNG state between turns
        self.epochs = 0  # epochs finished
        self.done = False
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return f"fold{self.label['fold']}-seed{self.label['seed']}"


def _epochs(out_dir: Path) -> dict[int, dict[str, Any]]:
    return {int(r["epoch"]): r for r in read_epochs(out_dir)}


def _finished(out_dir: Path) -> RunResult | None:
    """The result of a run that had finished before a restart (its summary.json)."""
    path = out_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    return RunResult.from_summary(json.loads(path.read_text()), out_dir)


def _mean(dicts: list[dict[str, Any]]) -> dict[str, float]:
    """Key-wise mean of the numeric values that every dict has."""
    if not dicts:
        return {}
    keys = set.intersection(*(set(d) for d in dicts))
    out = {}
    for k in sorted(keys):
        vals = [d[k] for d in dicts]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = float(sum(vals) / len(vals))
    return out


class LockstepObjective:
    """A ``run_training``-shaped callable that trains a trial's fold x seed runs in
    lockstep and returns their combined :class:`RunResult` (see the module docstring).

    ``units``: ``(label, dotted overrides)`` per run; ``metric``/``mode``: the search's.
    """

    def __init__(self, train_fn: Callable[..., RunResult], units: list[tuple[dict[str, int], dict[str, Any]]],
                 metric: str, mode: str):
        self.train_fn = train_fn
        self.units = units
        self.metric = metric
        self.sign = 1.0 if mode == "max" else -1.0

    def __call__(self, config: RunConfig, out_dir: Path, on_epoch=None, resume: bool = True,
                 **_: Any) -> RunResult:
        from harness.core.checkpoint import rng_states, set_rng_states  # torch: trials only

        out_dir = Path(out_dir)
        base = config.model_dump(mode="json")
        runs = [
            _Run(i, label, build_config(base, overrides, source=f"search.objective run {i}"),
                 out_dir / RUNS_DIR / f"fold{label['fold']}-seed{label['seed']}")
            for i, (label, overrides) in enumerate(self.units)
        ]
        reported = max(_epochs(out_dir), default=0)  # rounds Tune already had
        back = threading.Event()  # a run hands the turn back
        stop = threading.Event()

        for run in runs:
            run.result = _finished(run.out_dir) if resume else None
            run.done = run.result is not None
            run.epochs = run.result.epochs_run if run.done else max(_epochs(run.out_dir), default=0)
            if not run.done:
                run.thread = threading.Thread(target=self._body, args=(run, back, stop, resume),
                                              name=f"objective-{run.name}", daemon=True)
                run.thread.start()

        def give_turn(run: _Run) -> None:
            if run.rng is not None:
                set_rng_states(run.rng)
            back.clear()
            run.turn.set()
            back.wait()
            run.rng = rng_states()

        try:
            while True:
                active = [r for r in runs if not r.done]
                if not active or stop.is_set():
                    break
                run = min(active, key=lambda r: (r.epochs, r.index))
                give_turn(run)
                if run.error is not None or (run.done and run.result.status != STATUS_COMPLETED):
                    stop.set()
                    break
                reported = self._report_rounds(runs, out_dir, reported, on_epoch)
        finally:
            stop.set()
            for run in runs:  # wake the runs still waiting for a turn: they stop
                if run.thread is not None and run.thread.is_alive():
                    give_turn(run)
                    run.thread.join()
        failed = next((r for r in runs if r.error is not None), None)
        if failed is not None:
            raise failed.error
        return self._combine(runs, out_dir)

    # ---- the runs ------------------------------------------------------------------

    def _body(self, run: _Run, back: threading.Event, stop: threading.Event, resume: bool) -> None:
        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            run.epochs = epoch
            back.set()
            run.turn.wait()
            run.turn.clear()
            if stop.is_set():
                raise _Stop()

        try:
            run.turn.wait()
            run.turn.clear()
            if stop.is_set():
                return
            run.result = self.train_fn(run.config, run.out_dir, on_epoch=on_epoch, resume=resume)
            run.epochs = run.result.epochs_run
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the trial's thread
            run.error = e
        finally:
            run.done = True
            back.set()

    def _report_rounds(self, runs: list[_Run], out_dir: Path, reported: int, on_epoch) -> int:
        """Report every epoch that all runs have finished and Tune has not seen yet."""
        ready = min(r.epochs for r in runs)
        if ready <= reported:
            return reported
        per_run = [_epochs(r.out_dir) for r in runs]
        for epoch in range(reported + 1, ready + 1):
            record = _mean([e[epoch] for e in per_run])
            record.pop("epoch", None)
            record[OBJECTIVE_SO_FAR_KEY] = self._objective_so_far(per_run, epoch)
            with (out_dir / EPOCH_LOG).open("a") as f:
                f.write(json.dumps({"epoch": epoch, **record}) + "\n")
            if on_epoch is not None:
                on_epoch(epoch, record)
        return ready

    def _objective_so_far(self, per_run: list[dict[int, dict[str, Any]]], epoch: int) -> float:
        """Mean over runs of each run's best search metric up to ``epoch`` (NaN until
        every run has one)."""
        bests = []
        for epochs in per_run:
            vals = [e[self.metric] for k, e in epochs.items() if k <= epoch
                    and isinstance(e.get(self.metric), (int, float)) and math.isfinite(e[self.metric])]
            if not vals:
                return math.nan
            bests.append(max(vals, key=lambda v: self.sign * v))
        return float(sum(bests) / len(bests))

    # ---- the trial's result --------------------------------------------------------

    def _combine(self, runs: list[_Run], out_dir: Path) -> RunResult:
        results = [r.result for r in runs]
        completed = all(r is not None and r.status == STATUS_COMPLETED for r in results)
        ok = [r for r in results if r is not None]
        best_val = _mean([r.best_val for r in ok]) if completed else {}
        # the epoch at which the mean curve of the search metric is best
        curve = {int(e["epoch"]): e.get(self.metric) for e in _epochs(out_dir).values()}
        scored = {k: v for k, v in curve.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        best_epoch = max(scored, key=lambda k: self.sign * scored[k]) if scored and completed else None
        units = [
            {**r.label, "status": r.result.status if r.result else "stopped",
             "value": (r.result.best_val.get(self.metric) if r.result else None),
             "best_epoch": r.result.best_epoch if r.result else None}
            for r in runs
        ]
        return RunResult(
            status=STATUS_COMPLETED if completed else STATUS_DIVERGED,
            epochs_run=min(r.epochs for r in runs),
            best_epoch=best_epoch,
            best_val=best_val,
            test=_mean([r.test for r in ok]) if completed else {},
            wall_seconds=float(sum(r.wall_seconds for r in ok)),
            device=ok[0].device if ok else "",
            out_dir=out_dir,
            test_untrained=_mean([r.test_untrained for r in ok]) if completed else {},
            units=units,
        )


def objective_training(train_fn: Callable[..., RunResult], objective: dict[str, Any] | None,
                       seed: int, metric: str, mode: str) -> Callable[..., RunResult]:
    """``train_fn`` itself for a one-run objective, else its :class:`LockstepObjective`."""
    from harness.sweep.search_spec import ObjectiveSpec

    spec = ObjectiveSpec.model_validate(objective or {})
    if spec.runs == 1:
        return train_fn
    return LockstepObjective(train_fn, spec.units(seed), metric, mode)
