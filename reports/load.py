"""Read and validate one experiment's results tables (docs/architecture.md, "Results tables").

A report is only as good as the tables behind it, so anything that is not a
metric-harness results table (a missing directory, an empty or unreadable Parquet
file, a table without ``schema_version`` or the required columns) is a one-line
:class:`~harness.errors.ResultsError` naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import ResultsError
from harness.results.contract import (
    COL_EPOCH,
    COL_COMPARE_KEY,
    COL_COMPARE_VALUE,
    COL_EXPERIMENT,
    COL_METHOD,
    COL_SCHEMA_VERSION,
    COL_SEED,
    EPOCH_COLUMNS,
    EPOCHS_FILE,
    SCHEMA_VERSION,
    SPACE_FILE,
    STATE_FILE,
    TRIAL_COLUMNS,
    TRIALS_FILE,
)


@dataclass
class ExperimentResults:
    """The tables of one ``<storage>/<experiment>/`` directory."""

    name: str
    path: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame | None  # None: no epochs.parquet (yet)
    space: dict[str, Any] | None  # None: no space.json (planned trials unknown)

    @property
    def compare_key(self) -> str | None:
        if self.space and self.space.get("compare_key"):
            return self.space["compare_key"]
        keys = self.trials[COL_COMPARE_KEY].dropna().unique() if COL_COMPARE_KEY in self.trials else []
        return str(keys[0]) if len(keys) else None


def rebuild_advice(path: Path) -> str:
    """How to get a damaged table (or space.json) back: advice that works for this folder."""
    root = path.parent
    if (root / STATE_FILE).is_file() and (root / "tune").is_dir():
        return (f"`harness sweep {root.name} --resume --storage {root.parent}` rebuilds it "
                "from the sweep's own state")
    return "this folder holds no sweep state to rebuild it from; copy it again from where the sweep ran"


def _read_parquet(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    try:
        # Open once, then read from the handle: the sweep replaces the file atomically,
        # and a path-based read (stat, then open) can straddle a replace.
        with open(path, "rb") as f:
            df = pd.read_parquet(f)
    except Exception as e:  # pyarrow raises several types for a corrupt or truncated file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ResultsError(f"{path}: not a readable Parquet file ({reason}); {rebuild_advice(path)}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ResultsError(
            f"{path}: not a metric-harness {what} table (missing columns: {', '.join(missing)}); "
            "point the report at a directory written by `harness sweep`"
        )
    if df.empty:
        raise ResultsError(f"{path}: the {what} table has no rows; wait for a trial to finish")
    versions = sorted({int(v) for v in df[COL_SCHEMA_VERSION].dropna().unique()})
    if versions != [SCHEMA_VERSION]:
        raise ResultsError(
            f"{path}: schema_version {versions or 'missing'} is not supported "
            f"(this harness reads {SCHEMA_VERSION}); render it with the harness version that wrote it"
        )
    return df


def _whole_numbers(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """``df[column]`` as int64, or one line naming the first value that is not a whole number."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise ResultsError(
            f"{path}: column {column} holds {int(bad.sum())} value(s) that are not whole numbers "
            f"(row {i}: {df[column].iloc[i]!r}); {rebuild_advice(path)}"
        )
    return values.astype("int64")


def _read_space(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        space = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); {rebuild_advice(path)}") from None
    if not isinstance(space, dict):
        raise ResultsError(f"{path}: expected a JSON object describing the search space")
    return space


def load_experiment(path: str | Path) -> ExperimentResults:
    """Read ``trials.parquet`` (required), ``epochs.parquet`` and ``space.json`` (optional)."""
    root = Path(path)
    if not root.is_dir():
        raise ResultsError(
            f"experiment directory not found: {root}; pass <storage>/<experiment>/ as written by `harness sweep`"
        )
    trials_path = root / TRIALS_FILE
    if not trials_path.is_file():
        raise ResultsError(
            f"{root}: no {TRIALS_FILE}; no trial has finished yet, or this is not an experiment directory"
        )
    trials = _read_parquet(trials_path, TRIAL_COLUMNS, "trials")
    for col in (COL_COMPARE_KEY, COL_COMPARE_VALUE, COL_SEED):
        if col not in trials.columns:
            trials[col] = None
    # Compare values are strings by contract; normalise so "64" and 64 group together.
    trials[COL_COMPARE_VALUE] = trials[COL_COMPARE_VALUE].map(lambda v: None if pd.isna(v) else str(v))
    trials[COL_METHOD] = trials[COL_METHOD].astype(str)

    epochs_path = root / EPOCHS_FILE
    epochs = None
    if epochs_path.is_file():
        try:
            epochs = _read_parquet(epochs_path, EPOCH_COLUMNS, "epochs")
        except ResultsError as e:
            # An epochs table that is still empty is normal early on; a foreign one is not.
            if "has no rows" not in str(e):
                raise
    if epochs is not None:
        epochs[COL_EPOCH] = _whole_numbers(epochs, COL_EPOCH, epochs_path)
    space = _read_space(root / SPACE_FILE)
    names = sorted(trials[COL_EXPERIMENT].astype(str).unique())
    name = names[0] if len(names) == 1 else (space or {}).get("experiment") or root.name
    return ExperimentResults(name=str(name), path=root, trials=trials, epochs=epochs, space=space)


def load_experiments(paths: list[str | Path]) -> list[ExperimentResults]:
    if not paths:
        raise ResultsError("no experiment directory given; pass at least one <storage>/<experiment>/")
    experiments = [load_experiment(p) for p in paths]
    seen: dict[str, Path] = {}
    for exp in experiments:
        if exp.name in seen:
            raise ResultsError(
                f"experiment '{exp.name}' given twice ({seen[exp.name]} and {exp.path}); pass each once"
            )
        seen[exp.name] = exp.path
    return experiments
