"""A live view of a sweep (rich Live): trials running / done / failed, best so far, ETA.

It is a Ray Tune callback. Tune pickles its callbacks with the experiment (that is how
``Tuner.restore`` brings them back), so the terminal objects are created in
:meth:`setup` and dropped from the pickled state.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from harness.results.contract import OBJECTIVE_KEY, STATUS_FAILED
from harness.results.trial_spec import NO_COMPARE_LABEL, compare_label


class SweepProgress(Callback):
    def __init__(self, title: str, metric: str, mode: str, planned: int, slots: int,
                 objective: str = OBJECTIVE_KEY, runs_per_trial: int = 1):
        self.title = title
        # search.objective's folds x seeds: each trial trains this many runs
        self.runs_per_trial = max(1, runs_per_trial)
        self.metric = metric
        self.mode = mode
        self.planned = planned
        self.slots = max(1, slots)
        self.objective = objective
        self._reset()

    def _reset(self) -> None:
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.best: dict[str, float] = {}
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.t0 = time.monotonic()
        self._live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = None
        return state

    # ---- Tune callback hooks -------------------------------------------------------

    def setup(self, **info: Any) -> None:
        self.t0 = time.monotonic()
        self._live = Live(self.render(), console=Console(stderr=True), refresh_per_second=2,
                          transient=False)
        self._live.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self.started.setdefault(trial.trial_id, time.monotonic())
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.objective)
        label = compare_label(trial.config)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best.get(label)
            if old is None or (value > old if self.mode == "max" else value < old):
                self.best[label] = float(value)
        self._refresh()

    def _finish(self, trial, failed: bool) -> None:
        self.running.discard(trial.trial_id)
        (self.failed if failed else self.done).add(trial.trial_id)
        start = self.started.pop(trial.trial_id, None)
        if start is not None:
            self.durations.append(time.monotonic() - start)
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # a trial that could not run ends normally with a final "failed" report
        self._finish(trial, failed=(trial.last_result or {}).get("status") == STATUS_FAILED)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, failed=True)

    def on_experiment_end(self, trials, **info) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            if not self._live.console.is_terminal:  # rich ends the final render mid-line there
                self._live.console.line()
            self._live = None

    # ---- rendering -----------------------------------------------------------------

    def eta_seconds(self) -> float | None:
        if not self.durations:
            return None
        remaining = max(0, self.planned - len(self.done) - len(self.failed))
        mean = sum(self.durations) / len(self.durations)
        return math.ceil(remaining / self.slots) * mean

    def render(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        runs = self.runs_per_trial
        cols = ["running", "done", "failed", "planned"] + (["training runs"] if runs > 1 else [])
        for col in (*cols, "elapsed", "ETA"):
            table.add_column(col, justify="right")
        eta = self.eta_seconds()
        finished = len(self.done) + len(self.failed)
        table.add_row(
            str(len(self.running)), str(len(self.done)), str(len(self.failed)), str(self.planned),
            *([f"{finished * runs}/{self.planned * runs}"] if runs > 1 else []),
            _fmt_seconds(time.monotonic() - self.t0), "?" if eta is None else _fmt_seconds(eta),
        )
        if self.best:
            best = Table(show_header=True, box=None)
            best.add_column("compared value")
            best.add_column(f"best {self.metric} so far", justify="right")
            for label, value in sorted(self.best.items()):
                best.add_row("(all)" if label == NO_COMPARE_LABEL else label, f"{value:.4f}")
            outer = Table.grid()
            outer.add_row(table)
            outer.add_row(best)
            return outer
        return table

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
