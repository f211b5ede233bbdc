"""``harness eval CHECKPOINT``: embed a split with a trained model and print its metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.cli import app
from harness.errors import ConfigError
from harness.paths import readable_file, readable_folder, writable_file


@app.command("eval")
def eval_command(
    checkpoint: Path = typer.Argument(..., help="A best.pt / last.pt written by harness train."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name (default: the one trained on)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root (default: the trained config's data.root)."),
    split: str = typer.Option("test", "--split", help="test (final evaluation) or val (the carved validation classes)."),
    save_embeddings: Optional[Path] = typer.Option(
        None, "--save-embeddings", help="Write the embeddings (.parquet, .npz or .npy) to recompute metrics later."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: train.eval_batch_size."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers (default: data.workers)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Load CHECKPOINT, embed the split of --dataset and print Recall@k, MAP@R, R-precision."""
    from harness.core.checkpoint import load_model
    from harness.core.device import amp_dtype, pick_device
    from harness.core.finite import NonFiniteError, nonfinite_tensors
    from harness.core.evaluate import embed_split, metrics_of, save_embeddings as save
    from harness.data.registry import create_datasets

    if split not in ("test", "val"):
        raise ConfigError(f"--split '{split}': use test or val")
    if save_embeddings is not None and save_embeddings.suffix.lower() not in (".parquet", ".npz", ".npy"):
        raise ConfigError(f"--save-embeddings {save_embeddings}: use a .parquet, .npz or .npy file name")
    readable_file(checkpoint, "checkpoint")
    if save_embeddings is not None:
        writable_file(save_embeddings, "--save-embeddings")
    if root is not None:
        readable_folder(root, "--root")
    model, config = load_model(checkpoint)
    bad = nonfinite_tensors(model)
    if bad:
        raise NonFiniteError(
            f"{checkpoint} holds NaN/inf values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
            "its run diverged; evaluate a checkpoint of a run that completed"
        )
    data_cfg = config.data.model_copy(update={
        "name": dataset or config.data.name,
        "root": str(root) if root is not None else (config.data.root if dataset in (None, config.data.name) else None),
    })
    bundle = create_datasets(data_cfg, config.seed, model.mean, model.std)
    chosen = bundle.test if split == "test" else bundle.val
    dev = pick_device(device)
    model.to(dev)
    embedded = embed_split(
        model, chosen,
        batch_size=batch_size or config.train.eval_batch_size,
        device=dev,
        workers=config.data.workers if workers is None else workers,
        amp_dtype=amp_dtype(dev, config.train.amp),
    )
    metrics = metrics_of(embedded, tuple(config.eval.ks))
    table = Table(title=f"{checkpoint} on {data_cfg.name} ({split})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, str(value) if isinstance(value, int) else f"{value:.6f}")
    Console().print(table)
    if save_embeddings is not None:
        path = save(embedded, save_embeddings, split=split)
        Console().print(f"embeddings written to {path}", highlight=False, soft_wrap=True)
