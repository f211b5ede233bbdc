"""The Ray cluster a sweep runs on: check ``--address``, start or join Ray, count slots.

:func:`check_address` runs in planning (no Ray import); :func:`start_ray` and
:func:`trial_slots` import Ray inside, so that planning and the CLI's input checks
start fast.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from harness.errors import ClusterError

if TYPE_CHECKING:
    from harness.sweep.experiment import Experiment

# Seconds to wait for a TCP connection to --address before giving up (Ray itself
# retries an unreachable GCS for minutes).
CONNECT_TIMEOUT_S = 10.0
# Seconds to wait for a Ray GCS's answer at --address (a port that accepts connections
# but is something else: Ray would retry it for minutes, printing raw warnings).
PROTOCOL_TIMEOUT_S = 10.0


def check_address(address: str) -> None:
    """Fail fast, with one line, when nothing answers at ``--address host:port``."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host:
        host, port = target, "6379"  # Ray's default GCS port
    try:
        port_number = int(port)
    except ValueError:
        raise ClusterError(f"--address {address}: expected host:port (or 'auto')") from None
    try:
        socket.create_connection((host.strip("[]"), port_number), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__.replace("Error", "").lower() or str(e)
        raise ClusterError(
            f"--address {address}: no Ray cluster answers there ({reason}); start one with "
            f"`ray start --head --port {port_number}` on {host}, or leave out --address for a "
            "local Ray"
        ) from None


def _host_port(address: str) -> str:
    target = address.split("://", 1)[-1].rstrip("/")
    return target if ":" in target.strip("[]") else f"{target}:6379"


# Ray's own GCS client, in a process of its own: it reads its connect timeouts from the
# environment once per process, and its C++ side logs raw warnings to stderr.
_GCS_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1])
except Exception as e:
    print("NO", (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
else:
    print("RAY")
"""


def check_ray_answers(address: str, timeout: float = PROTOCOL_TIMEOUT_S) -> None:
    """Fail fast, with one line, when what answers at ``--address`` is not a Ray GCS
    (Ray would retry it for minutes): Ray's own GCS client asks it for the cluster id,
    the first thing a joining driver asks, with short connect timeouts."""
    if address in ("auto", "local"):
        return
    import subprocess
    import sys

    env = {**os.environ, "RAY_py_gcs_connect_timeout_s": str(int(timeout)),
           "RAY_gcs_rpc_server_connect_timeout_s": str(max(1, int(timeout) // 3))}
    try:
        probe = subprocess.run([sys.executable, "-c", _GCS_PROBE, _host_port(address)],
                               capture_output=True, text=True, env=env, timeout=2 * timeout + 10)
        lines = probe.stdout.strip().splitlines()
        answer = lines[-1] if lines else f"the probe failed: {probe.stderr.strip().splitlines()[-1:]}"
    except subprocess.TimeoutExpired:
        answer = f"NO no answer in the Ray protocol within {2 * timeout + 10:.0f} s"
    if answer == "RAY" or "auth" in answer.lower():  # a GCS that wants a token is Ray
        return
    raise ClusterError(
        f"--address {address}: something answers there but it is not a Ray cluster's GCS "
        f"({answer.removeprefix('NO ')}); give the head node's GCS port (`ray start --head` "
        "prints it, default 6379), or 'auto' on a cluster node"
    )


def start_ray(address: str | None) -> bool:
    """Join ``address`` or start a local instance sized to this machine.

    Returns whether this call started Ray (and so should shut it down)."""
    import optuna  # Ray and Optuna: imported here for the start-up time of planning
    import ray

    # Quiet drivers: our own live view replaces Tune's console reporter.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray announces at every start that token authentication is on (its default since
    # 2.5x): a notice, not a problem of the sweep.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    # Tune's own notes on Ctrl-C name its Python API; the driver prints the command.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return False
    if address:
        check_address(address)
        check_ray_answers(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"--address {address}: cannot join the Ray cluster ({first})") from None
    else:
        # address="local": never join a cluster some `ray start` on this machine left behind
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False,
                 _node_ip_address="127.0.0.1", logging_level="WARNING")
    return True


def trial_slots(exp: Experiment, max_concurrent: int | None) -> int:
    """How many trials of ``exp`` the started Ray cluster runs at once."""
    import ray  # only once Ray has started: see the module docstring

    res = ray.cluster_resources()
    need = exp.search.resources
    by_cpu = int(res.get("CPU", 1) // need.trial_cpus)
    by_gpu = int(res.get("GPU", 0) // need.trial_gpus) if need.trial_gpus else by_cpu
    slots = max(1, min(by_cpu, by_gpu))
    return min(slots, max_concurrent) if max_concurrent else slots
