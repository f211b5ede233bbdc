"""The Typer application every command module registers its commands on.

Its own module (not ``harness/cli/__init__.py``), so that the command modules import it
without importing the package that imports them.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="harness",
    help="Train, sweep and benchmark cross-batch metric learning methods; render reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
