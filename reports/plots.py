"""The report's figures (matplotlib, Agg), each returned as SVG bytes.

Every figure that draws methods colours them from one mapping (harness.reports.colours), so a
method has the same colour in all of them.

- optimisation history: the objective against trial number, with the best-so-far line
  (drawn with the search plots, harness.reports.search_plots);
- validation Recall@1 and feature drift (``drift_mean``, AXBN paper appendix C) against
  epoch, per method, mean ± std over the reproduction seeds;
- test Recall@1 against batch size and against memory size per method when the
  experiments vary them (the AXBN paper's Figure 1).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from harness.results.contract import (  # noqa: E402
    COL_EXPERIMENT,
    COL_METHOD,
    COL_PHASE,
    COL_TRIAL_ID,
    METHOD_COMPARE_KEYS,
    PHASE_REPRODUCTION,
)
from harness.reports.search_analysis import compare_values, objective, search_rows  # noqa: E402
from harness.reports.tables import best_reproductions, method_sort_key, setting_sort_key  # noqa: E402

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults

# Names come from configs: never let a "$" in them switch on mathtext. Fixed hash salt
# and no date keep the SVG bytes identical between renders of the same tables.
RC = {"text.parse_math": False, "svg.hashsalt": "metric-harness", "svg.fonttype": "path",
      "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9}


# A figure up to this wide (inches) is small: the report lays small figures side by side
# (HTML: a grid; Markdown: images on one line) and gives a wider one a row of its own.
SMALL_WIDTH_IN = 5.0


@dataclass
class Figure:
    name: str  # file stem: figures/<name>.svg
    title: str
    caption: str
    svg: bytes
    wide: bool = False  # wider than SMALL_WIDTH_IN: a row of its own


def to_svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def rendered(fig, name: str, title: str, caption: str) -> Figure:
    """A matplotlib figure as the report's Figure (its SVG; the figure is closed)."""
    wide = bool(fig.get_size_inches()[0] > SMALL_WIDTH_IN)
    return Figure(name, title, caption, to_svg(fig), wide)


def _panels(n: int, width: float = 4.2, height: float = 3.2):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


# A method that appears in two experiments of one panel keeps its colour; each
# experiment draws it with its own line style.
LINE_STYLES = ("-", "--", ":", "-.")


def _panel_title(dataset: str, setting: str) -> str:
    return f"{dataset} ({setting})" if setting else dataset


def _arm_label(exp: ExperimentResults, compare_value: str | None, rows: pd.DataFrame) -> str:
    """A compared value's name in the history: on an axis the method column spells out
    (memory.kind with XML on gives "xbm+xml"), its method, as the other figures name it."""
    methods = rows[COL_METHOD].unique()
    if exp.compare_key in METHOD_COMPARE_KEYS and len(methods) == 1:
        return str(methods[0])
    return str(compare_value) if compare_value is not None else exp.name


