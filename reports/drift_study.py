"""Where memories help: each memory's gain over no memory against its staleness.

Shown when an experiment reproduces every method at several learning rates (the
fine-tuning learning rate sets how fast embeddings drift; ``search_spaces/glyphs-drift``)
and compares against ``none``. For every (method, learning rate):

- the gain over ``none`` at the same learning rate on test MAP@R and Recall@1: the
  difference of the means over the reproduction seeds, with a Welch 95% interval;
- the memory's staleness: ``memory_error_mean`` (stored, adapted references against the
  current network's embeddings of the same images, harness/core/staleness.py),
  averaged over the fine-tuning epochs (those with a filled memory) and the seeds;
- the step drift ``drift_step_mean`` (AXBN paper appendix C, Δk = 1), averaged alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.results.contract import COL_EXPERIMENT, COL_METHOD, COL_PHASE, COL_TRIAL_ID, PHASE_REPRODUCTION
from harness.reports.plots import RC, Figure, _panels, rendered
from harness.reports.statistics import CONFIDENCE
from harness.reports.tables import method_sort_key

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults

LR = "config.optim.lr"
BASELINE = "none"
GAIN_METRICS = (("test.map@r", "MAP@R"), ("test.recall@1", "Recall@1"))


@dataclass
class Gain:
    mean: float
    low: float | None  # Welch interval of the difference; None with < 2 seeds on a side
    high: float | None


@dataclass
class DriftRow:
    method: str
    lr: float
    seeds: int
    memory_error: float  # mean over fine-tuning epochs and seeds (nan: no memory)
    step_drift: float
    gains: dict[str, Gain]  # metric -> gain over none at this lr


def welch_gain(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> Gain:
    """mean(a) − mean(b) with a Welch t interval."""
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Gain(diff, None, None)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Gain(diff, diff, diff)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = float(sps.t.ppf(0.5 + confidence / 2, df))
    return Gain(diff, diff - t * se, diff + t * se)


WARMUP = "config.optim.warmup_epochs"


def _run_staleness(experiments: list[ExperimentResults], repro: pd.DataFrame) -> pd.DataFrame:
    """Per reproduction run: memory_error_mean and drift_step_mean averaged over its
    fine-tuning epochs (after the pre-warm-up; NaN epochs, an empty memory, skipped)."""
    keys = [COL_EXPERIMENT, COL_TRIAL_ID]
    frames = [e.epochs for e in experiments if e.epochs is not None]
    if not frames:
        return pd.DataFrame(columns=keys + ["memory_error", "step_drift"])
    ep = pd.concat(frames, ignore_index=True)
    ep = ep[ep[COL_PHASE] == PHASE_REPRODUCTION].copy()
    ep[COL_TRIAL_ID] = ep[COL_TRIAL_ID].astype(str)
    for col in ("memory_error_mean", "drift_step_mean"):
        ep[col] = pd.to_numeric(ep[col], errors="coerce") if col in ep.columns else np.nan
    warm = repro[keys].copy()
    warm["warmup"] = pd.to_numeric(repro[WARMUP], errors="coerce").fillna(0) if WARMUP in repro.columns else 0
    ep = ep.merge(warm, on=keys, how="inner")
    ep = ep[pd.to_numeric(ep["epoch"], errors="coerce") > ep["warmup"]]
    out = ep.groupby(keys).agg(memory_error=("memory_error_mean", "mean"), step_drift=("drift_step_mean", "mean"))
    return out.reset_index()


def drift_study(experiments: list[ExperimentResults], repro: pd.DataFrame) -> list[DriftRow]:
    """The study's rows, or [] when the reproductions do not span learning rates."""
    if repro.empty or LR not in repro.columns or COL_METHOD not in repro.columns:
        return []
    df = repro.copy()
    df[LR] = pd.to_numeric(df[LR], errors="coerce")
    if BASELINE not in set(df[COL_METHOD]) or df.groupby(COL_METHOD)[LR].nunique().max() < 2:
        return []
    df[COL_TRIAL_ID] = df[COL_TRIAL_ID].astype(str)
    df = df.merge(_run_staleness(experiments, df), on=[COL_EXPERIMENT, COL_TRIAL_ID], how="left")
    rows = []
    for (method, lr), g in df.groupby([COL_METHOD, LR]):
        base = df[(df[COL_METHOD] == BASELINE) & (df[LR] == lr)]
        gains = {}
        for metric, _ in GAIN_METRICS:
            if metric in g.columns and not base.empty:
                a = pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy(float)
                b = pd.to_numeric(base[metric], errors="coerce").dropna().to_numpy(float)
                if len(a) and len(b):
                    gains[metric] = welch_gain(a, b)
        rows.append(DriftRow(str(method), float(lr), len(g), float(g["memory_error"].mean()),
                             float(g["step_drift"].mean()), gains))
    return sorted(rows, key=lambda r: (method_sort_key(r.method), r.lr))


def drift_study_figure(rows: list[DriftRow], scale: float, colours: dict[str, str]) -> Figure | None:
    memories = [r for r in rows if r.method != BASELINE and math.isfinite(r.memory_error)]
    if not memories:
        return None
    with plt.rc_context(RC):
        fig, axes = _panels(len(GAIN_METRICS))
        for ax, (metric, name) in zip(axes, GAIN_METRICS):
            for method in sorted({r.method for r in memories}, key=method_sort_key):
                pts = [r for r in memories if r.method == method and metric in r.gains]
                pts.sort(key=lambda r: r.memory_error)
                x = [r.memory_error for r in pts]
                y = [r.gains[metric].mean * scale for r in pts]
                err = [[(r.gains[metric].mean - (r.gains[metric].low if r.gains[metric].low is not None
                                                  else r.gains[metric].mean)) * scale for r in pts],
                       [((r.gains[metric].high if r.gains[metric].high is not None else r.gains[metric].mean)
                         - r.gains[metric].mean) * scale for r in pts]]
                ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=colours[method], label=method)
                for r, xi, yi in zip(pts, x, y):
                    ax.annotate(f"{r.lr:g}", (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.axhline(0.0, color="0.3", linewidth=0.8)
            ax.set_xlabel("memory error (stored reference vs current embedding, L2)")
            ax.set_ylabel(f"test {name} gain over none" + (" (points)" if scale != 1 else ""))
            ax.legend(fontsize=7)
        return rendered(fig, "drift-study-gain-staleness", "Memory gain over no memory against staleness",
                        "Each point: one memory at one fine-tuning learning rate (labelled), its test gain over "
                        f"no memory at the same learning rate (mean over seeds, Welch {CONFIDENCE:.0%} interval) "
                        "against its mean memory error over the fine-tuning epochs. Above the line the memory "
                        "helps.")


def display_rows(rows: list[DriftRow], scale: float) -> list[dict[str, str]]:
    """The study as table cells (strings), gains in the report's units."""

    def gain(g: Gain | None) -> str:
        if g is None:
            return "–"
        text = f"{g.mean * scale:+.2f}"
        if g.low is not None:
            text += f" [{g.low * scale:+.2f}, {g.high * scale:+.2f}]"
        return text

    def num(x: float) -> str:
        return "–" if not math.isfinite(x) else f"{x:.3f}"

    return [{"method": r.method, "lr": f"{r.lr:g}", "seeds": str(r.seeds), "memory_error": num(r.memory_error),
             "step_drift": num(r.step_drift),
             **{metric: ("–" if r.method == BASELINE else gain(r.gains.get(metric))) for metric, _ in GAIN_METRICS}}
            for r in rows]
