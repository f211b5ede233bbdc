"""`harness sweep` bad input: one line on stderr, exit 2, before Ray starts, nothing overwritten;
`harness list` shows the shipped experiments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

HARNESS = [sys.executable, "-c", "from harness.cli import main; main()"]


def harness(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def tiny_experiment(tmp_path, name="tiny", **search):
    doc = {"base": {"data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"}},
           "search": {"trials": 2, "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
                      **search}}  # fmt: skip
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(proc, pattern):
    import re

    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "ray" not in proc.stderr.lower().replace("array", "")  # Ray never started


def test_list_shows_experiments():
    proc = harness("list")
    assert proc.returncode == 0, proc.stderr
    for name in ("demo", "sop-axbn", "sop-memory-grid", "cub-xml", "deepfashion2-axbn"):
        assert name in proc.stdout
    assert "none, xbm, xbm+batch, xbn, axbn, none+xml" in proc.stdout


def test_bad_inputs_fail_fast_and_touch_nothing(results_storage, tmp_path):
    storage = results_storage
    # an existing sweep's files, which no failing call may change
    (storage / "tiny").mkdir(parents=True)
    (storage / "tiny" / "sweep.json").write_text('{"experiment": {}}')
    (storage / "tiny" / "trials.parquet").write_bytes(b"precious")
    before = snapshot(storage)
    good = tiny_experiment(tmp_path)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("base:\n  data: [digits\nsearch: {}\n")
    cases = [
        (["sweep", "nope", "--storage", str(storage)], r"unknown experiment 'nope'; known: .*demo"),
        (["sweep", str(bad_yaml), "--storage", str(storage)], r"malformed YAML at .*bad\.yaml:\d+"),
        (["sweep", str(tiny_experiment(tmp_path, "typo", space={"optim.lrr": {"type": "float", "low": 0.1, "high": 1}})),
          "--storage", str(storage)], r"search\.space\.optim\.lrr: the run config has no key"),
        (["sweep", str(tiny_experiment(tmp_path, "inverted", space={"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}})),
          "--storage", str(storage)], r"empty or inverted range"),
        (["sweep", "demo", "--resume", "--storage", str(storage)], r"--resume: no sweep 'demo'"),
        (["sweep", str(good), "--storage", str(storage)], r"results of 'tiny' already exist"),
        (["sweep", str(good), "--set", "train.epocs=2", "--storage", str(storage)], r"train\.epocs: unknown key"),
    ]  # fmt: skip
    for args, pattern in cases:
        assert_one_line_error(harness(*args), pattern)
    assert snapshot(storage) == before


def test_unwritable_storage_is_rejected(tmp_path):
    # /proc refuses new files even to root
    proc = harness("sweep", str(tiny_experiment(tmp_path)), "--storage", "/proc/harness-results")
    assert_one_line_error(proc, r"--storage /proc/harness-results: /proc is not writable")
    file_storage = tmp_path / "afile"
    file_storage.write_text("x")
    proc = harness("sweep", str(tiny_experiment(tmp_path)), "--storage", str(file_storage))
    assert_one_line_error(proc, r"is a file, not a folder")
