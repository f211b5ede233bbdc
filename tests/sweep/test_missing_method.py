"""No silent loss of a method: a compared value that ends the sweep without a completed
reproduction is named, with its first failure's reason, by `harness sweep` (exit 1) and at
the top of the report (harness/results/selection.py: values_without_reproduction)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures.configs import tiny_config
from harness.results.selection import MissingValue, values_without_reproduction

ROOT = Path(__file__).resolve().parents[2]
HARNESS = [sys.executable, "-c", "from harness.cli import main; main()"]


def row(trial_id, value, phase, status, started, error=None, metric=0.5):
    return {"trial_id": trial_id, "compare_value": value, "phase": phase, "status": status,
            "started_at": started, "error": error, "val.map@r": metric}


def test_values_without_reproduction_name_the_first_failure():
    trials = pd.DataFrame([
        row("s1", "none", "search", "completed", "2024-01-01T00:00:01"),
        row("r1", "none", "reproduction", "completed", "2024-01-01T00:01:00"),
        # xbn: two failures, the later one listed first in the table
        row("s3", "xbn", "search", "failed", "2024-01-01T00:00:09", "ValueError: later"),
        row("s2", "xbn", "search", "failed", "2024-01-01T00:00:02", "ConfigError: first"),
        # xbm: its search completed, but without an objective to select by
        row("s4", "xbm", "search", "completed", "2024-01-01T00:00:03", metric=math.nan),
        # axbn: reproductions ran and diverged, no error text
        row("s5", "axbn", "search", "completed", "2024-01-01T00:00:04"),
        row("r5", "axbn", "reproduction", "diverged", "2024-01-01T00:02:00"),
    ])
    missing = values_without_reproduction(trials, ["none", "xbn", "xbm", "axbn", "none+xml"], "val.map@r")
    assert missing == [
        MissingValue("xbn", "ConfigError: first"),
        MissingValue("xbm", "none of its 1 completed search trials has a value of val.map@r to select by"),
        MissingValue("axbn", "1 search trial: 1 completed; 1 reproduction trial: 1 diverged"),
        MissingValue("none+xml", "no trial recorded"),
    ]
    assert values_without_reproduction(trials, ["none"]) == []


@pytest.mark.slow
def test_a_method_that_never_completes_is_named_by_the_cli_and_the_report(tmp_path):
    """A real sweep where one compared value (an unknown miner: a ConfigError in the trial,
    which no check before the trials can see) fails every trial: exit 1, a line naming the
    value and the reason, the report's top says so; stderr carries no tensorboardX
    "NaN or Inf" noise from the failed trials' -inf objective."""
    doc = {"base": tiny_config(), "search": {
        "trials": 2, "metric": "val.recall@1", "mode": "max",
        "compare": {"key": "loss.miner", "values": ["PairMarginMiner", "NoSuchMiner"]},
        "space": {"optim.lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}},
        "reproduction_seeds": [1], "resources": {"cpus": 1}, "max_failures": 0}}
    path = tmp_path / "lossy.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*HARNESS, "sweep", str(path), "--storage", str(tmp_path / "r")], capture_output=True,
                          text=True, env=env, timeout=600, start_new_session=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2, proc.stderr[-3000:]
    assert errors[0].startswith("error: loss.miner=NoSuchMiner has no completed reproduction, so the comparison "
                                "lacks it: ConfigError: "), errors[0]
    assert "NoSuchMiner" in errors[0].split("lacks it:")[1]
    assert errors[1].startswith("error: 1 of 2 compared values missing (every reason: the error column of ")
    assert "NaN or Inf" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "PairMarginMiner" in proc.stdout  # the table of the value that completed

    trials = pd.read_parquet(tmp_path / "r" / "lossy" / "trials.parquet")
    ok = trials[trials.compare_value == "PairMarginMiner"]
    assert set(ok.status) == {"completed"} and (ok.phase == "reproduction").sum() == 1
    md = (tmp_path / "r" / "lossy" / "report" / "report.md").read_text()
    top = md.split("## Summary")[0]
    assert "Missing from the comparison: loss.miner=NoSuchMiner" in top
    assert "Missing from the comparison: loss.miner=PairMarginMiner" not in md
    html = (tmp_path / "r" / "lossy" / "report" / "report.html").read_text()
    assert "Missing from the comparison: loss.miner=NoSuchMiner" in html.split('id="summary"')[0]
