"""How many trials a sweep runs at once on a cluster (an autoscaling one included).

After `ray up cluster.yaml` only the head node exists (no CPU for trials), so slots
counted from the resources present were 1 for the whole sweep, and a data-parallel
sweep ran one trial at a time however far the cluster could scale. Slots come from
the cluster's configured maximum: its node types at their max_workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.sweep import cluster
from harness.sweep.cluster import node_groups_of, slots_on_nodes, trial_slots
from harness.sweep.experiment import Experiment

ROOT = Path(__file__).resolve().parents[2]
SINGLE_GPU = {"cpus": 8, "gpus": 1}                                   # the shipped GPU experiments
FOUR_GPU = {"workers": 4, "gpus_per_worker": 1, "cpus_per_worker": 12}  # docs/cluster.md's data-parallel trial


def experiment(resources: dict) -> Experiment:
    return Experiment(name="slots", search={"resources": resources})


def test_cluster_yaml_at_its_maximum_holds_two_data_parallel_trials_and_fourteen_single_gpu_ones():
    groups, cap = node_groups_of(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    assert cap == 8
    # 2 gpu4_worker nodes (4 x A10G, 48 vCPUs) hold one 4-worker trial each; a g5.2xlarge
    # (8 vCPUs) holds no worker of 12 CPUs
    assert slots_on_nodes(experiment(FOUR_GPU), groups, cap) == 2
    # 8 worker nodes at most: both 4-GPU nodes (4 trials each), then 6 single-GPU nodes
    assert slots_on_nodes(experiment(SINGLE_GPU), groups, cap) == 2 * 4 + 6


def test_node_counts_and_the_node_cap():
    node = {"CPU": 16.0, "GPU": 2.0}
    exp = experiment({"workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 4})
    assert slots_on_nodes(exp, [(node, 3)]) == 3          # one 2-worker trial per node
    assert slots_on_nodes(exp, [(node, 3)], max_nodes=1) == 1
    assert slots_on_nodes(exp, [(node, -1)], max_nodes=5) == 5  # -1: as many as the cap allows
    assert slots_on_nodes(exp, [({"CPU": 16.0}, 4)]) == 0        # no GPU: no worker fits


@pytest.mark.slow
def test_trial_slots_of_an_autoscaling_cluster_come_from_its_maximum(ray_session, tmp_path, monkeypatch):
    """On a Ray whose nodes hold no 4-GPU trial (this machine's local Ray), the
    autoscaling config on the head says 2 at once; without one, the nodes present say 1;
    --max-concurrent wins either way."""
    exp = experiment(FOUR_GPU)
    monkeypatch.setattr(cluster, "AUTOSCALING_CONFIG", tmp_path / "absent.yaml")
    assert trial_slots(exp, None) == 1
    assert trial_slots(exp, 3) == 3
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text((ROOT / "cluster.yaml").read_text())
    monkeypatch.setattr(cluster, "AUTOSCALING_CONFIG", bootstrap)
    assert trial_slots(exp, None) == 2
    assert trial_slots(experiment(SINGLE_GPU), None) == 14
    assert trial_slots(exp, 3) == 3
