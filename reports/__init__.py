"""Comparison reports from a sweep's results tables (Markdown + self-contained HTML).

``render_report(experiment_dirs, out_dir, formats=("md", "html")) -> {format: path}``;
modules: load (read + validate tables), statistics (seeds, Welch), tables (comparison
tables), references, search_analysis (best trials, importance), completeness, environment,
colours, plots, search_plots, retrievals, render.
"""

from harness.reports.render import render_report

__all__ = ["render_report"]
