"""What every sweep trial does before and after training, single- or multi-worker.

:func:`trial_run_config` turns a trial's ``spec`` (its dotted overrides and seed) into
the run config; :func:`run_folder` gives the trial its local run folder, restored from
the trial's last checkpoint when it restarts, and removes it afterwards;
:func:`seal_checkpoint` lists a checkpoint's files before Tune copies it, so that
:func:`is_complete_checkpoint` can tell a whole copy from one cut short by a kill. Used
by :mod:`harness.trainables.retrieval` (one worker) and :mod:`harness.trainables.distributed` (every
rank).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from harness.config import RunConfig, build_config
from harness.results.contract import EPOCH_LOG
from harness.results.trial_spec import TrialSpec, run_overrides

# A checkpoint's own list of its files and their sizes (written last into the folder
# that Tune then copies): a copy is whole when every listed file is there at its size.
CHECKPOINT_MANIFEST = "checkpoint_files.json"


def trial_run_config(base: dict[str, Any] | None, spec: TrialSpec,
                     **overrides: Any) -> RunConfig:
    """The trial's run config: ``base`` with the spec's overrides, its seed, and
    ``overrides`` (dotted keys given as keyword values, e.g. ``{"train.workers": 2}``)."""
    values = {**run_overrides(spec), **overrides}
    return build_config(base or {}, values, source=f"trial {spec.get('phase')}")


@contextmanager
def run_folder(name: str, checkpoint: Any | None) -> Iterator[Path]:
    """A fresh local run folder for this process, holding ``checkpoint`` (a Tune or Ray
    Train checkpoint) when the trial restarts; removed when the trial ends.

    It lives outside the trial folder: Tune syncs a driver-node trial folder with the
    experiment state, which would copy the checkpoints twice (and race with their
    writes). Tune checkpoints are the run's only persistent copy.
    """
    out_dir = Path(tempfile.gettempdir()) / "harness-trials" / f"{name}-{os.getpid()}"
    shutil.rmtree(out_dir, ignore_errors=True)
    if checkpoint is not None:  # a restart (lost worker, resumed sweep): from the last epoch
        checkpoint.to_directory(str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield out_dir
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def read_epochs(out_dir: Path) -> list[dict[str, Any]]:
    """The core's ``epochs.jsonl``, one row per epoch (the last record of an epoch wins:
    a resumed run may rewrite the epoch it was interrupted in)."""
    path = out_dir / EPOCH_LOG
    rows: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if "epoch" in rec:
                    rows[int(rec["epoch"])] = rec
    return [rows[k] for k in sorted(rows)]


def seal_checkpoint(folder: Path) -> Path:
    """Write ``folder``'s manifest (each file's relative path and size) and return the
    folder: what the trial reports to Tune as its checkpoint."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != CHECKPOINT_MANIFEST}
    (folder / CHECKPOINT_MANIFEST).write_text(json.dumps(files))
    return folder


def is_complete_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` (a copied checkpoint) holds every file its manifest lists, each
    at its listed size; False for a folder without one or with an unreadable one."""
    try:
        files = json.loads((folder / CHECKPOINT_MANIFEST).read_text())
        return isinstance(files, dict) and all(
            (folder / name).is_file() and (folder / name).stat().st_size == size
            for name, size in files.items())
    except (OSError, ValueError):
        return False
