"""A searchable faiss index of a dataset's gallery embeddings (``harness index build/query``).

An index folder holds ``index.faiss`` (inner product = cosine on the L2-normalised
embeddings), ``items.parquet`` (row i of the index: ``path``, ``label``, ``label_name``),
``model.pt`` (the checkpoint's weights and config, so queries are embedded exactly as the
gallery was) and ``meta.json`` (kind, parameters, preprocessing, and for an approximate
index its recall against exact search on the same data).

Kinds: ``exact`` (``IndexFlatIP``), ``ivf`` (``IndexIVFFlat``: ``nlist`` k-means cells,
``nprobe`` searched) and ``hnsw`` (``IndexHNSWFlat``: graph with ``M`` links, ``efSearch``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from harness.utils.atomic import atomic_write_json
from harness.core.evaluate import embed_positions as embed_items
from harness.errors import ConfigError, DataError, HarnessError

KINDS = ("exact", "ivf", "hnsw")
INDEX_FILE, ITEMS_FILE, MODEL_FILE, META_FILE = "index.faiss", "items.parquet", "model.pt", "meta.json"
RECALL_SAMPLE = 1000  # queries used to state an approximate index's recall against exact
RECALL_K = 10


@dataclass
class IndexParams:
    kind: str = "exact"
    nlist: int | None = None  # ivf: cells (default ~4 sqrt(n), at least 39 points per cell)
    nprobe: int | None = None  # ivf: cells searched (default nlist / 16, at least 1)
    hnsw_m: int = 32
    ef_construction: int = 200
    # 32: within 0.1 point of exact Recall@1 at ~4x its speed on SOP-sized embeddings
    # (benchmarks/index_speed.py, docs/benchmarks/performance.md); raise it where
    # `recall_vs_exact` says so.
    ef_search: int = 32

    def resolved(self, n: int) -> "IndexParams":
        if self.kind not in KINDS:
            raise ConfigError(f"--kind {self.kind}: choose one of {', '.join(KINDS)}")
        out = IndexParams(**self.__dict__)
        if self.kind == "ivf":
            out.nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            if out.nlist > n:
                raise ConfigError(f"--nlist {out.nlist}: more cells than the {n} gallery items")
            out.nprobe = min(out.nlist, self.nprobe or max(1, out.nlist // 16))
        return out

    def describe(self) -> dict:
        if self.kind == "ivf":
            return {"kind": "ivf", "nlist": self.nlist, "nprobe": self.nprobe}
        if self.kind == "hnsw":
            return {"kind": "hnsw", "M": self.hnsw_m, "efConstruction": self.ef_construction,
                    "efSearch": self.ef_search}
        return {"kind": "exact"}


def create_index(vectors: np.ndarray, params: IndexParams) -> faiss.Index:
    """An index over ``vectors`` (float32, L2-normalised) of ``params.kind``, filled."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    p = params.resolved(n)
    if p.kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif p.kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, p.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0  # seeded k-means
        index.train(vectors)
        index.nprobe = p.nprobe
    else:
        index = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p.ef_construction
        index.hnsw.efSearch = p.ef_search
    index.add(vectors)
    return index


def search_without_self(index: faiss.Index, queries: np.ndarray, query_ids: np.ndarray | None, k: int):
    """Top-``k`` (scores, ids); with ``query_ids`` (queries taken from the index) each
    query's own entry is dropped, as in one-set retrieval."""
    extra = 0 if query_ids is None else 1
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + extra)
    if query_ids is None:
        return scores, ids
    out_s = np.full((len(ids), k), -np.inf, np.float32)
    out_i = np.full((len(ids), k), -1, np.int64)
    for r in range(len(ids)):
        keep = ids[r] != query_ids[r]
        s, i = scores[r][keep][:k], ids[r][keep][:k]
        out_s[r, :len(s)], out_i[r, :len(i)] = s, i
    return out_s, out_i


