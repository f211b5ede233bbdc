"""Comparison reports from a sweep's results tables (Markdown + self-contained HTML).

``render_report(experiment_dirs, out_dir, formats=("md", "html")) -> {format: path}``;
modules: load (read + validate tables), stats (seeds, Welch, importance), plots, render.
"""

from reports.render import render_report

__all__ = ["render_report"]
