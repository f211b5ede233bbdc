"""``harness export CHECKPOINT --onnx model.onnx [--torch-export model.pt2]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from harness.cli.application import app


@app.command("export")
def export(
    checkpoint: Path = typer.Argument(..., help="A best.pt / last.pt written by harness train."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Write an ONNX model (dynamic batch) here."),
    torch_export: Optional[Path] = typer.Option(
        None, "--torch-export", help="Write a torch.export program (.pt2, dynamic batch) here."),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", help="Max abs difference allowed between exported and PyTorch embeddings."),
) -> None:
    """Export the embedding model; check it against PyTorch; record its preprocessing beside it.

    The exported model maps float32 images [N, 3, S, S] (resized, centre-cropped, normalised
    as recorded in <artefact>.json) to L2-normalised embeddings [N, d].
    """
    from harness.serving.export import export_checkpoint

    meta = export_checkpoint(checkpoint, onnx_path=onnx, program_path=torch_export, tolerance=tolerance)
    console = Console()
    pre = meta["preprocessing"]
    for kind in ("onnx", "torch.export"):
        if kind in meta:
            info = meta[kind]
            check = info["check"]
            console.print(
                f"{kind}: {info['path']} (+ {Path(info['path']).name}.json); batch sizes "
                f"{', '.join(map(str, check['batch_sizes']))}: max abs difference to PyTorch "
                f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:g})",
                highlight=False, soft_wrap=True,
            )
    console.print(
        f"preprocessing: resize shorter side to {pre['resize_shorter_side']} ({pre['interpolation']}), "
        f"centre crop {pre['center_crop']}, mean {pre['mean']}, std {pre['std']}",
        highlight=False, soft_wrap=True,
    )
