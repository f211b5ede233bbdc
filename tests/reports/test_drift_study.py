"""The drift study (reports/drift_study.py): gains over no memory at equal learning
rate, with Welch intervals, beside the staleness of each memory's fine-tuning epochs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.reports.colours import method_colours
from harness.reports.drift_study import display_rows, drift_study, drift_study_figure, welch_gain

MAPR = {("none", 1e-4): [0.50, 0.52, 0.54], ("xbn", 1e-4): [0.56, 0.57, 0.58],
        ("none", 1e-3): [0.60, 0.61, 0.62], ("xbn", 1e-3): [0.55, 0.56, 0.57]}  # fmt: skip
ERROR = {("xbn", 1e-4): 0.1, ("xbn", 1e-3): 0.5}


def tables():
    repro, epochs = [], []
    for (method, lr), values in MAPR.items():
        for seed, v in zip((1, 2, 3), values):
            tid = f"{method}-{lr}-{seed}"
            repro.append({"experiment": "e", "trial_id": tid, "method": method, "config.optim.lr": lr,
                          "config.optim.warmup_epochs": 1, "test.map@r": v, "test.recall@1": v + 0.3})
            for epoch in (1, 2, 3):
                warm = epoch == 1
                err = math.nan if method == "none" or warm else ERROR[(method, lr)] * (1 + (epoch == 3))
                epochs.append({"experiment": "e", "trial_id": tid, "phase": "reproduction", "epoch": epoch,
                               "memory_error_mean": err, "drift_step_mean": 99.0 if warm else lr * 100})
    return pd.DataFrame(repro), SimpleNamespace(epochs=pd.DataFrame(epochs))


def test_gain_over_none_at_the_same_learning_rate_with_welch_interval():
    repro, exp = tables()
    rows = {(r.method, r.lr): r for r in drift_study([exp], repro)}
    assert set(rows) == set(MAPR)
    low = rows[("xbn", 1e-4)]
    assert low.gains["test.map@r"].mean == pytest.approx(0.57 - 0.52)
    assert low.gains["test.recall@1"].mean == pytest.approx(0.05)
    high = rows[("xbn", 1e-3)].gains["test.map@r"]
    assert high.mean == pytest.approx(0.56 - 0.61) and high.high < 0  # a resolved loss
    # staleness: fine-tuning epochs only (the warm-up's 99 never enters)
    assert low.memory_error == pytest.approx(0.15) and rows[("xbn", 1e-3)].memory_error == pytest.approx(0.75)
    assert low.step_drift == pytest.approx(1e-2) and math.isnan(rows[("none", 1e-4)].memory_error)
    cells = {(c["method"], c["lr"]): c for c in display_rows(list(rows.values()), 100.0)}
    assert cells[("xbn", "0.0001")]["test.map@r"].startswith("+5.00 [") and cells[("none", "0.0001")]["test.map@r"] == "–"
    assert drift_study_figure(list(rows.values()), 100.0, method_colours(["none", "xbn"])).svg.startswith(b"<?xml")


def test_welch_gain_matches_scipy():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.0, 0.5, 0.7, 0.2])
    g = welch_gain(a, b)
    se = math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 4)
    t = sps.ttest_ind(a, b, equal_var=False)
    half = (g.high - g.low) / 2
    assert g.mean == pytest.approx(a.mean() - b.mean())
    # the interval's half width over the standard error is the t quantile at Welch's df
    assert sps.t.sf(half / se, t.df) == pytest.approx(0.025, rel=1e-6)


def test_no_study_without_a_learning_rate_axis_or_a_baseline():
    repro, exp = tables()
    assert drift_study([exp], repro[repro["config.optim.lr"] == 1e-4]) == []
    assert drift_study([exp], repro[repro["method"] != "none"]) == []
