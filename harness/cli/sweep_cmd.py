"""``harness sweep NAME ...`` (Ray Tune + Optuna) and ``harness list`` (the experiments).

All input checks (experiment, search space, storage, resume state) run before Ray is
imported or started: a bad input is one line and exit code 2, and nothing under the
storage path is touched.
"""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

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
    # the imports below are inside: the checks before them run without Ray (start-up time)
    from harness.sweep.experiment import find_experiment

    if not (resume or reproduce_only):
        find_experiment(name)  # unknown names fail before the heavier imports
    from harness.cli.sweep_format import reproductions_table
    from harness.sweep.runner import prepare_sweep, run_sweep

    plan = prepare_sweep(name, set_, trials, storage, resume, reproduce_only, max_concurrent, address,
                         take_over, tracking=tracking, optuna_storage=optuna_storage)
    warnings = Console(stderr=True)
    outcome = run_sweep(plan, warn=lambda msg: warnings.print(
        f"[yellow]warning:[/yellow] {escape(msg)}", highlight=False, soft_wrap=True))
    console = Console()
    console.print(reproductions_table(outcome.experiment, plan.store, plan.experiment.search.metric))
    console.print(
        f"{outcome.trials} search trials, {outcome.reproductions} reproductions: {outcome.root}",
        highlight=False, soft_wrap=True,
    )
    if outcome.report:
        console.print(f"report: {outcome.report}", highlight=False, soft_wrap=True)
    fail_on_missing_values(plan)


def fail_on_missing_values(plan) -> None:
    """No compared value leaves the comparison quietly: a line per value without a
    completed reproduction (its first failure's reason), then exit 1."""
    from harness.results.selection import values_without_reproduction
    from harness.results.contract import TRIALS_FILE

    exp = plan.experiment
    missing = values_without_reproduction(plan.store.trials(), exp.compare_labels, exp.search.metric)
    if not missing:
        return
    errors = Console(stderr=True)
    for m in missing:
        what = f"{exp.compare_key}={m.value}" if m.value is not None else f"'{exp.name}'"
        errors.print(f"[red]error:[/red] {escape(what)} has no completed reproduction, so the comparison "
                     f"lacks it: {escape(m.reason)}", highlight=False, soft_wrap=True)
    errors.print(f"[red]error:[/red] {len(missing)} of {len(exp.compare_labels)} compared values missing "
                 f"(every reason: the error column of {escape(plan.store.path(TRIALS_FILE))}); fix the cause "
                 "and sweep again with another --storage", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


@app.command("list")
def list_experiments() -> None:
    """The experiments shipped in search_spaces/ (usable as `harness sweep NAME`)."""
    from harness.cli.sweep_format import experiments_table

    Console().print(experiments_table())
