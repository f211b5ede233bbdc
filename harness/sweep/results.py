"""ResultsStore: ``trials.parquet``, ``epochs.parquet`` and ``space.json`` of one experiment.

The layout is the contract between sweeps and reports (docs/architecture.md, "Results
tables"). Every write replaces the whole file atomically (a temp file in the same
folder, then ``os.replace``), so pandas, pyarrow and DuckDB can read the tables at any
moment; rows are upserted by key, so each trial appears exactly once however often it
is written (a resumed sweep, a reconciliation pass, ``--reproduce-only``). The
read-modify-write of an upsert holds ``fcntl.flock`` on ``.tables.lock`` in the same
folder, so concurrent writers (processes or threads) never lose each other's rows.

Storage may be a local path or a URI pyarrow understands (``s3://bucket/prefix``); an
object store's single PUT is atomic, so URIs are written directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from harness.utils.atomic import atomic_write_bytes
from harness.errors import ResultsError

from harness.results.contract import (  # noqa: F401  (re-exported for the sweep modules)
    EPOCH_KEY,
    EPOCHS_FILE as EPOCHS,
    SCHEMA_VERSION,
    SPACE_FILE as SPACE,
    STATE_FILE as STATE,
    TRIAL_KEY,
    TRIALS_FILE as TRIALS,
)
TABLES_LOCK = ".tables.lock"


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return "/".join([location.rstrip("/"), *parts])
    return str(Path(location.removeprefix("file://")).expanduser().absolute().joinpath(*parts))


class ResultsStore:
    """The results folder ``<storage>/<experiment>/``."""

    def __init__(self, storage: str, experiment: str):
        self.storage = storage
        self.experiment = experiment
        self.root = join(storage, experiment)
        self._fs = None
        if is_uri(self.root):
            import pyarrow.fs  # URIs only: planning and local stores start without it

            self._fs, self._root_path = pyarrow.fs.FileSystem.from_uri(self.root)

    # ---- raw file access (local or URI) ----------------------------------------------

    @property
    def filesystem(self):
        """The pyarrow filesystem of a URI storage; None for a local one."""
        return self._fs

    def path(self, name: str) -> str:
        return join(self.root, name)

    def exists(self, name: str) -> bool:
        if self._fs is None:
            return Path(self.path(name)).exists()
        import pyarrow.fs  # URIs only, as above

        info = self._fs.get_file_info(f"{self._root_path}/{name}")
        return info.type != pyarrow.fs.FileType.NotFound

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` (a path relative to the experiment folder) atomically."""
        if self._fs is not None:
            parent = f"{self._root_path}/{name}".rsplit("/", 1)[0]
            self._fs.create_dir(parent, recursive=True)
            with self._fs.open_output_stream(f"{self._root_path}/{name}") as f:
                f.write(data)
            return
        atomic_write_bytes(Path(self.root) / name, data)

    def delete(self, name: str) -> None:
        if self._fs is not None:
            self._fs.delete_file(f"{self._root_path}/{name}")
        else:
            Path(self.path(name)).unlink()

    def rename(self, name: str, new: str) -> None:
        if self._fs is not None:
            self._fs.move(f"{self._root_path}/{name}", f"{self._root_path}/{new}")
        else:
            os.replace(self.path(name), self.path(new))

    def read_bytes(self, name: str) -> bytes:
        if self._fs is None:
            return Path(self.path(name)).read_bytes()
        with self._fs.open_input_stream(f"{self._root_path}/{name}") as f:
            return f.read()

    # ---- JSON documents ---------------------------------------------------------------

    def write_json(self, name: str, doc: dict[str, Any]) -> None:
        self.write_bytes(name, json.dumps(doc, indent=2, default=str).encode())

    def read_json(self, name: str) -> dict[str, Any]:
        if not self.exists(name):
            raise ResultsError(f"{self.path(name)} does not exist")
        try:
            return json.loads(self.read_bytes(name))
        except json.JSONDecodeError as e:
            raise ResultsError(f"{self.path(name)} is not valid JSON ({e.msg})") from None

    # ---- tables -----------------------------------------------------------------------

    def read_table(self, name: str) -> pd.DataFrame:
        if not self.exists(name):
            return pd.DataFrame()
        try:
            df = pd.read_parquet(io.BytesIO(self.read_bytes(name)))
        except Exception as e:  # pyarrow raises several types for a damaged file
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ResultsError(
                f"{self.path(name)} is not a readable Parquet file ({reason}); "
                f"`harness sweep {self.experiment} --resume --storage {self.storage}` rebuilds it"
            ) from None
        return df

    def trials(self) -> pd.DataFrame:
        return self.read_table(TRIALS)

    def epochs(self) -> pd.DataFrame:
        return self.read_table(EPOCHS)

    @contextlib.contextmanager
    def _tables_locked(self):
        """Exclusive access to the tables for one read-modify-write (local storage)."""
        if self._fs is not None:
            yield
            return
        folder = Path(self.root)
        folder.mkdir(parents=True, exist_ok=True)
        # Each call opens its own file description, so flock also orders threads.
        fd = os.open(folder / TABLES_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def upsert(self, name: str, rows: Iterable[dict[str, Any]], key: list[str]) -> pd.DataFrame:
        """Insert or replace rows by ``key`` and rewrite the table atomically."""
        new = pd.DataFrame([dict(r) for r in rows])
        if new.empty:
            return self.read_table(name)
        with self._tables_locked():
            return self._upsert_locked(name, new, key)

    def _upsert_locked(self, name: str, new: pd.DataFrame, key: list[str]) -> pd.DataFrame:
        old = self.read_table(name)
        if not old.empty:
            keys = set(map(tuple, new[key].astype(str).itertuples(index=False)))
            keep = ~old[key].astype(str).apply(tuple, axis=1).isin(keys)
            new = pd.concat([old[keep], new], ignore_index=True)
        table = _parquet_safe(new.drop_duplicates(subset=key, keep="last"))
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        self.write_bytes(name, buf.getvalue())
        return table

    def upsert_trials(self, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
        return self.upsert(TRIALS, rows, list(TRIAL_KEY))

    def upsert_epochs(self, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
        return self.upsert(EPOCHS, rows, list(EPOCH_KEY))


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Make object columns single-typed so Parquet (and DuckDB) accept them.

    Config values can be a bool in one trial and a string in another
    (``model.pretrained``), or a list (``eval.ks``): those become JSON strings.
    """
    df = df.reset_index(drop=True).copy()
    for col in df.columns:
        if df[col].dtype != object:
            continue
        kinds = {type(v) for v in df[col] if v is not None and not _is_nan(v)}
        if kinds <= {str} or kinds <= {int, float} or kinds <= {bool} or not kinds:
            continue
        df[col] = [
            None if v is None or _is_nan(v) else (v if isinstance(v, str) else json.dumps(v))
            for v in df[col]
        ]
    return df


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and v != v
