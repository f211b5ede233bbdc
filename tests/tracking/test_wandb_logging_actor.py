"""The sweep's W&B logging actor ends only once W&B has written its run out.

Ray kills a trial's logging actor as soon as the actor's ``run`` returns. Ray's own actor
returns right after ``wandb.finish()``, while wandb-core (a child process of the actor)
may still hold the run's records unwritten: on a busy machine a whole offline run was
lost (a 7-byte ``run-*.wandb``). Here the actor the sweep's callback starts runs in a
process of its own, which exits at once after ``run`` returns, as ``ray.kill`` ends it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fixtures.tracker_stores import read_wandb_offline

ROOT = Path(__file__).resolve().parents[2]

ACTOR_RUN = """
import json, os, queue, sys
from ray.air.integrations.wandb import _QueueItem, _WandbLoggingActor
from fixtures.processes import child_pids
from harness.tracking.wandb_tracker import WandbTrialCallback

actor_cls = _WandbLoggingActor if sys.argv[2] == "ray" else WandbTrialCallback._logger_actor_cls
results = queue.Queue()
for epoch in (1, 2, 3):
    results.put((_QueueItem.RESULT, {"val.recall@1": 0.25 * epoch, "training_iteration": epoch}))
results.put((_QueueItem.END, None))
actor = actor_cls(sys.argv[1], results, [], [], project="exp", name="search-none-0", id="t0",
                  dir=sys.argv[1], mode="offline")
actor.run()
print(json.dumps(child_pids(os.getpid())), flush=True)
os._exit(0)  # what ray.kill does to the actor's process once run() returns
"""


def run_actor(folder: Path, which: str) -> list[int]:
    folder.mkdir()
    # as in a Ray worker: no W&B service of this test process to connect to
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", ACTOR_RUN, str(folder), which], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_sweep_s_logging_actor_returns_with_its_run_written_and_w_b_s_service_ended(tmp_path):
    assert run_actor(tmp_path / "ours", "ours") == []  # nothing left that a kill could cut short
    (run_dir,) = (tmp_path / "ours" / "wandb").glob("offline-run-*")
    run = read_wandb_offline(run_dir)
    assert run["name"] == "search-none-0" and run["project"] == "exp"
    steps = {int(h["_step"]): h["val.recall@1"] for h in run["history"] if "val.recall@1" in h}
    assert steps == {1: 0.25, 2: 0.5, 3: 0.75}


def test_ray_s_own_actor_returns_with_w_b_s_service_still_running(tmp_path):
    """What the harness's actor is for: Ray's returns while wandb-core still runs, so
    the kill that follows races it for the run's records."""
    assert run_actor(tmp_path / "ray", "ray") != []
