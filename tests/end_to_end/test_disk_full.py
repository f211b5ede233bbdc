"""A sweep whose --storage fills up: a real 2 MB tmpfs, real Ray, real Tune.

Trials train with a fake whose checkpoint is 400 KB (tests/fixtures/fake_sweep_driver.py:
the real CLI, only run_training replaced), so the disk fills after a few of the 6 planned
trials. Before: every trial failed with ``OSError: [Errno 28]``, Tune retried each into the
same full disk, and the driver exited 1 after hundreds of lines of tracebacks. Now: the
first full-disk error stops the whole sweep with one line (the path, its free space, what
the sweep still needs, the command that continues it), the tables stay readable, and
``--resume`` after enlarging the disk, or on a ``cp -a`` copy, finishes every planned trial
exactly once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures.configs import tiny_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DRIVER = [sys.executable, str(ROOT / "tests" / "fixtures" / "fake_sweep_driver.py"), "400000"]
EXPERIMENT = {
    "description": "a sweep bigger than its disk",
    "base": tiny_config(train={"batch_size": 8}),  # 2 classes of 4: digits trains on 3
    "search": {
        "trials": 4,
        "compare": {"key": "memory.kind", "values": ["none", "xbm"]},
        "space": {"optim.lr": {"type": "float", "low": 0.0003, "high": 0.003, "log": True}},
        "reproduction_seeds": [1],
        "resources": {"cpus": 1},
        "max_failures": 3,
    },
}  # fmt: skip
PLANNED = {"search": 4, "reproduction": 2}


def sweep(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*DRIVER, "sweep", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600, start_new_session=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk (root only), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def error_lines(stderr: str) -> list[str]:
    """stderr's lines but the live view's (a table of counts that rich redraws there)."""
    return [ln for ln in stderr.splitlines()
            if re.search(r"error|Error|Errno|No space|Traceback|warning", ln)]


def test_full_storage_stops_at_once_with_one_line_and_resumes_every_trial_once(small_disk, tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    full = sweep(tmp_path / "tiny.yaml", "--storage", small_disk, "--max-concurrent", 1, cwd=tmp_path)

    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    got = error_lines(full.stderr)
    assert len(got) == 1, full.stderr[-3000:]
    line = got[0]
    assert full.stderr.rstrip().splitlines()[-1] == line
    experiment = small_disk / "tiny"
    m = re.fullmatch(
        rf"error: disk full: {re.escape(str(experiment))}\S* has (\d[\d.]*) (B|KB) free; the sweep "
        r"stopped and still needs about (\d[\d.]*) (KB|MB) for its (\d) trials left \(\d[\d.]* KB per "
        r"finished trial folder\); .* continue with `harness sweep tiny --resume --storage "
        + re.escape(str(small_disk)) + r"`, or copy \S+ to a larger disk \(`cp -a \S+ NEW`\) and "
        r"continue with --storage NEW", line)
    assert m, line
    left = int(m.group(5))
    assert 1 <= left < sum(PLANNED.values())

    # what was written stays readable: the trials that finished before the disk filled
    before = pd.read_parquet(experiment / "trials.parquet")
    assert 1 <= len(before) == sum(PLANNED.values()) - left
    assert set(before.status) == {"completed"}
    assert not pd.read_parquet(experiment / "epochs.parquet").empty
    # no retries into the full disk: the trial that met it was not tried again
    restarted = [p for p in experiment.glob("tune/*/*/error.txt") if "Failure # 2" in p.read_text()]
    assert not restarted

    # a copy elsewhere (cp -a) resumes there, before the full disk is enlarged
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(small_disk), str(copy)], check=True)
    from_copy = sweep("tiny", "--resume", "--storage", copy, cwd=tmp_path)

    # the same storage, once its disk has room, resumes in place
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    in_place = sweep("tiny", "--resume", "--storage", small_disk, cwd=tmp_path)

    # nothing of the copy names the full disk's path (Tune's saved state re-pointed)
    old = str(small_disk).encode()
    assert not [str(p) for p in copy.rglob("*")
                if p.is_file() and re.search(re.escape(old) + rb"(?![\w.-])", p.read_bytes())]

    for done, storage in ((from_copy, copy), (in_place, small_disk)):
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and not error_lines(done.stderr), done.stderr[-3000:]
        trials = pd.read_parquet(storage / "tiny" / "trials.parquet")
        assert trials.trial_id.is_unique and set(trials.status) == {"completed"}
        assert trials.phase.value_counts().to_dict() == PLANNED
        after = trials.set_index("trial_id")
        for _, row in before.iterrows():  # finished before the disk filled: kept, not rerun
            assert after.loc[row.trial_id, "started_at"] == row.started_at
            assert after.loc[row.trial_id, "finished_at"] == row.finished_at
