"""``harness train CONFIG.yaml [--set key=value ...] [--out DIR]``: one training run.

Progress (a rich bar) and one metrics line per epoch go to stderr; the final JSON
summary (the content of ``summary.json``) is the last line on stdout, so
``harness train cfg.yaml | tail -1 | jq`` works. Exit codes: 0 completed, 1 diverged,
2 bad input (config, dataset).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.cli.application import app
from harness.utils.clock import utc_stamp
from harness.config import load_config
from harness.utils.paths import writable_folder
from harness.results.contract import STATUS_COMPLETED, STATUS_FAILED

# Metrics shown in the per-epoch line, in this order, when present.
EPOCH_LINE_KEYS = (
    "loss", "loss.xml", "val.recall@1", "val.map@r", "lr", "memory_fill", "drift_mean", "epoch_seconds",
)


def default_out_dir(config_path: Path, root: Path = Path("runs")) -> Path:
    """``runs/<config-stem>-<YYYYmmddTHHMMSSZ>`` (UTC); a suffix keeps two runs in one second apart."""
    base = root / f"{config_path.stem}-{utc_stamp()}"
    out, n = base, 1
    while out.exists():
        out, n = base.with_name(f"{base.name}-{n}"), n + 1
    return out


def format_epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    parts = [f"epoch {epoch}/{epochs}"]
    for key in EPOCH_LINE_KEYS:
        if key in metrics:
            v = metrics[key]
            if key == "memory_fill":
                parts.append(f"{key}={v:.0f}")
            elif key in ("lr", "epoch_seconds"):
                parts.append(f"{key}={v:.3g}")
            else:
                parts.append(f"{key}={v:.4f}")
    return "  ".join(parts)


class TrainProgress:
    """A rich progress display: epochs bar + steps-in-epoch bar, metrics lines above."""

    def __init__(self, epochs: int, console: Console):
        self.epochs = epochs
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self.epoch_task = self.progress.add_task("epochs", total=epochs)
        self.step_task = self.progress.add_task("steps", total=None)

    def __enter__(self) -> "TrainProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_step(self, step: int, total: int) -> None:
        self.progress.update(self.step_task, completed=step, total=total)

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.progress.update(self.epoch_task, completed=epoch)
        self.progress.update(self.step_task, completed=0)
        self.console.print(format_epoch_line(epoch, self.epochs, metrics), highlight=False, soft_wrap=True)


@app.command("train")
def train(
    config: Path = typer.Argument(..., help="Run config YAML (see configs/)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a config value: --set train.epochs=3 (repeatable)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Run directory (default: runs/<config-stem>-<timestamp>)."
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from OUT/checkpoints/last.pt when present."
    ),
    tracking: Optional[list[str]] = typer.Option(
        None, "--tracking",
        help="Also track the run in mlflow, wandb or tensorboard (repeatable); stores go beside OUT.",
    ),
) -> None:
    """Train one run: per-epoch metrics, checkpoints, best-on-validation, test of the best."""
    cfg = load_config(config, set_)  # a bad config fails here, before torch is imported
    out_dir = out if out is not None else default_out_dir(config)
    writable_folder(out_dir, "--out")
    from harness.tracking.config import TrackingSpec, require_installed

    spec = TrackingSpec().with_trackers(tracking)
    require_installed(spec.trackers)
    if cfg.train.workers > 1:  # data-parallel ranks on this machine
        from harness.core.launch import run_data_parallel as run_training
    else:
        from harness.core.train import run_training

    console = Console(stderr=True)
    tracker = None
    if spec.trackers:
        from harness.tracking import create_run_tracker

        tracker = create_run_tracker(spec, cfg, out_dir, experiment=config.stem)
    with TrainProgress(cfg.train.epochs, console) as progress:
        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            progress.on_epoch(epoch, metrics)
            if tracker is not None:
                tracker.log_epoch(epoch, metrics)

        try:
            result = run_training(
                cfg, out_dir, on_epoch=on_epoch, resume=resume, on_step=progress.on_step
            )
        except BaseException:
            if tracker is not None:
                tracker.finish({}, STATUS_FAILED)
            raise
    summary = result.summary()
    if tracker is not None:
        tracker.finish(summary, result.status)
    console.print(f"run directory: {out_dir}", highlight=False)
    print(json.dumps(summary, default=str), flush=True)
    if result.status != STATUS_COMPLETED:
        console.print(
            f"[red]run {result.status}[/red] at epoch {result.epochs_run + 1} (non-finite loss, weights or embeddings); "
            "lower optim.lr or check the loss parameters",
            highlight=False,
        )
        raise typer.Exit(1)
