"""A folder of images, a CSV table and a Parquet table each train and sweep end to end.

Real run_training on tiny PNGs the test writes; the sweep's report shows the retrieval
pictures of the best reproduction (PNG files beside report.md, embedded in report.html).
"""

from __future__ import annotations

import base64
import shutil

import pandas as pd
import pytest
import yaml

from fixtures.configs import tiny_config
from fixtures.user_data import make_folder, make_table
from harness.sweep.runner import prepare_sweep, run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def experiment(name: str, root: str) -> dict:
    return {
        "description": f"own data: {name}",
        "base": tiny_config(seed=0, data={"name": name, "root": root}),
        "search": {"trials": 2, "metric": "val.recall@1", "mode": "max",
                   "compare": {"key": "memory.kind", "values": ["none"]},
                   "space": {"optim.lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}},
                   "reproduction_seeds": [1], "resources": {"cpus": 1, "gpus": 0}},
    }  # fmt: skip


def data_root(kind: str, tmp_path):
    if kind == "folder":
        return "folder", str(make_folder(tmp_path / "images", classes=10, per_class=6))
    fmt = "csv" if kind == "csv" else "parquet"
    return "table", str(make_table(tmp_path, fmt, classes=10, per_class=6, protocol="query-gallery"))


@pytest.mark.parametrize("kind", ["folder", "csv", "parquet"])
def test_own_data_trains_and_sweeps_with_retrieval_pictures(results_storage, kind, ray_session, tmp_path,
                                                            harness_cli):
    name, root = data_root(kind, tmp_path)
    code, out, err = harness_cli(["data", "check", name, "--root", root])
    assert code == 0, out + err

    path = tmp_path / f"own-{kind}.yaml"
    path.write_text(yaml.safe_dump(experiment(name, root)))
    plan = prepare_sweep(str(path), storage=str(results_storage))
    outcome = run_sweep(plan)
    trials = pd.read_parquet(results_storage / f"own-{kind}" / "trials.parquet")
    assert sorted(trials.phase) == ["reproduction", "search", "search"]
    assert set(trials.status) == {"completed"}
    repro = trials[trials.phase == "reproduction"].iloc[0]
    assert 0.0 <= repro["test.recall@1"] <= 1.0 and repro["config.data.name"] == name

    report = results_storage / f"own-{kind}" / "report"
    md = (report / "report.md").read_text()
    assert "## Retrievals" in md and repro["trial_id"] in md
    pngs = sorted((report / "retrievals").glob("*.png"))
    assert len(pngs) >= 3 and any("worst" in p.name for p in pngs) and any("typical" in p.name for p in pngs)
    for p in pngs:
        assert f"(retrievals/{p.name})" in md
    html = (report / "report.html").read_text()
    assert base64.b64encode(pngs[0].read_bytes()).decode("ascii") in html
    assert outcome.reproductions == 1

    # the results stand without Tune's folder (the README's `--exclude "tune/*"` sync)
    copy = tmp_path / "synced" / f"own-{kind}"
    shutil.copytree(results_storage / f"own-{kind}", copy, ignore=shutil.ignore_patterns("tune", "report"))
    assert (copy / "retrievals" / repro["trial_id"] / "retrievals.npz").is_file()
    code, out, err = harness_cli(["report", str(copy)])
    assert code == 0, out + err
    copied = sorted(p.name for p in (copy / "report" / "retrievals").glob("*.png"))
    assert copied == [p.name for p in pngs]
