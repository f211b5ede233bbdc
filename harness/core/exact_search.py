"""Exact cosine k-NN search (docs/METHODS.md section 3): faiss ``IndexFlatIP`` on the CPU,
:class:`TorchExactSearch` (fp32 matmul + ``torch.topk``) on a torch device, and
:func:`knn`, which orders ties by ascending gallery index and removes a query's own
match in one-set mode. The metrics built on it are in :mod:`harness.core.metrics`
(see its docstring for the conventions and why the GPU search is torch's, not faiss's).
"""

from __future__ import annotations

from contextlib import contextmanager

import faiss
import numpy as np


def as_float32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def normalised(x) -> np.ndarray:
    """``x`` [N, d] as a fresh C-contiguous float32 array with L2-normalised rows."""
    x = np.array(as_float32(x), dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, d], got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


def gpu_available() -> bool:
    """torch can use a CUDA GPU here (the default search device then)."""
    import torch

    return torch.cuda.is_available()


class ExactCosineSearch:
    """Exact inner-product search over ``gallery`` (already L2-normalised, float32), faiss on the CPU."""

    def __init__(self, gallery: np.ndarray):
        self.n = len(gallery)
        self.cpu_index = faiss.IndexFlatIP(gallery.shape[1])
        self.cpu_index.add(gallery)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cpu_index.search(queries, min(k, self.n))


@contextmanager
def _ieee_fp32_matmul():
    """fp32 matmuls in full precision (no TF32) while searching: exact similarities."""
    import torch

    m = torch.backends.cuda.matmul
    before = m.fp32_precision
    m.fp32_precision = "ieee"
    try:
        yield
    finally:
        m.fp32_precision = before


class TorchExactSearch:
    """Exact inner-product top-k on a torch device (the training GPU); the interface of
    :class:`ExactCosineSearch`. Queries go in chunks whose similarity block stays within
    ``block_bytes``; results come back as numpy arrays, sorted by similarity."""

    def __init__(self, gallery: np.ndarray, device, block_bytes: int = 2**28):
        import torch

        self.n = len(gallery)
        self.device = torch.device(device)
        self.gallery = torch.from_numpy(np.ascontiguousarray(gallery, np.float32)).to(self.device)
        self.rows = max(1, block_bytes // (4 * max(self.n, 1)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        k = min(k, self.n)
        q = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(self.device)
        ds, idx = [], []
        with torch.no_grad(), _ieee_fp32_matmul():
            for chunk in q.split(self.rows):
                d, i = torch.topk(chunk @ self.gallery.T, k, dim=1, sorted=True)
                ds.append(d)
                idx.append(i)
        if not ds:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(ds).cpu().numpy(), torch.cat(idx).cpu().numpy()


def knn(
    query: np.ndarray,
    search: ExactCosineSearch,
    k: int,
    self_index: np.ndarray | None = None,
    margin: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery indices of each query (ties by ascending index).

    ``self_index``: in one-set mode, the gallery index of each query row, removed from
    its own neighbours. Returns (similarities, indices), [n, k'] with
    k' = min(k, gallery size minus the self match).
    """
    n_q = len(query)
    exclude = self_index is not None
    k = max(0, min(k, search.n - int(exclude)))
    if n_q == 0 or k == 0:
        return np.zeros((n_q, 0), np.float32), np.zeros((n_q, 0), np.int64)
    out_d = np.empty((n_q, k), np.float32)
    out_i = np.empty((n_q, k), np.int64)
    rows = np.arange(n_q)
    fetch = k + int(exclude) + margin
    while len(rows):
        d, i = search.search(query[rows], fetch)
        fetched = d.shape[1]
        # Ties: order by (-similarity, index); faiss's own order among ties varies.
        order = np.lexsort((i, -d), axis=1)
        d = np.take_along_axis(d, order, 1)
        i = np.take_along_axis(i, order, 1)
        if exclude:
            is_self = i == np.asarray(self_index)[rows][:, None]
            # Rows without their own index (many exact duplicates ahead of it): drop
            # the last hit instead, as AccuracyCalculator does.
            is_self[~is_self.any(1), -1] = True
            keep = ~is_self
            d = d[keep].reshape(len(rows), fetched - 1)
            i = i[keep].reshape(len(rows), fetched - 1)
        # A tie spanning the k-th hit and the last fetched hit may continue past the
        # fetched ones: redo those rows with a wider search.
        unsure = (d[:, k - 1] == d[:, -1]) & (fetched < search.n)
        done = ~unsure
        out_d[rows[done]] = d[done, :k]
        out_i[rows[done]] = i[done, :k]
        rows = rows[unsure]
        fetch = min(search.n, max(2 * fetch, fetch + 16))
    return out_d, out_i
