"""Sweep overhead: N identical short trials through `harness sweep`'s machinery on a local
Ray instance (K parallel slots), against the same trials run one after another as plain
``harness train`` calls (the baseline, measured in the same run).

Printed: the sweep's wall time (Ray start-up included) against the ideal, i.e. the sum of
the trials' own times divided by the slots; overhead = wall / ideal - 1. Target: < 10% at
2 slots with trials of about a minute (Ray start-up is a fixed cost: short trials cannot
amortise it).

    python benchmarks/sweep_overhead.py --trials 4 --trial-seconds 60 --slots 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def trial_base(iters: int, epochs: int) -> dict:
    return {
        "seed": 0,
        "data": {"name": "digits", "image_size": 32, "val_fraction": 0.4},
        "model": {"backbone": "tiny_cnn_small", "embedding_size": 32},
        "memory": {"kind": "xbm", "size": 256},
        "optim": {"lr": 0.001},
        "train": {"epochs": epochs, "batch_size": 32, "samples_per_class": 4,
                  "iters_per_epoch": iters, "probe_size": 16, "eval_untrained": False},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="N trials (all with the same config)")
    ap.add_argument("--trial-seconds", type=float, default=60.0, help="target length of one trial")
    ap.add_argument("--iters", type=int, default=100, help="iterations per epoch")
    ap.add_argument("--slots", type=int, default=2, help="parallel trials (Ray CPUs, 1 CPU each)")
    args = ap.parse_args()

    import torch

    from harness.config import build_config
    from harness.core.train import run_training

    torch.set_num_threads(1)  # each sweep trial gets 1 CPU: same for the baseline
    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))

    # Calibrate the number of epochs (of --iters iterations) so one trial lasts about
    # --trial-seconds: a 2-epoch run gives the per-epoch time and the fixed costs.
    iters = args.iters
    t0 = time.perf_counter()
    cal = work / "calibrate"
    run_training(build_config(trial_base(iters, 2)), cal, resume=False)
    total = time.perf_counter() - t0
    per_epoch = json.loads((cal / "epochs.jsonl").read_text().splitlines()[-1])["epoch_seconds"]
    fixed = max(0.0, total - 2 * per_epoch)
    epochs = max(1, round((args.trial_seconds - fixed) / per_epoch))
    base = trial_base(iters, epochs)

    # Baseline: the same trials one after another as plain `harness train` calls, each
    # with the CPU share a sweep trial gets (1 thread); a trial's own time is its call's
    # wall time, process start-up included.
    cfg_path = work / "trial.yaml"
    cfg_path.write_text(yaml.safe_dump(base))
    harness = Path(sys.executable).with_name("harness")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    own = []
    for i in range(args.trials):
        t = time.perf_counter()
        subprocess.run([str(harness), "train", str(cfg_path), "--out", str(work / f"baseline-{i}"),
                        "--no-resume"], check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        own.append(time.perf_counter() - t)

    # The sweep: search phase only (one value, a one-point space, N trials), Ray start-up
    # included in the wall time.
    exp_doc = {
        "description": "sweep overhead benchmark",
        "base": base,
        "search": {"algorithm": "random", "trials": args.trials,
                   "space": {"optim.lr": {"type": "categorical", "choices": [0.001]}},
                   "reproduction_seeds": [0], "resources": {"cpus": 1, "gpus": 0}},
    }  # fmt: skip
    exp_path = work / "overhead.yaml"
    exp_path.write_text(yaml.safe_dump(exp_doc))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # as `harness sweep`: no Tune console box
    import ray

    from harness.results.contract import SPACE_FILE
    from harness.sweep import runner
    from harness.sweep.space import space_description

    plan = runner.prepare_sweep(str(exp_path), storage=str(work / "results"))
    plan.store.write_json(SPACE_FILE, space_description(plan.experiment))
    t = time.perf_counter()
    ray.init(address="local", num_cpus=args.slots, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", logging_level="ERROR")
    try:
        runner.run_search(plan, None, None)
    finally:
        ray.shutdown()
    sweep_wall = time.perf_counter() - t
    trials = plan.store.trials()
    sweep_own = trials["wall_seconds"].tolist()

    ideal_base = sum(own) / args.slots
    ideal_sweep = sum(sweep_own) / args.slots
    print(f"\nsweep overhead: {args.trials} trials x {epochs} epochs x {iters} iters, "
          f"{args.slots} slots, 1 CPU per trial (baseline: sequential `harness train` calls)")
    print(f"| {'measure':<52} | {'seconds':>8} |")
    print(f"|{'-' * 54}|{'-' * 10}|")
    rows = [
        ("baseline: mean `harness train` call (sequential)", sum(own) / len(own)),
        ("sweep: mean trial time (trial's own wall_seconds)", sum(sweep_own) / len(sweep_own)),
        ("ideal A: sum(baseline trials) / slots", ideal_base),
        ("ideal B: sum(sweep trials' own times) / slots", ideal_sweep),
        ("sweep wall time (incl. Ray start-up)", sweep_wall),
    ]
    for name, v in rows:
        print(f"| {name:<52} | {v:8.1f} |")
    print(f"overhead vs ideal A: {100 * (sweep_wall / ideal_base - 1):+.1f}%   "
          f"overhead vs ideal B: {100 * (sweep_wall / ideal_sweep - 1):+.1f}%   "
          f"(target < 10%)")


if __name__ == "__main__":
    main()
