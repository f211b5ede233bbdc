"""``harness report``: the comparison report of one or more experiments (Markdown + HTML)."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli.application import app


def default_out_dir(experiment_dirs: list[Path]) -> Path:
    """``<experiment>/report/`` for one experiment, ``./report`` for several."""
    return experiment_dirs[0] / "report" if len(experiment_dirs) == 1 else Path("report")


@app.command("report")
def report(
    experiment_dirs: list[Path] = typer.Argument(
        ..., help="One or more <storage>/<experiment>/ directories written by `harness sweep`."),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default: <experiment>/report/ for one, ./report for several)."),
    format: str = typer.Option("md,html", "--format", help="Comma-separated formats: md, html."),
) -> None:
    """Render the comparison report; print the path of each written file."""
    from harness.reports import render_report  # matplotlib/optuna load only when a report is asked for

    written = render_report(experiment_dirs, out or default_out_dir(experiment_dirs), formats=format)
    for path in written.values():
        typer.echo(str(path))
