"""``harness eval CHECKPOINT``: embed a split with a trained model and print its metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.cli.application import app
from harness.errors import ConfigError
from harness.utils.paths import readable_file, readable_folder, writable_file


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
    show: int = typer.Option(0, "--show", help="Draw the N worst queries (+ 3 typical successes) with their top-k."),
    show_k: int = typer.Option(5, "--show-k", help="Retrieved images per query in the --show picture."),
    show_dir: Optional[Path] = typer.Option(
        None, "--show-dir", help="Where --show writes retrievals.md/.html (default: beside the checkpoint)."),
) -> None:
    """Load CHECKPOINT, embed the split of --dataset and print Recall@k, MAP@R, R-precision."""
    if split not in ("test", "val"):
        raise ConfigError(f"--split '{split}': use test or val")
    if save_embeddings is not None and save_embeddings.suffix.lower() not in (".parquet", ".npz", ".npy"):
        raise ConfigError(f"--save-embeddings {save_embeddings}: use a .parquet, .npz or .npy file name")
    readable_file(checkpoint, "checkpoint")
    if save_embeddings is not None:
        writable_file(save_embeddings, "--save-embeddings")
    if root is not None:
        readable_folder(root, "--root")
    # The training stack (torch, timm, the dataset readers: seconds) only after the
    # cheap checks above, so that bad input fails at once.
    from harness.core.checkpoint import load_model
    from harness.core.device import amp_dtype, pick_device
    from harness.core.finite import NonFiniteError, nonfinite_tensors
    from harness.core.evaluate import embed_split, metrics_of, save_embeddings as save
    from harness.data.registry import create_datasets

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
    kw = dict(
        batch_size=batch_size or config.train.eval_batch_size,
        device=dev,
        workers=config.data.workers if workers is None else workers,
        amp_dtype=amp_dtype(dev, config.train.amp),
    )
    if show > 0:
        embedded, positions = _embed_with_positions(model, chosen, kw)
    else:
        embedded = embed_split(model, chosen, **kw)
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
    if show > 0:
        from harness.serving.retrieval_pictures import draw_pictures, nearest_neighbours, write_show

        q, ql = embedded["query"]
        g, gl = embedded["gallery"] if embedded["gallery"] is not None else (None, None)
        nb = nearest_neighbours(q, ql, g, gl, k=max(show_k, 1), query_positions=positions[0],
                                gallery_positions=positions[1])
        pictures = draw_pictures(nb, chosen.query, chosen.gallery, n_worst=show, k=show_k)
        out_dir = show_dir or checkpoint.parent / f"retrievals-{data_cfg.name}-{split}"
        written = write_show(pictures, out_dir, f"Retrievals of {checkpoint} on {data_cfg.name} ({split})")
        Console().print(f"retrieval pictures ({len(pictures)} queries): {written['md']}, {written['html']}",
                        highlight=False, soft_wrap=True)


def _embed_with_positions(model, split, kw):
    """embed_split's result plus the dataset positions of the embedded (readable) items."""
    from harness.core.evaluate import embed_positions

    q, qp = embed_positions(model, split.query, **kw)
    embedded = {"query": (q, split.query.labels[qp]), "gallery": None}
    gp = None
    if split.gallery is not None:
        g, gp = embed_positions(model, split.gallery, **kw)
        embedded["gallery"] = (g, split.gallery.labels[gp])
    return embedded, (qp, gp)
