"""Embed a dataset with a model and score a retrieval split (docs/METHODS.md section 3).

``embed`` runs the model in eval mode over a DataLoader (workers + pinned memory on
CUDA, autocast when asked: the backbone only, as ``EmbeddingModel.forward`` runs
pooling, head and normalisation in fp32 outside autocast) and returns the
L2-normalised ``ModelOutput.embeddings`` as float32 on the CPU. Corrupt images are dropped together with their labels.
``save_embeddings`` / ``load_embeddings`` keep a split's embeddings so its metrics can
be recomputed later without the model.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from harness.core.finite import check_embeddings
from harness.core.metrics import retrieval_metrics
from harness.data.datasets import collate_skip_corrupt
from harness.errors import DataError

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(
    model: torch.nn.Module,
    dataset,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    loader_for=None,
) -> tuple[torch.Tensor, np.ndarray]:
    """-> (embeddings float32 [N, d] on CPU, labels int64 [N]) of the readable images.

    ``loader_for(dataset)``: a DataLoader to use instead of a fresh one (the training
    loop's persistent validation loaders, ``harness.core.loaders.EvalLoaders``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cuda = device.type == "cuda"
    if loader_for is not None:
        loader = loader_for(dataset)
    else:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
            pin_memory=cuda, collate_fn=collate_skip_corrupt,
        )
    was_training = model.training
    model.eval()
    chunks, labels, n_corrupt = [], [], 0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    try:
        for images, batch_labels, n_skipped in loader:
            n_corrupt += n_skipped
            if len(batch_labels) == 0:
                continue
            with autocast:
                out = model(images.to(device, non_blocking=cuda))
            emb = out.embeddings if hasattr(out, "embeddings") else out
            chunks.append(emb.float())  # stays on the device: one copy at the end
            labels.append(batch_labels)
    finally:
        model.train(was_training)
    if n_corrupt:
        log.warning("skipped %d corrupt image(s) while embedding", n_corrupt)
    if not chunks:
        d = getattr(getattr(model, "head", None), "out_features", 0)
        return torch.zeros((0, d)), np.zeros(0, np.int64)
    embeddings = torch.cat(chunks)
    check_embeddings(embeddings)  # NaN/inf: a diverged model, not a result
    return embeddings.cpu(), torch.cat(labels).numpy().astype(np.int64)


def embed_split(model, split, batch_size=256, device=None, workers=0, amp_dtype=None, loader_for=None) -> dict:
    """{"query": (emb ndarray, labels), "gallery": (emb, labels) | None}."""
    kw = dict(batch_size=batch_size, device=device, workers=workers, amp_dtype=amp_dtype, loader_for=loader_for)
    q, ql = embed(model, split.query, **kw)
    out = {"query": (q.numpy(), ql), "gallery": None}
    if split.gallery is not None:
        g, gl = embed(model, split.gallery, **kw)
        out["gallery"] = (g.numpy(), gl)
    return out


def metrics_of(embedded: dict, ks: Sequence[int] = (1,), device=None) -> dict:
    """``retrieval_metrics`` of the output of ``embed_split`` / ``load_embeddings``.

    ``device``: a CUDA device searches there (exact torch top-k, ``metrics.py``)."""
    q, ql = embedded["query"]
    if embedded.get("gallery") is None:
        return retrieval_metrics(q, ql, ks=ks, device=device)
    g, gl = embedded["gallery"]
    return retrieval_metrics(q, ql, g, gl, ks=ks, device=device)


def evaluate_split(
    model,
    split,
    ks: Sequence[int] = (1,),
    device=None,
    batch_size: int = 256,
    workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    loader_for=None,
) -> dict:
    """Embed a ``RetrievalSplit`` and return ``retrieval_metrics`` (one-set or query/gallery)."""
    embedded = embed_split(model, split, batch_size, device, workers, amp_dtype, loader_for)
    return metrics_of(embedded, ks, device=device)


# ---------------------------------------------------------------- saved embeddings


