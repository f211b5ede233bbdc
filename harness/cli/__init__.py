"""The ``harness`` command line (Typer).

Each command group lives in its own module and registers itself on ``app``; a
HarnessError anywhere becomes one red line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from harness.cli.application import app
from harness.errors import HarnessError

__all__ = ["app", "main"]


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``; here rather than at
    # module level so that importing one command module does not load all (start-up time).
    from harness.cli import train_cmd, data_cmd, sweep_cmd, report_cmd, eval_cmd  # noqa: F401
    from harness.cli import doctor_cmd  # noqa: F401
    from harness.cli import export_cmd, index_cmd  # noqa: F401


def main() -> None:
    _register()
    try:
        app(standalone_mode=True)
    except HarnessError as e:
        from rich.console import Console
        from rich.markup import escape

        # escape: a message may hold brackets ("pip install 'metric-harness[mlflow]'")
        Console(stderr=True).print(f"{e.prefix} {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a sweep's own handling: no traceback
        from rich.console import Console

        Console(stderr=True).print("[yellow]interrupted[/yellow]", highlight=False)
        sys.exit(130)