def recall_against_exact(index: faiss.Index, vectors: np.ndarray, labels: np.ndarray,
                         queries: np.ndarray | None = None, query_labels: np.ndarray | None = None,
                         sample: int = RECALL_SAMPLE, k: int = RECALL_K, seed: int = 0) -> dict:
    """How an (approximate) ``index`` over ``vectors`` compares with exact search.

    Queries: ``queries`` when given (a query/gallery protocol), else a seeded sample of
    the indexed vectors searched without themselves. Returns the share of the exact
    top-``k`` neighbours the index finds, the share of queries whose top-1 is the exact
    top-1, and the label Recall@1 of both searches.
    """
    rng = np.random.default_rng(seed)
    if queries is None:
        pick = np.sort(rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False))
        q, ql, self_ids = vectors[pick], labels[pick], pick
    else:
        pick = np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))
        q, ql, self_ids = queries[pick], query_labels[pick], None
    k = min(k, len(vectors) - (1 if self_ids is not None else 0))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, e_ids = search_without_self(exact, q, self_ids, k)
    _, a_ids = search_without_self(index, q, self_ids, k)
    overlap = np.mean([len(set(a[a >= 0]) & set(e)) / k for a, e in zip(a_ids, e_ids)])
    return {
        "queries": int(len(q)),
        "k": int(k),
        f"neighbour_recall@{k}": float(overlap),
        "top1_agreement": float(np.mean(a_ids[:, 0] == e_ids[:, 0])),
        "recall@1_exact": float(np.mean(labels[e_ids[:, 0]] == ql)),
        "recall@1_index": float(np.mean(np.where(a_ids[:, 0] >= 0, labels[a_ids[:, 0]], -1) == ql)),
    }


# ------------------------------------------------------------------ gallery items


def item_table(dataset, positions: np.ndarray, name: str) -> pd.DataFrame:
    """``path`` (or ``<dataset>:<position>`` for in-memory images), ``label``, ``label_name``."""
    labels = dataset.labels[positions]
    paths = getattr(dataset, "paths", None)
    names = getattr(dataset, "class_names", None)
    return pd.DataFrame({
        "path": [str(paths[i]) if paths is not None else f"{name}:{i}" for i in positions],
        "label": labels.astype(np.int64),
        "label_name": [str(names[c]) if names is not None else str(c) for c in labels],
    })


def eval_split_of(config, model, dataset: str | None, root: str | None, split: str):
    """(query dataset | None, gallery dataset) with the eval transform, from the official split."""
    from harness.data.registry import get_dataset_info, read_dataset
    from harness.data.transforms import eval_transform

    name = dataset or config.data.name
    root = root if root is not None else (config.data.root if name == config.data.name else None)
    info = get_dataset_info(name)
    parts = read_dataset(name, root)
    t = eval_transform(config.data.image_size, model.mean, model.std, info.crop_pct)
    if split == "train":
        return None, parts.train.with_transform(t)
    if split != "test":
        raise ConfigError(f"--split {split}: use test or train")
    test = parts.test
    if test.gallery is None:
        return None, test.query.with_transform(t)
    return test.query.with_transform(t), test.gallery.with_transform(t)


# ------------------------------------------------------------------ index folders


class IndexFolderError(HarnessError):
    """A missing or foreign index folder."""


@dataclass
class GalleryIndex:
    index: faiss.Index
    items: pd.DataFrame
    meta: dict

    def save(self, out_dir: Path, model_state: dict) -> Path:
        from harness.core.checkpoint import save_checkpoint

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out_dir / INDEX_FILE))
        self.items.to_parquet(out_dir / ITEMS_FILE, index=False)
        save_checkpoint(model_state, out_dir / MODEL_FILE)
        atomic_write_json(out_dir / META_FILE, self.meta)
        return out_dir

    @classmethod
    def load(cls, out_dir: Path) -> "GalleryIndex":
        out_dir = Path(out_dir)
        missing = [f for f in (INDEX_FILE, ITEMS_FILE, MODEL_FILE, META_FILE) if not (out_dir / f).is_file()]
        if missing:
            raise IndexFolderError(f"{out_dir} is not an index folder (no {missing[0]}); build one with `harness index build`")
        index = faiss.read_index(str(out_dir / INDEX_FILE))
        meta = json.loads((out_dir / META_FILE).read_text())
        if meta.get("kind") == "ivf":
            index.nprobe = int(meta["params"]["nprobe"])
        elif meta.get("kind") == "hnsw":
            index.hnsw.efSearch = int(meta["params"]["efSearch"])
        return cls(index, pd.read_parquet(out_dir / ITEMS_FILE), meta)


