"""What a sweep trial reports to Ray Tune, typed: one encoder, one decoder.

A trial reports once per epoch (:meth:`TrialReport.progress`: the epoch's metrics, flat,
so Optuna, ASHA, the trackers and the live view read them by name) and once at its end
(:meth:`TrialReport.finished` with the run's :class:`TrialSummary`, or
:meth:`TrialReport.failed` with a one-line reason). Every report carries the trial's
objective under ``OBJECTIVE_KEY``: the best value so far (the worst one before any).

The trial's epoch rows come from the run's own epoch log, in the summary of a trial
that finished; the per-epoch reports stand in for it only for a trial that ended
without one (stopped by the scheduler, or ended by an error), whose reports the driver
keeps as they arrive (:class:`~harness.sweep.recorder.ResultsRecorder`). The summary
is the one that survives a driver restart, which loses what the driver had kept.

Nothing here imports torch or Ray: the driver, the trainables and the trackers share it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.results.contract import COL_EPOCH, COL_ERROR, COL_STATUS, OBJECTIVE_KEY, STATUS_FAILED, TUNE_RESULT_KEYS

FINAL_KEY = "final"  # True on a trial's last report
STARTED_KEY = "started_at"
SUMMARY_KEY = "summary_json"  # the TrialSummary, as JSON (Tune's results stay flat)
# report keys that are not metrics
REPORT_KEYS = frozenset({FINAL_KEY, STARTED_KEY, SUMMARY_KEY, COL_STATUS, COL_ERROR, COL_EPOCH, OBJECTIVE_KEY})


def worst(mode: str) -> float:
    """The objective of a trial with no value yet."""
    return -math.inf if mode == "max" else math.inf


@dataclass(frozen=True)
class TrialSummary:
    """The end of a trial that trained: what its ``trials.parquet`` row is made from."""

    status: str
    epochs_run: int
    best_epoch: int | None
    best_val: dict[str, float]
    test: dict[str, float]
    test_untrained: dict[str, float]
    wall_seconds: float
    device: str
    started_at: str
    finished_at: str
    restarts: int
    versions: dict[str, str]
    host: str
    epochs: list[dict[str, Any]]  # the run's epoch log: the trial's epoch rows
    units: list[dict[str, Any]] = field(default_factory=list)  # the runs of a several-run objective

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> TrialSummary:
        fields = json.loads(text)
        fields.setdefault("test_untrained", {})
        fields.setdefault("units", [])
        return cls(**{k: fields[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TrialReport:
    """One report of a trial (see the module docstring)."""

    objective: float
    epoch: int
    started_at: str | None = None
    final: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # an epoch's (progress reports)
    status: str | None = None  # final reports: completed, diverged, failed
    error: str | None = None  # a failed trial's one-line reason
    summary: TrialSummary | None = None  # the final report of a trial that trained

    @classmethod
    def progress(cls, epoch: int, metrics: Mapping[str, Any], objective: float,
                 started_at: str) -> TrialReport:
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in REPORT_KEYS}
        return cls(objective, int(epoch), started_at, metrics=numbers)

    @classmethod
    def failed(cls, error: str, epochs_run: int, mode: str, started_at: str) -> TrialReport:
        return cls(worst(mode), int(epochs_run), started_at, final=True, status=STATUS_FAILED, error=error)

    @classmethod
    def finished(cls, summary: TrialSummary, objective: float) -> TrialReport:
        return cls(objective, summary.epochs_run, summary.started_at, final=True,
                   status=summary.status, summary=summary)

    def encode(self) -> dict[str, Any]:
        """The flat dict given to ``tune.report`` / ``ray.train.report``."""
        out: dict[str, Any] = dict(self.metrics)
        out.update({OBJECTIVE_KEY: self.objective, COL_EPOCH: self.epoch, FINAL_KEY: self.final,
                    STARTED_KEY: self.started_at})
        if self.status is not None:
            out[COL_STATUS] = self.status
        if self.error is not None:
            out[COL_ERROR] = self.error
        if self.summary is not None:
            out[SUMMARY_KEY] = self.summary.to_json()
        return out

    @classmethod
    def decode(cls, result: Mapping[str, Any]) -> TrialReport:
        """A report back from a Tune result (Tune's own bookkeeping keys are dropped)."""
        metrics = {k: float(v) for k, v in result.items()
                   if k not in REPORT_KEYS and k not in TUNE_RESULT_KEYS
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        summary = result.get(SUMMARY_KEY)
        objective = result.get(OBJECTIVE_KEY)
        return cls(
            objective=float(objective) if isinstance(objective, (int, float)) else math.nan,
            epoch=int(result.get(COL_EPOCH) or 0),
            started_at=result.get(STARTED_KEY),
            final=bool(result.get(FINAL_KEY)),
            metrics=metrics,
            status=result.get(COL_STATUS),
            error=result.get(COL_ERROR),
            summary=TrialSummary.from_json(summary) if isinstance(summary, str) else None,
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.encode()))

    @classmethod
    def read(cls, path: Path) -> TrialReport:
        return cls.decode(json.loads(path.read_text()))


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item"):  # numpy and torch scalars
        return v.item()
    return str(v)
