"""Optuna's search plots in the report: the rebuilt study, the figures, both formats."""

from __future__ import annotations

import json

import pandas as pd

from fixtures.report_tables import write_experiment
from reports import render_report
from reports.load import load_experiment
from reports.search_plots import search_figures, search_study


def test_rebuilt_study_holds_the_completed_search_trials(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74]}, failed_search=1))
    study = search_study(exp, "xbm")
    rows = exp.trials[(exp.trials.phase == "search") & (exp.trials.status == "completed")]
    assert len(study.trials) == len(rows) == 3
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    for row in rows.to_dict("records"):
        t = by_id[row["trial_id"]]
        assert t.value == row["val.recall@1"] and t.params["optim.lr"] == row["config.optim.lr"]
        assert t.params["train.samples_per_class"] == row["config.train.samples_per_class"]


def test_each_method_gets_parallel_slice_contour_and_importance_figures(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74], "axbn": [0.8, 0.81, 0.82]}))
    figures = search_figures(exp)
    names = sorted(f.name for f in figures)
    assert names == sorted(f"search-{k}-cmp-{m}" for k in ("parallel", "slice", "contour", "importance")
                           for m in ("xbm", "axbn"))
    for f in figures:
        assert f.svg.startswith(b"<?xml") and b"<svg" in f.svg and len(f.svg) > 5000
    svg = {f.name: f.svg for f in figures}
    assert svg["search-parallel-cmp-xbm"] != svg["search-parallel-cmp-axbn"]  # each method its own data


def test_one_parameter_has_no_contour_and_one_trial_no_plots(tmp_path):
    root = write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74]})
    space = json.loads((root / "space.json").read_text())
    space["params"] = {"optim.lr": space["params"]["optim.lr"]}
    (root / "space.json").write_text(json.dumps(space))
    kinds = sorted(f.name.split("-")[1] for f in search_figures(load_experiment(root)))
    assert kinds == ["importance", "parallel", "slice"]
    trials = pd.read_parquet(root / "trials.parquet")
    keep = trials[(trials.phase != "search") | (trials.trial_id == trials[trials.phase == "search"].trial_id.iloc[0])]
    keep.to_parquet(root / "trials.parquet", index=False)
    assert search_figures(load_experiment(root)) == []


def test_report_carries_the_search_plots_in_both_formats(tmp_path):
    root = write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74]})
    out = render_report([root], tmp_path / "out", formats=("md", "html"))
    md = out["md"].read_text()
    html = out["html"].read_text()
    for kind in ("parallel", "slice", "contour", "importance"):
        assert (tmp_path / "out" / "figures" / f"search-{kind}-cmp-xbm.svg").is_file()
        assert f"figures/search-{kind}-cmp-xbm.svg" in md
        assert f'id="fig-search-{kind}-cmp-xbm"' in html