def save_embeddings(embedded: dict, path: str | Path, split: str = "test") -> Path:
    """Write embeddings: ``.parquet`` (columns split, role, label, embedding: list<float32>),
    ``.npz`` (query/gallery arrays) or ``.npy`` (a record array with the same fields)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [("query", *embedded["query"])]
    if embedded.get("gallery") is not None:
        parts.append(("gallery", *embedded["gallery"]))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        roles, labels, embs = [], [], []
        for role, e, y in parts:
            roles += [role] * len(y)
            labels.append(np.asarray(y, np.int64))
            embs.append(np.asarray(e, np.float32))
        emb = np.concatenate(embs)
        d = emb.shape[1] if emb.ndim == 2 else 0
        values = pa.array(emb.reshape(-1), type=pa.float32())
        table = pa.table({
            "split": pa.array([split] * len(roles), pa.string()),
            "role": pa.array(roles, pa.string()),
            "label": pa.array(np.concatenate(labels), pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(values, d).cast(pa.list_(pa.float32())),
        })
        pq.write_table(table, path)
    elif suffix == ".npz":
        arrays = {"split": np.array(split)}
        for role, e, y in parts:
            arrays[f"{role}_embeddings"] = np.asarray(e, np.float32)
            arrays[f"{role}_labels"] = np.asarray(y, np.int64)
        np.savez(path, **arrays)
    elif suffix == ".npy":
        d = np.asarray(parts[0][1]).shape[1]
        dtype = np.dtype([("split", "U16"), ("role", "U8"), ("label", "i8"), ("embedding", "f4", (d,))])
        rec = np.concatenate([
            np.array([(split, role, y_i, e_i) for e_i, y_i in zip(np.asarray(e, np.float32), y)], dtype=dtype)
            if len(y) else np.zeros(0, dtype)
            for role, e, y in parts
        ])
        np.save(path, rec, allow_pickle=False)
    else:
        raise DataError(f"--save-embeddings {path}: use a .parquet, .npz or .npy file name")
    return path


def load_embeddings(path: str | Path) -> dict:
    """Read a file from ``save_embeddings`` -> {"split", "query": (emb, labels), "gallery": ... | None}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embeddings file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            t = pq.read_table(path)
            roles = np.asarray(t.column("role").to_pylist())
            labels = t.column("label").to_numpy()
            col = t.column("embedding").combine_chunks()
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            emb = flat.reshape(len(t), -1) if len(t) else np.zeros((0, 0), np.float32)
            split = t.column("split")[0].as_py() if len(t) else ""
        elif suffix == ".npz":
            with np.load(path) as z:
                out = {"split": str(z["split"]), "query": (z["query_embeddings"], z["query_labels"]), "gallery": None}
                if "gallery_embeddings" in z:
                    out["gallery"] = (z["gallery_embeddings"], z["gallery_labels"])
                return out
        elif suffix == ".npy":
            rec = np.load(path, allow_pickle=False)
            roles, labels, emb = rec["role"], rec["label"], rec["embedding"]
            split = str(rec["split"][0]) if len(rec) else ""
        else:
            raise DataError(f"{path}: not a .parquet, .npz or .npy embeddings file")
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: not an embeddings file written by harness eval ({e})") from None
    out = {"split": split, "query": (emb[roles == "query"], labels[roles == "query"]), "gallery": None}
    if (roles == "gallery").any():
        out["gallery"] = (emb[roles == "gallery"], labels[roles == "gallery"])
    return out


# ---------------------------------------------------------------- items by position


class _WithPosition(torch.utils.data.Dataset):
    """Yields (image, position): embedding then tells which items were readable."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return None if item is None else (item[0], i)


def embed_positions(model, dataset, batch_size: int = 256, device=None, workers: int = 0,
                    amp_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """-> (embeddings float32 [M, d], positions int64 [M]) of the readable items of
    ``dataset`` (labels: ``dataset.labels[positions]``); for indexes and pictures."""
    emb, positions = embed(model, _WithPosition(dataset), batch_size=batch_size, device=device,
                           workers=workers, amp_dtype=amp_dtype)
    return emb.numpy(), positions
