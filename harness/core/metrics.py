"""Retrieval metrics by exact cosine search (METHODS.md section 3).

Cosine similarity = inner product of L2-normalised float32 embeddings, searched exactly
with faiss ``IndexFlatIP`` (on GPU when faiss has GPUs), in chunks of queries: only
``chunk x k`` results exist at a time, never an N x N matrix. ``k`` is what the metrics
need: max(ks) and the largest R (positives of a query), plus one for the self match in
one-set mode.

Conventions (they match pytorch-metric-learning's ``AccuracyCalculator`` with its
default exact faiss k-NN, ``k="max_bin_count"``, ``avg_of_avgs=False``):

* Ties (equal similarity) are ordered by ascending gallery index; where a tie crosses
  the k-th position, the search is widened for that query until the tie is inside.
* One-set mode: the query's own index is removed from its neighbours wherever it
  lands among equal scores (duplicates), and R = (count of its label) - 1.
* Queries with R = 0 (a class of one image in one-set mode, or a query label absent
  from the gallery) are excluded from every metric and counted in ``n_skipped``.
* Metrics are micro-averages over the remaining ``n_queries`` queries; NaN if none.
"""

from __future__ import annotations

import functools
from typing import Sequence

import faiss
import numpy as np


def _as_float32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _normalised(x) -> np.ndarray:
    x = np.array(_as_float32(x), dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, d], got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


def _labels(y) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    return np.asarray(y).reshape(-1).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    return faiss.StandardGpuResources()


# faiss GPU k-selection handles k up to 2048.
_GPU_MAX_K = 2048


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ExactCosineSearch:
    """Exact inner-product search over ``gallery`` (already L2-normalised, float32)."""

    def __init__(self, gallery: np.ndarray, use_gpu: bool | None = None):
        self.n = len(gallery)
        self.cpu_index = faiss.IndexFlatIP(gallery.shape[1])
        self.cpu_index.add(gallery)
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self.gpu_index = None
        if self.use_gpu:
            self.gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self.cpu_index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n)
        index = self.gpu_index if self.gpu_index is not None and k <= _GPU_MAX_K else self.cpu_index
        return index.search(queries, k)


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


def _accumulate(hits: np.ndarray, r: np.ndarray, ks: Sequence[int]):
    """Per-query recall@k for each k, R-precision and AP@R from the hit matrix [n, k]."""
    n, kmax = hits.shape
    pos = np.arange(1, kmax + 1)
    within_r = pos[None, :] <= r[:, None]
    rel = hits & within_r
    r_safe = np.maximum(r, 1).astype(np.float64)
    r_precision = rel.sum(1) / r_safe
    precision_at = np.cumsum(rel, axis=1) / pos[None, :]
    ap_at_r = (precision_at * rel).sum(1) / r_safe
    recalls = {kk: hits[:, : min(kk, kmax)].any(1) for kk in ks}
    return recalls, r_precision, ap_at_r


def retrieval_metrics(
    query,
    query_labels,
    gallery=None,
    gallery_labels=None,
    ks: Sequence[int] = (1,),
    chunk_size: int = 8192,
    use_gpu: bool | None = None,
) -> dict:
    """Recall@k, MAP@R and R-precision (METHODS.md section 3).

    One-set mode when ``gallery`` is None: each query against all other queries.
    Returns ``{"recall@k" for k in ks, "map@r", "r_precision", "n_queries", "n_skipped"}``.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    q = _normalised(query)
    q_labels = _labels(query_labels)
    one_set = gallery is None
    if one_set:
        g, g_labels = q, q_labels
    else:
        g = _normalised(gallery)
        g_labels = _labels(gallery_labels)
        if g.shape[1] != q.shape[1]:
            raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if len(q) != len(q_labels) or len(g) != len(g_labels):
        raise ValueError("embeddings and labels must have the same length")

    # R per query: gallery items sharing its label (minus itself in one-set mode).
    uniq, counts = np.unique(g_labels, return_counts=True)
    pos = np.searchsorted(uniq, q_labels)
    pos_c = np.minimum(pos, max(len(uniq) - 1, 0))
    if len(uniq):
        r = np.where(uniq[pos_c] == q_labels, counts[pos_c], 0) - int(one_set)
    else:
        r = np.zeros(len(q), np.int64)
    r = np.maximum(r, 0)
    valid = r > 0

    result = {f"recall@{k}": float("nan") for k in ks}
    result.update({"map@r": float("nan"), "r_precision": float("nan")})
    n_valid = int(valid.sum())
    result.update({"n_queries": n_valid, "n_skipped": int(len(q) - n_valid)})
    if n_valid == 0:
        return result

    k = max(ks[-1], int(r.max()))
    search = ExactCosineSearch(g, use_gpu=use_gpu)
    hit_sums = {kk: 0 for kk in ks}
    rp_sum = ap_sum = 0.0
    valid_idx = np.flatnonzero(valid)
    # Only queries with positives are searched; chunks bound the result memory.
    for start in range(0, len(valid_idx), chunk_size):
        rows = valid_idx[start : start + chunk_size]
        _, nn = knn(q[rows], search, k, self_index=rows if one_set else None)
        hits = g_labels[nn] == q_labels[rows][:, None]
        recalls, rp, ap = _accumulate(hits, r[rows], ks)
        for kk in ks:
            hit_sums[kk] += int(recalls[kk].sum())
        rp_sum += float(rp.sum())
        ap_sum += float(ap.sum())
    for kk in ks:
        result[f"recall@{kk}"] = hit_sums[kk] / n_valid
    result["map@r"] = ap_sum / n_valid
    result["r_precision"] = rp_sum / n_valid
    return result
