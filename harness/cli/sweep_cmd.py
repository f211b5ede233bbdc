"""``harness sweep NAME ...`` (Ray Tune + Optuna) and ``harness list`` (the experiments).

All input checks (experiment, search space, storage, resume state) run before Ray is
imported or started: a bad input is one line and exit code 2, and nothing under the
storage path is touched.
"""

from __future__ import annotations

import math
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli.application import app
from harness.errors import ConfigError


@app.command("sweep")
def sweep(
    name: str = typer.Argument(..., help="Experiment name (see `harness list`) or a YAML path."),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", help="Override a base config value, e.g. --set train.epochs=3 (repeatable)."
    ),
    trials: Optional[int] = typer.Option(None, "--trials", help="Total search trials (split across compared values)."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Join this Ray cluster ('auto' or host:port); default: a local Ray."
    ),
    storage: str = typer.Option("./results", "--storage", help="Results folder or URI (s3://bucket/prefix)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="At most K trials at once."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted sweep."),
    reproduce_only: bool = typer.Option(
        False, "--reproduce-only", help="Rerun the reproductions of a finished search."
    ),
    tracking: Optional[List[str]] = typer.Option(
        None, "--tracking", help="Also track every trial in mlflow, wandb or tensorboard (repeatable)."
    ),
    optuna_storage: Optional[str] = typer.Option(
        None, "--optuna-storage",
        help="SQLAlchemy URL of the Optuna studies (default: sqlite:///<storage>/<experiment>/optuna.db).",
    ),
    take_over: bool = typer.Option(
        False, "--take-over",
        help="Take the sweep over from a driver on another host that is no longer running.",
    ),
) -> None:
    """Tune an experiment with Optuna on Ray Tune, then reproduce the best settings."""
    if resume and reproduce_only:
        raise ConfigError("give --resume or --reproduce-only, not both")
    from harness.sweep.experiment import find_experiment

    if not (resume or reproduce_only):
        find_experiment(name)  # unknown names fail before the heavier imports
    from harness.sweep.runner import prepare_sweep, run_sweep, summary_table

    plan = prepare_sweep(name, set_, trials, storage, resume, reproduce_only, max_concurrent, address,
                         take_over)
    from harness.sweep.optuna_storage import resolve_storage_url
    from harness.tracking.config import apply_tracking

    plan.experiment = apply_tracking(plan.experiment, tracking, resuming=bool(plan.state))
    plan.optuna_storage = resolve_storage_url(plan, optuna_storage)  # checked before Ray starts
    warnings = Console(stderr=True)
    outcome = run_sweep(plan, warn=lambda msg: warnings.print(
        f"[yellow]warning:[/yellow] {escape(msg)}", highlight=False, soft_wrap=True))
    console = Console()
    table = Table(title=f"{outcome.experiment}: reproductions (test split)", title_justify="left")
    metric = plan.experiment.search.metric
    for col in ("compared value", "runs", f"test.{metric.removeprefix('val.')} mean", "std"):
        table.add_column(col, justify="left" if col == "compared value" else "right")
    for label, n, mean, std in summary_table(plan.store, metric):
        table.add_row(label, str(n), f"{mean:.4f}", "" if math.isnan(std) else f"{std:.4f}")
    console.print(table)
    console.print(
        f"{outcome.trials} search trials, {outcome.reproductions} reproductions: {outcome.root}",
        highlight=False, soft_wrap=True,
    )
    if outcome.report:
        console.print(f"report: {outcome.report}", highlight=False, soft_wrap=True)


@app.command("list")
def list_experiments() -> None:
    """The experiments shipped in search_spaces/ (usable as `harness sweep NAME`)."""
    from harness.sweep.experiment import builtin_names, load_experiment

    table = Table(title="experiments (search_spaces/)", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("dataset", no_wrap=True)
    for col in ("methods compared", "trials", "description"):
        table.add_column(col, overflow="fold")
    for name in builtin_names():
        exp = load_experiment(name)
        budget = sum(exp.trial_budget().values())
        repro = len(exp.compare_labels) * len(exp.search.reproduction_seeds)
        table.add_row(
            name, exp.dataset(), ", ".join(exp.methods()), f"{budget} + {repro} repro",
            exp.description,
        )
    Console().print(table)
