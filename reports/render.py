"""Render the comparison report: Markdown (+ figures/*.svg) and one self-contained HTML file.

Both formats come from the same context (built once from the tables) and Jinja2
templates in ``reports/templates/``. Every string from configs and results is escaped:
HTML by Jinja2's autoescape, Markdown by a ``finalize`` hook that escapes each output.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import jinja2

from harness.utils.atomic import atomic_write_text
from harness.results.selection import values_without_reproduction
from harness.utils.clock import utc_display
from harness.errors import ConfigError, ResultsError
from harness.results.contract import COL_METHOD
from harness.reports.colours import method_colours
from harness.reports.environment import environment
from harness.reports.load import load_experiments
from harness.reports.drift_study import display_rows, drift_study, drift_study_figure
from harness.reports.plots import make_figures, unique_names
from harness.reports.completeness import progress
from harness.reports.references import reference_tables
from harness.reports.retrievals import method_retrievals
from harness.reports.search_analysis import best_trials, compare_values, objective, param_importance, param_keys
from harness.reports.search_plots import search_plots
from harness.reports.statistics import ALPHA, CONFIDENCE
from harness.reports.tables import METRICS, best_reproductions, is_fraction_scale, reproductions, summary_tables

if TYPE_CHECKING:
    from harness.reports.load import ExperimentResults
    from harness.reports.search_analysis import Importance
    from harness.reports.statistics import Summary

FORMATS = ("md", "html")
TEMPLATES = Path(__file__).parent / "templates"

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def md_escape(value: Any) -> Any:
    """Escape a value for a Markdown table cell (HTML specials, emphasis, pipes, newlines)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    text = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def pm(summary: Summary | None) -> str:
    """"80.73 ± 0.30" (mean ± std over seeds); a single seed has no std."""
    if summary is None or summary.n == 0:
        return "–"
    if summary.std is None:
        return f"{summary.mean:.2f} (1 seed)"
    return f"{summary.mean:.2f} ± {summary.std:.2f}"


def inside(value: bool | None) -> str:
    """Whether a reference mean lies in our interval: yes / no / – (no interval)."""
    return "–" if value is None else ("yes" if value else "no")


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def ci(summary: Summary | None) -> str:
    if summary is None or summary.ci_low is None:
        return "–"
    return f"{summary.ci_low:.2f} to {summary.ci_high:.2f}"


