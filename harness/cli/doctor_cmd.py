"""``harness doctor [--require-gpu] [--no-ray]``: the node self-check (``harness/doctor/__init__.py``).

Prints one verdict table; exit code 0 when every check passes, 1 when any fails.
``cluster.yaml`` runs ``harness doctor --require-gpu`` in the GPU workers' setup, so a
node that cannot train on its GPU never joins the cluster.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.table import Table

from harness.cli.application import app

STYLE = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow", "INFO": "cyan"}


@app.command()
def doctor(
    require_gpu: bool = typer.Option(False, "--require-gpu", help="Fail when no GPU is usable (GPU workers)."),
    ray: bool = typer.Option(True, "--ray/--no-ray", help="Check the GPU assignment of Ray tasks (starts a local Ray)."),
) -> None:
    """Check this node: driver, CUDA, Ray GPU isolation, faiss, AMP, a tiny run with kill + resume."""
    from harness.doctor import failed, run_doctor

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    err = Console(stderr=True)
    with err.status("harness doctor: checking ...") as status:
        checks = run_doctor(
            require_gpu=require_gpu, with_ray=ray,
            on_check=lambda c: status.update(f"harness doctor: {c.name}: {c.verdict}"),
        )
    table = Table(title="harness doctor", show_lines=False)
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("s", justify="right")
    table.add_column("detail", overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{STYLE[c.verdict]}]{c.verdict}[/]", f"{c.seconds:.1f}", c.detail)
    Console(width=max(Console().width, 140)).print(table)
    bad = failed(checks)
    Console().print("[bold red]FAILED[/]" if bad else "[green]all checks passed[/]")
    sys.exit(1 if bad else 0)
