"""Optuna's search plots in the report: the rebuilt study, which plots a compared value's
completed search trials carry (and the line that says why not the others), both formats."""

from __future__ import annotations

import json

import pandas as pd

from fixtures.report_tables import write_experiment
from harness.reports import render_report
from harness.reports.load import load_experiment
from harness.reports.search_analysis import param_importance
from harness.reports.search_plots import method_search_plots, search_study


def kinds(exp, value) -> list[str]:
    return sorted(method_search_plots(exp, value).kinds)


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
    exp = load_experiment(write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74], "axbn": [0.8, 0.81, 0.82]},
                                           search_trials=8))
    plots = {m: method_search_plots(exp, m) for m in ("xbm", "axbn")}
    names = sorted(f.name for p in plots.values() for f in p.figures)
    assert names == sorted(f"search-{k}-cmp-{m}" for k in ("parallel", "slice", "contour", "importance")
                           for m in ("xbm", "axbn"))
    assert all(p.omitted is None for p in plots.values())
    for f in (f for p in plots.values() for f in p.figures):
        assert f.svg.startswith(b"<?xml") and b"<svg" in f.svg and len(f.svg) > 5000
    svg = {f.name: f.svg for p in plots.values() for f in p.figures}
    assert svg["search-parallel-cmp-xbm"] != svg["search-parallel-cmp-axbn"]  # each method its own data


def test_four_trials_draw_the_trials_and_fit_nothing(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74]}, search_trials=4))
    plots = method_search_plots(exp, "xbm")
    assert plots.kinds == ["parallel", "slice"]
    assert plots.omitted == ("xbm: 4 completed search trials, fewer than the 8 a contour or importance plot "
                             "needs; contour and importance omitted")


def test_search_trials_that_all_score_the_same_draw_nothing(tmp_path):
    # The demo's case: every trial of a method reached the same objective.
    root = write_experiment(tmp_path, "flat", {"xbn": [0.6, 0.6]}, seeds=[0, 1], search_trials=8)
    trials = pd.read_parquet(root / "trials.parquet")
    trials.loc[trials.phase == "search", "val.recall@1"] = 0.6111
    trials.to_parquet(root / "trials.parquet", index=False)
    exp = load_experiment(root)
    plots = method_search_plots(exp, "xbn")
    assert plots.figures == []
    assert plots.omitted == "xbn: all 8 completed search trials scored the same val.recall@1; search plots omitted"
    assert param_importance(exp, "xbn").reason == "all 8 completed search trials scored the same val.recall@1"


def test_one_parameter_has_no_contour_and_one_trial_no_plots(tmp_path):
    root = write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74]}, search_trials=8)
    space = json.loads((root / "space.json").read_text())
    space["params"] = {"optim.lr": space["params"]["optim.lr"]}
    (root / "space.json").write_text(json.dumps(space))
    exp = load_experiment(root)
    assert kinds(exp, "xbm") == ["importance", "parallel", "slice"]
    assert method_search_plots(exp, "xbm").omitted == "xbm: one searched parameter varies; contour omitted"
    trials = pd.read_parquet(root / "trials.parquet")
    keep = trials[(trials.phase != "search") | (trials.trial_id == trials[trials.phase == "search"].trial_id.iloc[0])]
    keep.to_parquet(root / "trials.parquet", index=False)
    plots = method_search_plots(load_experiment(root), "xbm")
    assert plots.figures == []
    assert plots.omitted == "xbm: 1 completed search trial, fewer than the 4 a search plot needs; search plots omitted"


def test_report_carries_the_search_plots_in_both_formats(tmp_path):
    root = write_experiment(tmp_path, "cmp", {"xbm": [0.7, 0.72, 0.74]}, search_trials=8)
    out = render_report([root], tmp_path / "out", formats=("md", "html"))
    md = out["md"].read_text()
    html = out["html"].read_text()
    for kind in ("parallel", "slice", "contour", "importance"):
        assert (tmp_path / "out" / "figures" / f"search-{kind}-cmp-xbm.svg").is_file()
        assert f"figures/search-{kind}-cmp-xbm.svg" in md
        assert f'id="fig-search-{kind}-cmp-xbm"' in html
    assert "#### xbm: 8 completed search trials" in md and "<h4>xbm: 8 completed search trials</h4>" in html
