"""The report shows the best search trial the sweep reproduces: harness.results.selection's choice,
ties included (earliest start, not the table's row order)."""

from __future__ import annotations

import json

import pandas as pd

from harness.results.selection import best_trials as select_best_trials
from harness.reports.load import load_experiment
from harness.reports.search_analysis import best_trials


def _row(trial_id: str, value: float | None, started: str, status: str = "completed") -> dict:
    return {"schema_version": 1, "experiment": "ties", "trial_id": trial_id, "phase": "search",
            "method": "xbn", "status": status, "compare_key": "memory.kind", "compare_value": "xbn",
            "seed": 0, "val.recall@1": value, "started_at": started, "config.optim.lr": 0.001}


def test_report_best_trial_is_the_shared_selection_on_ties(tmp_path):
    exp_dir = tmp_path / "ties"
    exp_dir.mkdir()
    # Written in finishing order: the tie at 0.6 started first in s2, which finished last.
    rows = [_row("s3", 0.6, "2025-01-01T00:30:00+00:00"), _row("s1", 0.4, "2025-01-01T00:00:00+00:00"),
            _row("s4", 0.9, "2025-01-01T00:40:00+00:00", status="failed"),
            _row("s2", 0.6, "2025-01-01T00:10:00+00:00")]
    pd.DataFrame(rows).to_parquet(exp_dir / "trials.parquet")
    (exp_dir / "space.json").write_text(json.dumps({"metric": "val.recall@1", "mode": "max",
                                                    "compare_key": "memory.kind", "compare_values": ["xbn"]}))
    exp = load_experiment(exp_dir)
    (best,) = best_trials(exp)
    assert (best.trial_id, best.value, best.n_completed) == ("s2", 0.6, 3)
    shared = select_best_trials(exp.trials, "val.recall@1", "max")
    assert shared["trial_id"].tolist() == [best.trial_id]


def test_report_shows_the_objectives_spread_and_says_when_the_search_could_not_separate(tmp_path):
    """search.objective folds x seeds: the chosen setting's mean ± std over its runs, and a
    line for each compared value whose best two settings lie within that std."""
    from harness.reports.render import render_report

    exp_dir = tmp_path / "folds"
    exp_dir.mkdir()
    rows = []
    # xbn: best 0.60 ± 0.05, second 0.58 -> inseparable; axbn: best 0.70 ± 0.01, second 0.60
    for cv, values, std in (("xbn", [0.60, 0.58, 0.40], 0.05), ("axbn", [0.70, 0.60, 0.50], 0.01)):
        for i, v in enumerate(values):
            row = _row(f"{cv}-{i}", v, f"2025-01-01T00:0{i}:00+00:00")
            runs = [{"fold": f, "seed": 0, "value": v + d} for f, d in enumerate((-std, 0.0, std))]
            row.update(compare_value=cv, method=cv, **{"objective.mean": v, "objective.std": std,
                                                       "objective.runs": json.dumps(runs)})
            rows.append(row)
    pd.DataFrame(rows).to_parquet(exp_dir / "trials.parquet")
    (exp_dir / "space.json").write_text(json.dumps({"metric": "val.recall@1", "mode": "max",
                                                    "compare_key": "memory.kind",
                                                    "compare_values": ["xbn", "axbn"]}))
    best = {b.compare_value: b for b in best_trials(load_experiment(exp_dir))}
    assert (best["xbn"].spread, best["xbn"].n_runs, best["xbn"].runner_up) == (0.05, 3, 0.58)
    assert best["xbn"].inseparable and not best["axbn"].inseparable
    paths = render_report([exp_dir], tmp_path / "out", formats=("md", "html"))
    for path in paths.values():
        text = path.read_text()
        assert "0.6000 ± 0.0500 (3 runs)" in text and "0.7000 ± 0.0100 (3 runs)" in text
        assert text.count("the search could not separate these") == 1
        assert "0.6000 and 0.5800" in text