def optimisation_history(exp: ExperimentResults, scale: float, colours: dict[str, str],
                         min_trials: int) -> Figure | None:
    """The search's objective against trial number, per compared value with at least
    ``min_trials`` (one or more) completed search trials."""
    metric, mode = objective(exp)
    arms = [(cv, search_rows(exp, cv)) for cv in compare_values(exp)]
    arms = [(cv, rows) for cv, rows in arms if not rows.empty and len(rows) >= min_trials]
    if not arms:
        return None
    n_max = max(len(rows) for _, rows in arms)
    with plt.rc_context(RC):
        fig, (ax,) = _panels(1, width=6.4, height=3.6)
        for cv, rows in arms:
            y = pd.to_numeric(rows[metric], errors="coerce").to_numpy() * scale
            x = np.arange(1, len(y) + 1)
            best = np.maximum.accumulate(y) if mode == "max" else np.minimum.accumulate(y)
            label = _arm_label(exp, cv, rows)
            ax.scatter(x, y, s=16, color=colours[label], alpha=0.6)
            ax.step(x, best, where="post", color=colours[label], marker="" if len(x) > 1 else "_", ms=12,
                    label=label)
        ax.set_xlim(0.5, n_max + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("trial (in start order)")
        ax.set_ylabel(f"{metric}" + (" (%)" if scale != 1 else ""))
        ax.set_title(f"{exp.name}: optimisation history")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return rendered(fig, f"history-{slug(exp.name)}", f"Optimisation history: {exp.name}",
                        f"{metric} of each completed search trial (dots; {mode}imised) and the best so far "
                        f"(line), per compare value with at least {min_trials} completed search trials.")


def _epoch_frame(experiments: list[ExperimentResults], repro: pd.DataFrame) -> pd.DataFrame:
    frames = [e.epochs for e in experiments if e.epochs is not None]
    if not frames or repro.empty:
        return pd.DataFrame()
    ep = pd.concat(frames, ignore_index=True)
    ep = ep[ep[COL_PHASE] == PHASE_REPRODUCTION].drop(columns=[COL_METHOD], errors="ignore")
    ep[COL_TRIAL_ID] = ep[COL_TRIAL_ID].astype(str)
    keys = repro[[COL_EXPERIMENT, COL_TRIAL_ID, "dataset", "setting", COL_METHOD, "label"]].astype(
        {COL_TRIAL_ID: str})
    return ep.merge(keys, on=[COL_EXPERIMENT, COL_TRIAL_ID], how="inner")


def epoch_curves(experiments: list[ExperimentResults], repro: pd.DataFrame, column: str,
                 ylabel: str, scale: float, colours: dict[str, str], name: str, title: str,
                 caption: str) -> Figure | None:
    ep = _epoch_frame(experiments, repro)
    if ep.empty or column not in ep.columns or ep[column].notna().sum() == 0:
        return None
    ep = ep[ep[column].notna()].copy()
    ep[column] = pd.to_numeric(ep[column], errors="coerce") * scale
    panels = sorted(ep.groupby(["dataset", "setting"]).groups,
                    key=lambda p: (p[0], setting_sort_key(p[1])))
    style = {e: LINE_STYLES[k % len(LINE_STYLES)] for k, e in enumerate(sorted(ep[COL_EXPERIMENT].unique()))}
    with plt.rc_context(RC):
        fig, axes = _panels(len(panels))
        for ax, (dataset, setting) in zip(axes, panels):
            part = ep[(ep["dataset"] == dataset) & (ep["setting"] == setting)]
            for label, g in sorted(part.groupby("label"), key=lambda kv: method_sort_key(kv[0])):
                agg = g.groupby("epoch")[column].agg(["mean", "std"]).fillna({"std": 0.0})
                color = colours[g[COL_METHOD].iloc[0]]
                # a label that names its experiment: the method is in several experiments here
                ls = style[g[COL_EXPERIMENT].iloc[0]] if label != g[COL_METHOD].iloc[0] else "-"
                ax.plot(agg.index, agg["mean"], marker="o", ms=3, color=color, linestyle=ls, label=label)
                ax.fill_between(agg.index, agg["mean"] - agg["std"], agg["mean"] + agg["std"],
                                color=color, alpha=0.15, linewidth=0)
            ax.set_title(_panel_title(dataset, setting))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
        return rendered(fig, name, title, caption)


def recall_points(repro: pd.DataFrame, column: str, scale: float,
                  fixed: dict[str, Any] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The points of a Figure-1 curve: (dataset, method, column, test.recall@1) rows.

    ``fixed``: other Figure-1 axes (config column -> base value); where one of them
    varies too (a batch x memory grid), the curve is the slice at its base value.
    Returns the points and a description of the slices taken.
    """
    sliced_at = []
    for other, value in (fixed or {}).items():
        if other != column and other in repro.columns and value is not None \
                and repro[other].nunique(dropna=True) > 1:
            repro = repro[pd.to_numeric(repro[other], errors="coerce") == value]
            sliced_at.append(f"{other.removeprefix('config.')} = {value}")
    df = repro[["dataset", COL_METHOD, column, "test.recall@1"]].copy()
    df[column] = pd.to_numeric(df[column], errors="coerce")
    df["test.recall@1"] = pd.to_numeric(df["test.recall@1"], errors="coerce") * scale
    return df.dropna(), sliced_at


def recall_against(repro: pd.DataFrame, column: str, xlabel: str, scale: float, colours: dict[str, str],
                   name: str, title: str, log2: bool = False,
                   fixed: dict[str, Any] | None = None) -> Figure | None:
    """Test Recall@1 (mean ± std over seeds) against a config column, per method."""
    if column not in repro.columns or "test.recall@1" not in repro.columns:
        return None
    df, sliced_at = recall_points(repro, column, scale, fixed)
    # A curve needs one method at two or more values; methods tuned to different values
    # (e.g. each its own searched memory size) are not a sweep over that axis.
    varying = sorted({d for (d, _), g in df.groupby(["dataset", COL_METHOD]) if g[column].nunique() > 1})
    if not varying:
        return None
    with plt.rc_context(RC):
        fig, axes = _panels(len(varying))
        for ax, dataset in zip(axes, sorted(varying)):
            part = df[df["dataset"] == dataset]
            for method, g in sorted(part.groupby(COL_METHOD), key=lambda kv: method_sort_key(kv[0])):
                agg = g.groupby(column)["test.recall@1"].agg(["mean", "std"]).fillna({"std": 0.0})
                ax.errorbar(agg.index, agg["mean"], yerr=agg["std"], marker="o", ms=4, capsize=3,
                            color=colours[method], label=method)
            if log2:
                # Plain tick labels at the values used (the log formatter needs mathtext).
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(part[column].unique()))
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(dataset)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test Recall@1" + (" (%)" if scale != 1 else ""))
            ax.legend(fontsize=7)
        at = f" At {', '.join(sliced_at)} (the base config)." if sliced_at else ""
        return rendered(fig, name, title, f"Mean ± std over the reproduction seeds (cf. the AXBN paper's "
                        f"Figure 1).{at}")


def slug(text: str) -> str:
    """A file-name stem for a figure (report.md links it; search_plots names its figures so too)."""
    out = "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")
    return out or "experiment"


def make_figures(experiments: list[ExperimentResults], repro: pd.DataFrame, scale: float,
                 colours: dict[str, str]) -> list[Figure]:
    """The figures that compare the methods' reproductions (epoch curves, Figure 1)."""
    # Figure 1 uses every reproduced configuration; the per-method curves only the best.
    fig1_rows, repro = repro, best_reproductions(repro)
    fixed: dict[str, Any] = {}
    for e in experiments:
        for key, value in ((e.space or {}).get("base_values") or {}).items():
            fixed.setdefault(f"config.{key}", value)
    unit = " (%)" if scale != 1 else ""
    figures = [
        epoch_curves(experiments, repro, "val.recall@1", "validation Recall@1" + unit, scale, colours,
                     "val-recall-epoch", "Validation Recall@1 against epoch",
                     "Mean ± std over the reproduction seeds, per method."),
        epoch_curves(experiments, repro, "drift_mean", "mean feature drift", 1.0, colours, "drift-epoch",
                     "Feature drift against epoch",
                     "Mean L2 drift of the probe embeddings between evaluations (AXBN paper, appendix C)."),
        epoch_curves(experiments, repro, "memory_error_mean", "memory error (L2)", 1.0, colours,
                     "memory-error-epoch", "Staleness of the memory against epoch",
                     "Mean L2 distance between sampled stored references, as the loss uses them (adapted for "
                     "XBN/AXBN), and the current network's embeddings of the same images, at each epoch's end "
                     "(harness/core/staleness.py). No line: no memory, or none filled yet."),
        epoch_curves(experiments, repro, "drift_step_mean", "step drift (L2, Δk = 1)", 1.0, colours,
                     "step-drift-epoch", "Step drift against epoch",
                     "Mean L2 change of a fixed probe minibatch's embeddings across one optimizer step "
                     "(AXBN paper, appendix C, Δk = 1), averaged over the epoch."),
        recall_against(fig1_rows, "config.train.batch_size", "batch size", scale, colours, "recall-batch-size",
                       "Test Recall@1 against batch size", log2=True, fixed=fixed),
    ]
    for col, label in (("config.memory.size", "memory size (embeddings)"),
                       ("config.memory.fraction", "memory size (fraction of the training set)")):
        fig = recall_against(fig1_rows, col, label, scale, colours, "recall-memory-size",
                             "Test Recall@1 against memory size", fixed=fixed)
        if fig is not None:
            figures.append(fig)
            break
    return [f for f in figures if f is not None]


def unique_names(figures: list[Figure]) -> None:
    """Two experiments may share a name once slugged: number the later figures' file names."""
    seen: dict[str, int] = {}
    for f in figures:
        n = seen.get(f.name, 0)
        seen[f.name] = n + 1
        if n:
            f.name = f"{f.name}-{n + 1}"