def param(value: Any) -> str:
    """A hyperparameter value: 4 significant digits for floats, as is otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _environment(autoescape: bool, finalize=None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        finalize=finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, pm=pm, ci=ci, param=param, inside=inside, signed=signed)
    env.globals["zip"] = zip
    return env


def build_context(experiments: list[ExperimentResults]) -> dict[str, Any]:
    """Everything both templates show, as plain data."""
    repro = reproductions(experiments)
    metric_cols = [m for m in METRICS if m in repro.columns]
    percent = is_fraction_scale(repro, metric_cols) if metric_cols else True
    scale = 100.0 if percent else 1.0
    best = best_reproductions(repro)
    tables = summary_tables(best, scale) if not best.empty else []
    per_experiment = []
    for exp in experiments:
        values = compare_values(exp)
        importances = [param_importance(exp, cv) for cv in values]
        per_experiment.append({
            "name": exp.name,
            "path": str(exp.path),
            "compare_key": exp.compare_key,
            "compare_values": [cv for cv in values if cv is not None],
            "metric": "{} ({})".format(*objective(exp)),
            "progress": progress(exp),
            # compared values the comparison lacks, named at the top of the report
            "missing": [{"value": m.value, "reason": m.reason} for m in
                        values_without_reproduction(exp.trials, values, objective(exp)[0])],
            "best": best_trials(exp),
            "param_keys": param_keys(exp),
            "importances": importances,
            "importance_params": sorted({k for imp in importances for k in (imp.values or {})}),
            "importance_omitted": _group_reasons(importances),
        })
    # one colour per method key: every method of the tables, and each compared value the
    # history draws (the experiment's name where it has no compare axis)
    compared = [str(cv) if cv is not None else e.name for e in experiments for cv in compare_values(e)]
    colours = method_colours([*(m for e in experiments for m in e.trials[COL_METHOD].unique()), *compared])
    figures = make_figures(experiments, repro, scale, colours)
    study = drift_study(experiments, repro)
    study_figure = drift_study_figure(study, scale, colours)
    if study_figure is not None:
        figures.insert(0, study_figure)
    search = [search_plots(e, scale, colours) for e in experiments]
    unique_names(figures + [f for s in search for f in s.figures])
    names = [e.name for e in experiments]
    return {
        "title": "Comparison report: " + ", ".join(names),
        "experiments": per_experiment,
        "tables": tables,
        "references": reference_tables(experiments, best, scale),
        "drift_study": display_rows(study, scale),
        "unit": "%" if percent else "metric units",
        "alpha": ALPHA,
        "confidence": CONFIDENCE,
        "environment": environment(experiments),
        "figures": figures,  # those that compare the reproductions
        "search": search,  # per experiment: its search plots, and what is not drawn and why
        "retrievals": method_retrievals(experiments),
        "rendered_at": utc_display(),
        "incomplete": [p["progress"] for p in per_experiment if not p["progress"].complete],
        "missing": [dict(m, experiment=p["name"], compare_key=p["compare_key"])
                    for p in per_experiment for m in p["missing"]],
    }


def _group_reasons(importances: list[Importance]) -> list[tuple[list[str], str]]:
    """(compare values, reason) for the omitted importances, one entry per reason."""
    groups: dict[str, list[str]] = {}
    for imp in importances:
        if imp.values is None:
            groups.setdefault(imp.reason or "unknown", []).append(imp.compare_value or "")
    return [([v for v in values if v], reason) for reason, values in groups.items()]


def _parse_formats(formats: Iterable[str] | str) -> list[str]:
    if isinstance(formats, str):
        formats = formats.split(",")
    out = []
    for f in formats:
        f = f.strip().lower()
        if f not in FORMATS:
            raise ConfigError(f"unknown report format '{f}'; choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ConfigError(f"no report format given; choose from {', '.join(FORMATS)}")
    return out


def render_report(experiment_dirs: list[Path], out_dir: Path,
                  formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write ``report.md`` (+ ``figures/*.svg``) and/or ``report.html`` into ``out_dir``.

    Returns format -> written file. Raises ResultsError for missing or foreign tables.
    """
    wanted = _parse_formats(formats)
    experiments = load_experiments([Path(p) for p in experiment_dirs])
    context = build_context(experiments)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"cannot create the report directory {out_dir}: {e.strerror}") from None
    written: dict[str, Path] = {}
    figures = context["figures"] + [f for s in context["search"] for f in s.figures]
    if "md" in wanted:
        fig_dir = out_dir / "figures"
        fig_dir.mkdir(exist_ok=True)
        for old in fig_dir.glob("*.svg"):
            old.unlink()  # a figure an earlier render drew and this one omits
        for f in figures:
            (fig_dir / f"{f.name}.svg").write_bytes(f.svg)
        _write_retrieval_pngs(out_dir / "retrievals", context["retrievals"])
        text = _environment(False, finalize=md_escape).get_template("report.md.j2").render(**context)
        written["md"] = _write(out_dir / "report.md", text)
    if "html" in wanted:
        images = {f.name: base64.b64encode(f.svg).decode("ascii") for f in figures}
        images.update({name: base64.b64encode(p.png).decode("ascii")
                       for r in context["retrievals"] for name, p in zip(r.files, r.pictures)})
        text = _environment(True).get_template("report.html.j2").render(images=images, **context)
        written["html"] = _write(out_dir / "report.html", text)
    return written


def _write_retrieval_pngs(png_dir: Path, sections) -> None:
    """The retrieval pictures beside the Markdown (the HTML embeds the same PNGs)."""
    if not any(r.pictures for r in sections):
        return
    png_dir.mkdir(exist_ok=True)
    for old in png_dir.glob("*.png"):
        old.unlink()
    for r in sections:
        for name, picture in zip(r.files, r.pictures):
            (png_dir / name).write_bytes(picture.png)


def _write(path: Path, text: str) -> Path:
    # Temp file + fsync + rename: a browser or a CI job never sees half a report.
    atomic_write_text(path, text)
    return path.resolve()
