"""Data-parallel runs that end together, on gloo CPU ranks.

- ``harness train`` with ``train.workers: 2`` and ``data.workers: 2``: the spawned ranks
  start their DataLoader workers, and the run equals the 1-worker run as
  tests/core/test_distributed.py defines it (weights, memory, loss).
- A rank killed mid-epoch ends the run in seconds with one line naming it.
- A fault on rank 0 only (a non-finite loss, a divergence or an error found by its
  evaluation) ends every rank in seconds, each with the same outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from fixtures.configs import tiny_config
from fixtures.data_parallel import run_training_ranks
from fixtures.processes import session_pids
from harness.config import build_config
from harness.core.checkpoint import load_checkpoint

LOSS_TOL = dict(rel=1e-4, abs=1e-5)
MEMORY_TOL = dict(rtol=1e-5, atol=1e-5)
WEIGHT_TOL = dict(rtol=1e-4, atol=5e-4)  # test_distributed.py's bound after 3 AdamW steps


def _run_config(tmp_path: Path, workers: int, **train) -> Path:
    cfg = tmp_path / f"dp{workers}.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(
        seed=3,
        data={"val_fraction": 0.0, "workers": 2},
        memory={"kind": "axbn", "size": 40, "kalman": {"r": 0.5}},
        optim={"lr": 1e-2},
        train={"epochs": 1, "iters_per_epoch": 3, "workers": workers, "device": "cpu",
               "probe_size": 0, **train})))
    return cfg


@pytest.mark.slow
def test_harness_train_two_ranks_with_loader_workers_equals_one_process(tmp_path, harness_cli):
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"run{workers}"
        code, stdout, err = harness_cli(["train", str(_run_config(tmp_path, workers)), "--out", str(out)])
        assert code == 0, err
        assert json.loads(stdout.strip().splitlines()[-1])["status"] == "completed"
        runs[workers] = (load_checkpoint(out / "checkpoints" / "last.pt"),
                         json.loads((out / "epochs.jsonl").read_text().splitlines()[0]))
    (one, one_epoch), (two, two_epoch) = runs[1], runs[2]
    assert two["workers"] == 2
    assert two_epoch["loss"] == pytest.approx(one_epoch["loss"], **LOSS_TOL)
    for key, ref in one["model"].items():
        torch.testing.assert_close(two["model"][key].float(), ref.float(), **WEIGHT_TOL, msg=key)
    for key, ref in one["memory"].items():
        if isinstance(ref, torch.Tensor):
            if ref.dtype.is_floating_point:
                torch.testing.assert_close(two["memory"][key], ref, **MEMORY_TOL, msg=key)
            else:
                assert torch.equal(two["memory"][key], ref), key


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(c) for c in path.read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_ends_the_run_in_seconds_with_its_reason(tmp_path):
    """SIGKILL rank 1 while it trains (its loader workers running): `harness train` exits
    2 within seconds, its last line naming rank 1 and the signal."""
    cfg = _run_config(tmp_path, 2, iters_per_epoch=100_000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from harness.cli import main; main()", "train", str(cfg),
         "--out", str(tmp_path / "run")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines: list[tuple[float, str]] = []  # (when, line) of stderr
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), ln) for ln in proc.stderr),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        rank1 = None
        while time.monotonic() < deadline and proc.poll() is None:
            ranks = sorted(c for c in _children(proc.pid) if "spawn_main" in _cmdline(c))
            # spawned in rank order; rank 1 trains once its 2 loader workers run
            if len(ranks) == 2 and len(_children(ranks[1])) >= 2:
                rank1 = ranks[1]
                break
            time.sleep(0.5)
        assert rank1 is not None, f"rank 1 never started its loader workers: {proc.poll()}"
        time.sleep(3)  # mid-epoch
        assert proc.poll() is None
        os.kill(rank1, signal.SIGKILL)
        killed = time.monotonic()
        # (exiting takes its own time on a loaded machine: the supervisor's last line is the end)
        proc.wait(timeout=180)
    finally:
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    reader.join(30)
    assert proc.returncode == 2
    when, last = lines[-1]
    assert "rank 1 was killed by SIGKILL" in last and "resumes" in last, "".join(ln for _, ln in lines[-30:])
    assert when - killed < 30, when - killed


@pytest.mark.slow
def test_a_fault_on_rank_0_only_ends_every_rank_in_seconds():
    """No rank is left waiting for rank 0: a NaN loss on rank 0 alone (the flag rides in the
    gradient all-reduce) and a divergence or an error found by rank 0's evaluation (the
    end-of-epoch outcome all-reduce) end both ranks together, not at a timeout."""
    config = build_config(tiny_config(
        data={"val_fraction": 0.4},
        train={"epochs": 2, "iters_per_epoch": 3, "workers": 2, "device": "cpu", "probe_size": 8}))
    faults = ["nan_loss", "eval_diverged", "eval_error"]
    t0 = time.monotonic()
    rank0, rank1 = run_training_ranks(2, [(config, f) for f in faults], timeout=200)
    took = time.monotonic() - t0
    assert len(rank0) == len(rank1) == 3, (rank0, rank1)
    nan, diverged, failed = zip(rank0, rank1)
    # the loss is NaN from rank 0's second step: both stop in epoch 1
    assert [r.get("status") for r in nan] == ["diverged"] * 2 and [r["epochs_run"] for r in nan] == [0, 0]
    # rank 0's evaluation of epoch 1 finds the divergence: rank 1 learns it
    assert [r.get("status") for r in diverged] == ["diverged"] * 2
    assert [r["epochs_run"] for r in diverged] == [0, 0]
    # rank 0's evaluation raises: rank 0 ends with its error, rank 1 with rank 0's failure
    assert failed[0].get("error") == "OSError", failed[0]
    assert failed[1].get("error") == "PeerFailedError", failed[1]
    assert all(r["seconds"] < 60 for r in rank0 + rank1), (rank0, rank1)
    assert took < 180
