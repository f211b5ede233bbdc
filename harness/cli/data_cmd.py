"""``harness data check NAME --root DIR``: validate a dataset layout, count its splits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.cli import app

data_app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")

MAX_LISTED = 20


@data_app.command("check")
def check(
    name: str = typer.Argument(..., help="Dataset name (digits, fashion-mnist, sop, cub, cars196, inshop, deepfashion2, table, folder)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root in its official layout (table: the CSV / Parquet file)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Decode every image (slower) or only check it exists."),
) -> None:
    """Validate NAME's layout under --root; print class / image counts per split and bad files.

    Exit 0 when all is well, 1 when image files are missing or unreadable (table / folder
    data also: a class with a single image, a query label without a gallery image), 2 when
    the layout itself (root, annotation files, table rows, shared train/test labels) is wrong.
    """
    from harness.data.check import check_dataset

    report = check_dataset(name, root, verify=verify)
    console = Console()
    table = Table(title=f"{name} ({report.root if report.root else 'built in'})")
    for col in ("split", "role", "classes", "images"):
        table.add_column(col, justify="right" if col in ("classes", "images") else "left")
    for s in report.splits:
        table.add_row(s.split, s.role, str(s.n_classes), str(s.n_images))
    console.print(table)
    for title, paths in (("missing", report.missing), ("unreadable", report.unreadable)):
        if paths:
            console.print(f"[red]{len(paths)} {title} image file(s):[/red]", highlight=False)
            for p in paths[:MAX_LISTED]:
                console.print(f"  {p}", highlight=False, soft_wrap=True)
            if len(paths) > MAX_LISTED:
                console.print(f"  ... and {len(paths) - MAX_LISTED} more", highlight=False)
    for title, entries in (("class(es) with a single image", report.single_image),
                           ("query label(s) without a gallery image", report.no_gallery_match)):
        if entries:
            colour = "red" if report.strict_classes else "yellow"
            console.print(f"[{colour}]{len(entries)} {title}:[/{colour}] "
                          + ", ".join(entries[:MAX_LISTED]) + (" ..." if len(entries) > MAX_LISTED else ""),
                          highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
    console.print("[green]layout ok[/green]")
