"""The report's environment section: versions, devices, commits, hosts and compute time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from harness.utils.clock import utc_display

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults



@dataclass
class Environment:
    versions: dict[str, str]
    devices: list[str]
    git_commits: list[str]
    hosts: list[str]
    first_start: str | None
    last_finish: str | None
    wall_hours: float
    gpu_hours: float
    n_trials: int


def _distinct(series: pd.Series) -> list[str]:
    return sorted({str(v) for v in series.dropna() if str(v)})


def environment(experiments: list[ExperimentResults]) -> Environment:
    t = pd.concat([e.trials for e in experiments], ignore_index=True)
    versions: dict[str, set[str]] = {}
    for raw in t.get("versions", pd.Series(dtype=object)).dropna():
        try:
            for k, v in json.loads(raw).items():
                versions.setdefault(str(k), set()).add(str(v))
        except (ValueError, AttributeError):
            continue
    col = lambda c: t[c] if c in t.columns else pd.Series(dtype=object)  # noqa: E731
    started = pd.to_datetime(col("started_at"), utc=True, errors="coerce").dropna()
    finished = pd.to_datetime(col("finished_at"), utc=True, errors="coerce").dropna()
    wall = pd.to_numeric(col("wall_seconds"), errors="coerce").fillna(0.0)
    gpus = pd.to_numeric(col("gpus"), errors="coerce").reindex(wall.index).fillna(0.0)
    return Environment(
        versions={k: ", ".join(sorted(v)) for k, v in sorted(versions.items())},
        devices=_distinct(col("device")),
        git_commits=_distinct(col("git_commit")),
        hosts=_distinct(col("host")),
        first_start=utc_display(started.min()) if len(started) else None,
        last_finish=utc_display(finished.max()) if len(finished) else None,
        wall_hours=float(wall.sum()) / 3600.0,
        gpu_hours=float((wall * gpus).sum()) / 3600.0,
        n_trials=len(t),
    )