def build_index(checkpoint: Path, out_dir: Path, dataset: str | None = None, root: str | None = None,
                split: str = "test", params: IndexParams | None = None, device: str = "auto",
                batch_size: int | None = None, workers: int | None = None) -> GalleryIndex:
    """Embed the gallery of ``split`` with ``checkpoint`` and write an index folder."""
    from harness.core.checkpoint import load_checkpoint, load_model
    from harness.core.device import amp_dtype, pick_device
    from harness.serving.export import preprocessing

    params = params or IndexParams()
    model, config = load_model(checkpoint)
    query_ds, gallery_ds = eval_split_of(config, model, dataset, root, split)
    dev = pick_device(device)
    model.to(dev)
    kw = dict(batch_size=batch_size or config.train.eval_batch_size, device=dev,
              workers=config.data.workers if workers is None else workers,
              amp_dtype=amp_dtype(dev, config.train.amp))
    vectors, positions = embed_items(model, gallery_ds, **kw)
    if len(vectors) == 0:
        raise DataError(f"no readable gallery images in the {split} split of {dataset or config.data.name}")
    name = dataset or config.data.name
    items = item_table(gallery_ds, positions, name)
    resolved = params.resolved(len(vectors))
    index = create_index(vectors, resolved)
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "dataset": name, "split": split, "items": int(len(items)), "dim": int(vectors.shape[1]),
        "kind": resolved.kind, "params": resolved.describe(),
        "metric": "inner product of L2-normalised embeddings (cosine)",
        "preprocessing": preprocessing(config.model_copy(update={"data": config.data.model_copy(update={"name": name})}), model),
    }
    if resolved.kind != "exact":
        queries = query_labels = None
        if query_ds is not None:
            queries, qpos = embed_items(model, query_ds, **kw)
            query_labels = query_ds.labels[qpos]
        meta["recall_vs_exact"] = recall_against_exact(
            index, vectors, items["label"].to_numpy(), queries, query_labels)
    state = load_checkpoint(checkpoint)
    out = GalleryIndex(index, items, meta)
    out.save(out_dir, {"model": state["model"], "config": state["config"]})
    return out


def query_index(index_dir: Path, images: list[Path], k: int = 5, device: str = "auto") -> list[pd.DataFrame]:
    """Top-``k`` gallery items of each image file: DataFrames with rank, score, path, label_name."""
    from PIL import Image

    from harness.core.checkpoint import load_model
    from harness.core.device import pick_device
    from harness.data.transforms import eval_transform

    gi = GalleryIndex.load(index_dir)
    model, config = load_model(Path(index_dir) / MODEL_FILE)
    pre = gi.meta["preprocessing"]
    transform = eval_transform(pre["image_size"], pre["mean"], pre["std"], pre["crop_pct"])
    batch = []
    for path in images:
        try:
            with Image.open(path) as im:
                batch.append(transform(im.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot read query image {path} ({type(e).__name__}); give an image file") from None
    dev = pick_device(device)
    model.to(dev)
    with torch.no_grad():
        emb = model(torch.stack(batch).to(dev)).embeddings.float().cpu().numpy()
    scores, ids = gi.index.search(np.ascontiguousarray(emb), min(k, len(gi.items)))
    out = []
    for s, i in zip(scores, ids):
        keep = i >= 0
        rows = gi.items.iloc[i[keep]].reset_index(drop=True)
        rows.insert(0, "score", s[keep])
        rows.insert(0, "rank", np.arange(1, keep.sum() + 1))
        out.append(rows)
    return out
