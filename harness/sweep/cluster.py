"""The Ray cluster a sweep runs on: check ``--address``, start or join Ray, count slots.

:func:`check_address` runs in planning (no Ray import); :func:`start_ray` and
:func:`trial_slots` import Ray inside, so that planning and the CLI's input checks
start fast.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ClusterError
from harness.sweep.internals import GCS_PROBE, autoscaler_config

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
        probe = subprocess.run([sys.executable, "-c", GCS_PROBE, _host_port(address)],
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


# Where `ray up` leaves the cluster's autoscaling config on the head node (cluster.yaml's
# head_start_ray_commands pass it to `ray start --autoscaling-config`); the sweep driver
# runs there (`ray exec cluster.yaml "harness sweep ... --address auto"`).
AUTOSCALING_CONFIG = Path("~/ray_bootstrap_config.yaml")

NodeGroup = tuple[dict[str, float], int]  # (resources of one node, most nodes of the type)


def node_groups_of(cluster_config: dict[str, Any]) -> tuple[list[NodeGroup], int | None]:
    """The node types of a `ray up` config (cluster.yaml) as (resources, max_workers), and
    the cluster's cap on worker nodes (``max_workers``; None: none)."""
    groups = []
    for node_type in (cluster_config.get("available_node_types") or {}).values():
        resources = {k: float(v) for k, v in (node_type.get("resources") or {}).items()}
        groups.append((resources, int(node_type.get("max_workers", 0))))
    cap = cluster_config.get("max_workers")
    return groups, None if cap is None else int(cap)


def _autoscaling_groups() -> tuple[list[NodeGroup], int | None] | None:
    """The connected cluster's node types at their configured maximum: as Ray's
    autoscaler reports them to the GCS (what Ray Train checks worker groups against), else
    from the autoscaling config on this head node; None for a cluster that does not
    autoscale (a local Ray, nodes joined by hand)."""
    try:
        config = autoscaler_config()
    except Exception:  # noqa: BLE001 - an older GCS without the key: fall back to the file
        config = None
    if config is not None and config.node_group_configs:
        groups = [({k: float(v) for k, v in g.resources.items()}, int(g.max_count))
                  for g in config.node_group_configs]
        return groups, None
    path = AUTOSCALING_CONFIG.expanduser()
    if not path.is_file():
        return None
    import yaml

    try:
        return node_groups_of(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        logging.getLogger(__name__).warning("%s unreadable (%s): trial slots from the nodes present", path, e)
        return None


def _fit(node: dict[str, float], need: dict[str, float]) -> int:
    """How many bundles ``need`` one node holds."""
    counts = [int(node.get(k, 0.0) // v) for k, v in need.items() if v > 0]
    return min(counts) if counts else 0


def slots_on_nodes(exp: Experiment, groups: list[NodeGroup], max_nodes: int | None = None) -> int:
    """Trials of ``exp`` that run at once on ``groups`` of nodes (resources, count; a
    count of -1: unbounded), at most ``max_nodes`` nodes in all: every trial's workers
    (one bundle each; a single-worker trial is one bundle) placed on whole nodes, the
    node types that hold the most bundles first."""
    r = exp.search.resources
    need = {"CPU": r.worker_cpus, "GPU": r.worker_gpus}
    fits = sorted(((_fit(node, need), count) for node, count in groups), reverse=True)
    left = max_nodes if max_nodes is not None and max_nodes >= 0 else None
    bundles = 0
    for fit, count in fits:
        if fit <= 0:
            continue
        if count < 0:
            count = left if left is not None else 10**6
        if left is not None:
            count = min(count, left)
            left -= count
        bundles += fit * count
    return bundles // r.workers


def trial_slots(exp: Experiment, max_concurrent: int | None) -> int:
    """How many trials of ``exp`` the started Ray cluster runs at once: ``--max-concurrent``
    when given; on an autoscaling cluster, what its node types hold at their configured
    maximum (after `ray up` only the head exists, so the nodes present would say 1);
    otherwise what the nodes present hold."""
    import ray  # only once Ray has started: see the module docstring

    if max_concurrent:
        return max_concurrent
    res = ray.cluster_resources()
    need = exp.search.resources
    by_cpu = int(res.get("CPU", 1) // need.trial_cpus)
    by_gpu = int(res.get("GPU", 0) // need.trial_gpus) if need.trial_gpus else by_cpu
    slots = min(by_cpu, by_gpu)
    autoscaling = _autoscaling_groups()
    if autoscaling is not None:
        slots = max(slots, slots_on_nodes(exp, *autoscaling))
    return max(1, slots)
