"""``harness index build CHECKPOINT --out DIR`` and ``harness index query DIR IMAGE...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.cli.application import app

index_app = typer.Typer(help="A searchable faiss index of a dataset's gallery embeddings.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def build(
    checkpoint: Path = typer.Argument(..., help="A best.pt / last.pt written by harness train."),
    out: Path = typer.Option(..., "--out", help="Index folder to write."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name (default: the one trained on)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root (default: the trained config's)."),
    split: str = typer.Option("test", "--split", help="test (its gallery, or all of it in one-set mode) or train."),
    kind: str = typer.Option("exact", "--kind", help="exact (default), ivf or hnsw (approximate, faster)."),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="ivf: k-means cells (default ~4 sqrt(n))."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="ivf: cells searched per query (default nlist/16)."),
    hnsw_m: Optional[int] = typer.Option(None, "--hnsw-m", help="hnsw: links per node (default 32)."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="hnsw: search breadth (default 32)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Embed the gallery with CHECKPOINT; write index.faiss, items.parquet, model.pt, meta.json."""
    from harness.serving.index import IndexParams, build_index

    # Unset options keep IndexParams' defaults (one home for them).
    hnsw = {k: v for k, v in {"hnsw_m": hnsw_m, "ef_search": ef_search}.items() if v is not None}
    params = IndexParams(kind=kind, nlist=nlist, nprobe=nprobe, **hnsw)
    gi = build_index(checkpoint, out, dataset=dataset, root=str(root) if root else None, split=split,
                     params=params, device=device)
    console = Console()
    meta = gi.meta
    desc = ", ".join(f"{k}={v}" for k, v in meta["params"].items() if k != "kind")
    console.print(f"{meta['kind']} index{f' ({desc})' if desc else ''} of {meta['items']} {meta['dataset']} "
                  f"{meta['split']} images, {meta['dim']}-d: {out}", highlight=False, soft_wrap=True)
    rec = meta.get("recall_vs_exact")
    if rec:
        k = rec["k"]
        console.print(
            f"against exact search on {rec['queries']} queries: {rec[f'neighbour_recall@{k}']:.4f} of the exact "
            f"top-{k} found, same top-1 for {rec['top1_agreement']:.4f}; label Recall@1 "
            f"{rec['recall@1_index']:.4f} (exact {rec['recall@1_exact']:.4f})",
            highlight=False, soft_wrap=True,
        )


@index_app.command("query")
def query(
    index_dir: Path = typer.Argument(..., help="A folder written by `harness index build`."),
    images: List[Path] = typer.Argument(..., help="Query image file(s)."),
    k: int = typer.Option(5, "--k", "-k", help="Neighbours per query."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (query, rank, score, label, path)."),
) -> None:
    """Print the top-k gallery images (rank, cosine score, label, path) of each query image."""
    from harness.serving.index import query_index

    console = Console()
    for image, rows in zip(images, query_index(index_dir, images, k=k, device=device)):
        if as_json:
            for r in rows.itertuples():
                print(json.dumps({"query": str(image), "rank": int(r.rank), "score": float(r.score),
                                  "label": str(r.label_name), "path": str(r.path)}))
            continue
        table = Table(title=str(image), title_justify="left")
        for col in ("rank", "score", "label", "path"):
            table.add_column(col, justify="right" if col in ("rank", "score") else "left", overflow="fold")
        for r in rows.itertuples():
            table.add_row(str(r.rank), f"{r.score:.4f}", str(r.label_name), str(r.path))
        console.print(table)
