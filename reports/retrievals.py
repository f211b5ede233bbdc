"""The report's retrieval pictures: for each compared value (method), its best reproduction.

The best reproduction is the compared value's best-configuration reproduction with the
highest test metric (the experiment's objective, on the test split). Its folder
``<experiment>/retrievals/<trial_id>/`` holds ``retrievals.npz`` (saved by the
trainable, see ``harness.serving.retrieval_pictures``, and copied there from the trial's Tune
checkpoint by the sweep's recorder) and the run's ``config.yaml``, which names the
dataset whose images are drawn. A reproduction without those files (a moved dataset)
gets a note instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from harness.config import build_config, load_yaml
from harness.errors import HarnessError
from harness.results.contract import (
    COL_COMPARE_VALUE,
    COL_PHASE,
    COL_STATUS,
    COL_TRIAL_ID,
    CONFIG_FILE,
    PHASE_REPRODUCTION,
    RETRIEVALS_DIR,
    RETRIEVALS_FILE,
    STATUS_COMPLETED,
)
from harness.serving.retrieval_pictures import Neighbours, draw_pictures
from harness.reports.search_analysis import objective
from harness.reports.tables import best_reproductions

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults

N_WORST = 4
N_TYPICAL = 2
TOP_K = 5


@dataclass
class MethodRetrievals:
    experiment: str
    label: str  # the compared value (method), or "(all)"
    trial_id: str
    metric: str  # "test.recall@1"
    value: float
    pictures: list = field(default_factory=list)  # harness.serving.retrieval_pictures.Picture
    files: list[str] = field(default_factory=list)  # Markdown: retrievals/<file>.png
    note: str | None = None


def _slug(text: str) -> str:
    # no "_": the Markdown finalize hook would escape it inside the link
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "all"


def find_run_files(exp_path: Path, trial_id: str) -> Path | None:
    """The folder holding ``trial_id``'s ``retrievals.npz`` and ``config.yaml``: its own
    under the experiment (``retrievals/<trial_id>/``), else, for sweeps written before
    the recorder copied them there, the newest Tune checkpoint that holds them."""
    own = Path(exp_path) / RETRIEVALS_DIR / trial_id
    if (own / RETRIEVALS_FILE).is_file():
        return own
    found = sorted((Path(exp_path) / "tune" / PHASE_REPRODUCTION / trial_id).glob(f"checkpoint_*/{RETRIEVALS_FILE}"))
    return found[-1].parent if found else None


def best_reproduction_per_value(exp: ExperimentResults) -> list[tuple[str, pd.Series, str]]:
    """(label, row, test metric column) of each compared value's best reproduction."""
    t = exp.trials
    repro = t[(t[COL_PHASE] == PHASE_REPRODUCTION) & (t[COL_STATUS] == STATUS_COMPLETED)]
    repro = best_reproductions(repro)
    metric, mode = objective(exp)
    col = "test." + metric.removeprefix("val.")
    if repro.empty or col not in repro.columns:
        return []
    out = []
    for value, rows in repro.groupby(repro[COL_COMPARE_VALUE].fillna("(all)"), sort=True):
        rows = rows[rows[col].notna()]
        if rows.empty:
            continue
        best = rows.loc[rows[col].idxmax() if mode == "max" else rows[col].idxmin()]
        out.append((str(value), best, col))
    return out


def method_retrievals(experiments: list[ExperimentResults], n_worst: int = N_WORST,
                      n_typical: int = N_TYPICAL, k: int = TOP_K) -> list[MethodRetrievals]:
    """Pictures of every experiment's best reproductions that saved their neighbours."""
    # local: the dataset registry loads torch, which a report without pictures never needs
    from harness.data.registry import read_dataset

    out = []
    for exp in experiments:
        for label, row, col in best_reproduction_per_value(exp):
            run_dir = find_run_files(exp.path, str(row[COL_TRIAL_ID]))
            if run_dir is None:
                continue  # nothing saved (fake training, older sweep): no section entry
            item = MethodRetrievals(exp.name, label, str(row[COL_TRIAL_ID]), col, float(row[col]))
            try:
                config = build_config(load_yaml(run_dir / CONFIG_FILE), source=str(run_dir / CONFIG_FILE))
                test = read_dataset(config.data.name, config.data.root).test
                nb = Neighbours.load(run_dir / RETRIEVALS_FILE)
                item.pictures = draw_pictures(nb, test.query, test.gallery, n_worst, n_typical, k=k)
            except (HarnessError, OSError, KeyError, ValueError) as e:
                item.note = f"pictures unavailable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            stem = _slug(f"{exp.name}-{label}")
            item.files = [f"{stem}-{i:02d}-{p.facts['kind']}.png" for i, p in enumerate(item.pictures, 1)]
            out.append(item)
    return out

