"""``harness data check NAME --root DIR``: validate a dataset layout, count its splits;
``harness data build glyphs --out DIR``: render the glyphs dataset from the installed fonts."""

from __future__ import annotations

import json

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.cli.application import app

data_app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")

MAX_LISTED = 20


@data_app.command("check")
def check(
    name: str = typer.Argument(..., help="Dataset name (digits, fashion-mnist, glyphs, sop, cub, cars196, inshop, deepfashion2, table, folder)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root in its official layout (table: the CSV / Parquet file)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Decode every image (slower) or only check it exists."),
) -> None:
    """Validate NAME's layout under --root; print class / image counts per split and bad files.

    Exit 0 when all is well, 1 when image files are missing or unreadable (table / folder
    data also: a class with a single image, a query label without a gallery image), 2 when
    the layout itself (root, annotation files, table rows, shared train/test labels) is wrong.
    """
    from harness.data.check import check_dataset

    if name == "glyphs" and root is None:
        from harness.data.glyphs import cached_build

        root = cached_build()  # the auto-built default (built now on first use)
    report = check_dataset(name, root, verify=verify)
    console = Console()
    table = Table(title=f"{name} ({report.root if report.root else 'built in'})")
    for col in ("split", "role", "classes", "images", "per class (min / median / max)"):
        table.add_column(col, justify="left" if col in ("split", "role") else "right")
    for s in report.splits:
        lo, med, hi = s.per_class
        table.add_row(s.split, s.role, str(s.n_classes), str(s.n_images), f"{lo} / {med:g} / {hi}")
    console.print(table)
    if name == "glyphs" and report.root is not None:
        from harness.data.glyphs import read_manifest

        faces = read_manifest(report.root)["faces"]
        console.print(f"{len(faces)} distinct font faces (images per class = faces per character); "
                      f"manifest: {report.root / 'manifest.json'}", highlight=False, soft_wrap=True)
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


@data_app.command("build")
def build(
    name: str = typer.Argument(..., help="What to build: glyphs (the dataset, into --out) or glyph-backbone "
                                         "(the glyph-pretrained backbone, into the cache)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write (replaced if it exists); glyphs only."),
    backbone: str = typer.Option("tiny_cnn_small", "--backbone", help="glyph-backbone: the registry backbone to pretrain."),
    fonts: Optional[list[Path]] = typer.Option(
        None, "--fonts", help="Font folder or file to scan (repeatable; default: the system font folders)."),
    size: int = typer.Option(32, "--size", min=8, help="Image side in pixels."),
    characters: int = typer.Option(1600, "--characters", min=2, help="Characters (classes) to sample."),
    min_faces: int = typer.Option(12, "--min-faces", min=2, help="Distinct faces a character needs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the character sample and the train/test split."),
    min_face_ideographs: int = typer.Option(
        1000, "--min-face-ideographs", min=1,
        help="Faces with fewer CJK ideographs are supplements (e.g. HanaMinB), not designs of their own."),
) -> None:
    """Render a dataset built from local files (glyphs: one class per CJK ideograph,
    one image per distinct font face that has it; DIR/manifest.json and DIR/images.npy),
    or build the glyph-pretrained backbone that `model.pretrained: glyphs` loads."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.data.glyphs import GlyphSettings, build_glyphs
    from harness.errors import ConfigError, DataError

    if name == "glyph-backbone":
        from harness.core.model import GLYPHS_PRETRAINED, create_backbone

        create_backbone(backbone, GLYPHS_PRETRAINED)  # builds into the cache on first use
        from harness.core.model import glyph_backbone_path

        path = glyph_backbone_path(backbone)
        manifest = json.loads((path.parent / "manifest.json").read_text())
        last = manifest["history"][-1]
        Console(stderr=True).print(
            f"glyph backbone {backbone}: {manifest['images']} images of {manifest['settings']['characters']} "
            f"characters, {len(manifest['history'])} epochs (training accuracy {last['accuracy']:.3f}), "
            f"{manifest['seconds']['total']} s to build -> {path}", highlight=False, soft_wrap=True)
        return
    if name != "glyphs":
        raise DataError(f"data build: only 'glyphs' and 'glyph-backbone' are built from local files; '{name}' "
                        f"is read from its official layout (`harness data check {name} --root DIR`)")
    if out is None:
        raise ConfigError("data build glyphs: --out DIR is required (the folder to write)")
    settings = GlyphSettings(size=size, characters=characters, min_faces=min_faces, seed=seed,
                             min_face_ideographs=min_face_ideographs)
    console = Console(stderr=True)
    with Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("render", total=characters)
        manifest = build_glyphs(out, settings, font_dirs=fonts,
                                on_progress=lambda done, total: bar.update(task, completed=done))
    n_train = sum(c["split"] == "train" for c in manifest["classes"])
    console.print(f"glyphs: {len(manifest['classes'])} characters ({n_train} train, "
                  f"{len(manifest['classes']) - n_train} test), {manifest['images']} images of "
                  f"{size}x{size} px from {len(manifest['faces'])} distinct faces -> {out}", highlight=False,
                  soft_wrap=True)
