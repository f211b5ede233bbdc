"""cluster.yaml against Ray's own autoscaler schema (offline), and a real two-node Ray
cluster on loopback addresses running a short sweep through `--address`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from fixtures.processes import session_pids, wait_until

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
HARNESS = [sys.executable, "-c", "from harness.cli import main; main()"]


def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_ray_schema():
    config = cluster_config()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # as written
    validate_config(prepare_config(config))  # after Ray fills in its defaults, as `ray up` does
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["max_workers"] > gpu[0]["min_workers"]  # autoscaling GPU workers


def test_ssh_is_restricted_to_one_documented_cidr():
    perms = cluster_config()["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    cidrs = [r["CidrIp"] for p in perms for r in p["IpRanges"]]
    assert cidrs and "0.0.0.0/0" not in cidrs and all(c.endswith("/32") for c in cidrs)
    assert "CidrIp" in (ROOT / "docs" / "cluster.md").read_text()
    assert any("pip install" in c and "metric-harness" in c for c in cluster_config()["setup_commands"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    # Ray's workers start process groups of their own inside our session: end them too.
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


TINY = """\
description: two-node test
base:
  data: {name: digits, image_size: 16, val_fraction: 0.4}
  model: {backbone: tiny_cnn_small, embedding_size: 16}
  train: {epochs: 2, batch_size: 16, samples_per_class: 4, iters_per_epoch: 3, probe_size: 8,
          eval_untrained: false}
search:
  algorithm: random
  trials: 2
  space:
    optim.lr: {type: float, low: 0.0003, high: 0.003, log: true}
  reproduction_seeds: [1, 2]
  resources: {cpus: 1}
"""


@pytest.mark.slow
@pytest.mark.cluster
def test_sweep_on_a_two_node_loopback_cluster(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    common = ["--num-cpus=1", "--include-dashboard=false", "--block", "--disable-usage-stats"]
    # (no --temp-dir under tmp_path: its socket paths would pass the 107-byte limit)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.2", f"--port={port}", *common,
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    nodes = [head]
    try:
        wait_until(lambda: listening("127.0.0.2", port), head, "the head's GCS listening", limit_s=120)
        nodes.append(subprocess.Popen(
            [RAY, "start", f"--address=127.0.0.2:{port}", "--node-ip-address=127.0.0.3", "--num-cpus=1",
             "--block", "--disable-usage-stats"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))
        exp = tmp_path / "two.yaml"
        exp.write_text(TINY)
        # wait for both nodes, then sweep through the cluster
        probe = ("import ray, time; ray.init(address='127.0.0.2:%d', logging_level='ERROR');"
                 "t=time.time()\nwhile len([n for n in ray.nodes() if n['Alive']])<2 and time.time()-t<60: time.sleep(1)\n"
                 "print(len([n for n in ray.nodes() if n['Alive']]), ray.cluster_resources().get('CPU'))") % port
        alive = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
        assert alive.stdout.split()[:2] == ["2", "2.0"], alive.stdout + alive.stderr[-2000:]
        done = subprocess.run(
            [*HARNESS, "sweep", str(exp), "--address", f"127.0.0.2:{port}", "--storage", str(tmp_path / "res")],
            capture_output=True, text=True, env=env, timeout=400,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        trials = pd.read_parquet(tmp_path / "res" / "two" / "trials.parquet")
        assert len(trials) == 4 and trials.trial_id.is_unique and set(trials.status) == {"completed"}
        assert sorted(trials.phase) == ["reproduction"] * 2 + ["search"] * 2
    finally:
        for node in reversed(nodes):
            kill_group(node)
