"""Retrieval metrics by exact cosine search (docs/METHODS.md section 3).

Cosine similarity = inner product of L2-normalised float32 embeddings, searched exactly
with faiss ``IndexFlatIP`` on the CPU, or with :class:`TorchExactSearch` (fp32 matmul +
``torch.topk`` in gallery-bounded query chunks) on a CUDA device, in chunks of queries:
only ``chunk x k`` results exist at a time, never an N x N matrix. ``k`` is what the metrics
need: max(ks) and the largest R (positives of a query), plus one for the self match in
one-set mode. One-set mode on CPU (from ``_SYMMETRIC_MIN_N`` items) uses
``symmetric_topk`` instead: each block of the symmetric Gram matrix is multiplied once
and serves both its rows and its columns (half the FLOPs), same conventions.

Conventions (they match pytorch-metric-learning's ``AccuracyCalculator`` with its
default exact faiss k-NN, ``k="max_bin_count"``, ``avg_of_avgs=False``):

* Ties (equal similarity) are ordered by ascending gallery index; where a tie crosses
  the k-th position, the search is widened for that query until the tie is inside.
* One-set mode: the query's own index is removed from its neighbours wherever it
  lands among equal scores (duplicates), and R = (count of its label) - 1.
* Queries with R = 0 (a class of one image in one-set mode, or a query label absent
  from the gallery) are excluded from every metric and counted in ``n_skipped``.
* Metrics are micro-averages over the remaining ``n_queries`` queries; NaN if none.

GPU search is torch's, not faiss's: the ``faiss-gpu-cu12`` wheels carry kernels for
sm_70/sm_80 only (no PTX: "no kernel image" on H100/H200) and their own CUDA 12 runtime
beside torch's, and they install into the same ``faiss`` package as ``faiss-cpu``.
A torch matmul runs on every GPU torch itself runs on. Both paths order ties by
ascending gallery index through :func:`knn`. Any failure of the GPU path (out of
memory, a CUDA error) logs one warning and the metrics are computed on the CPU.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import numpy as np

from harness.core.exact_search import (
    ExactCosineSearch,
    TorchExactSearch,
    gpu_available,
    knn,
    normalised,
)

log = logging.getLogger(__name__)


def _labels(y) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    return np.asarray(y).reshape(-1).astype(np.int64)


# One-set mode on CPU, from this many items up: the symmetric blocked search below
# (half the matrix products of a full search). Smaller sets use faiss directly.
_SYMMETRIC_MIN_N = 16384
_SYMMETRIC_BLOCK = 4096
_KEY_MIN = -(2**63)


def _keys(vals, idx):
    """int64 keys ordering (similarity descending, index ascending) as larger-is-better."""
    import torch

    vals = vals + 0.0  # -0.0 -> +0.0 (equal similarities must share a key prefix)
    b = vals.contiguous().view(torch.int32)
    b = b ^ ((b >> 31) & 0x7FFFFFFF)  # monotone in the float's value
    return (b.to(torch.int64) << 32) + (0xFFFFFFFF - idx.to(torch.int64))


def _key_values(keys):
    import torch

    b = (keys >> 32).to(torch.int32)
    b = b ^ ((b >> 31) & 0x7FFFFFFF)
    return b.view(torch.float32)


def _key_indices(keys):
    return 0xFFFFFFFF - (keys & 0xFFFFFFFF)


def symmetric_topk(x: np.ndarray, fetch: int, block: int | None = None):
    """Top ``fetch`` of every row of x xᵀ (self match included), ordered by
    (-similarity, index), without ever holding more than a block x block product.

    The Gram matrix is symmetric: each block pair (i, j >= i) is multiplied once and
    feeds the rows of block i (row-wise) and of block j (column-wise), so both sides see
    identical values. Entries below a row's current ``fetch``-th best similarity are
    skipped; entries equal to it are kept (a tie may still win by a smaller index).
    Returns (similarities float32 [N, fetch], indices int64 [N, fetch]).
    """
    import torch

    n = len(x)
    fetch = min(fetch, n)
    block = block or _SYMMETRIC_BLOCK
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    keys = torch.full((n, fetch), 0, dtype=torch.int64)
    keys[:] = _keys(torch.tensor([-np.inf], dtype=torch.float32), torch.tensor([0xFFFFFFFF]))
    thr = torch.full((n,), -np.inf, dtype=torch.float32)
    starts = list(range(0, n, block))

    def merge(rows, idx, vals):
        if len(rows) == 0:
            return
        new = _keys(vals, idx)
        urows, inv, counts = torch.unique(rows, return_inverse=True, return_counts=True)
        perm = torch.argsort(inv, stable=True)
        inv_s = inv[perm]
        offs = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(rows)) - offs[inv_s]
        dense = torch.full((len(urows), int(counts.max())), _KEY_MIN, dtype=torch.int64)
        dense[inv_s, pos] = new[perm]
        top = torch.topk(torch.cat([keys[urows], dense], 1), fetch, dim=1, sorted=True).values
        keys[urows] = top
        thr[urows] = _key_values(top[:, -1])

    # Reused buffers: a fresh 64 MB product per block pair costs page faults.
    buf = torch.empty(min(block, n) ** 2, dtype=torch.float32)
    mask1 = torch.empty(min(block, n) ** 2, dtype=torch.bool)
    mask2 = torch.empty(min(block, n) ** 2, dtype=torch.bool)

    def product(a, b):
        xa, xb = xt[a : a + block], xt[b : b + block]
        s = buf[: len(xa) * len(xb)].view(len(xa), len(xb))
        torch.mm(xa, xb.T, out=s)
        return s

    # Diagonal blocks first: they give every row a first threshold.
    for a in starts:
        s = product(a, a)
        t = thr[a : a + len(s)]
        if s.shape[1] >= fetch:
            t = torch.maximum(t, torch.topk(s, fetch, dim=1, sorted=False).values.amin(1))
        m = mask1[: s.numel()].view(s.shape)
        torch.ge(s, t[:, None], out=m)
        r, c = m.nonzero(as_tuple=True)
        merge(r + a, c + a, s[r, c])
    for ia, a in enumerate(starts):
        for b in starts[ia + 1 :]:
            s = product(a, b)
            ta, tb = thr[a : a + s.shape[0]], thr[b : b + s.shape[1]]
            m1 = mask1[: s.numel()].view(s.shape)
            m2 = mask2[: s.numel()].view(s.shape)
            torch.ge(s, ta[:, None], out=m1)
            torch.ge(s, tb[None, :], out=m2)
            m1 |= m2
            r, c = m1.nonzero(as_tuple=True)
            v = s[r, c]
            side_a = v >= ta[r]  # candidate for row a + r (gallery index b + c)
            side_b = v >= tb[c]  # candidate for row b + c (gallery index a + r)
            merge(
                torch.cat([r[side_a] + a, c[side_b] + b]),
                torch.cat([c[side_a] + b, r[side_b] + a]),
                torch.cat([v[side_a], v[side_b]]),
            )
    return _key_values(keys).numpy().copy(), _key_indices(keys).numpy().copy()


def _one_set_neighbours(q, rows, sym_d, sym_i, k, search) -> np.ndarray:
    """``knn``'s self removal and tie check applied to ``symmetric_topk`` candidates."""
    n, fetched = len(q), sym_d.shape[1]
    d, i = sym_d[rows], sym_i[rows]
    is_self = i == rows[:, None]
    is_self[~is_self.any(1), -1] = True  # as in knn: drop the last hit instead
    keep = ~is_self
    d = d[keep].reshape(len(rows), fetched - 1)
    i = i[keep].reshape(len(rows), fetched - 1)
    nn = i[:, :k].copy()
    unsure = (d[:, k - 1] == d[:, -1]) & (fetched < n)
    if unsure.any():
        redo = rows[unsure]
        nn[unsure] = knn(q[redo], search(), k, self_index=redo, margin=2 * fetched)[1]
    return nn


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
    device=None,
) -> dict:
    """Recall@k, MAP@R and R-precision (docs/METHODS.md section 3).

    One-set mode when ``gallery`` is None: each query against all other queries.
    Returns ``{"recall@k" for k in ks, "map@r", "r_precision", "n_queries", "n_skipped"}``.
    The search runs on ``device`` when it is a CUDA device; without a device, on the
    GPU when ``use_gpu`` (default: :func:`gpu_available`), else on the CPU. A GPU
    failure falls back to the CPU with one warning.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    q = normalised(query)
    q_labels = _labels(query_labels)
    one_set = gallery is None
    if one_set:
        g, g_labels = q, q_labels
    else:
        g = normalised(gallery)
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
    gpu_device = _gpu_device(device, use_gpu)
    if gpu_device is not None:
        try:
            search = TorchExactSearch(g, gpu_device)
            return _search_metrics(result, q, q_labels, g_labels, r, valid, ks, k, one_set, chunk_size, search)
        except Exception as e:  # noqa: BLE001 - any GPU failure: the CPU path is exact too
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("GPU retrieval search on %s failed (%s: %s); evaluating on the CPU",
                        gpu_device, type(e).__name__, first)
            _release_gpu_memory()
    if one_set and len(q) >= _SYMMETRIC_MIN_N:
        # One-set mode on CPU: one symmetric blocked pass gives every item its
        # candidates (self + k + margin, ordered by (-similarity, index)); faiss only
        # re-searches the rare rows whose tie crosses the last candidate.
        k = min(k, len(q) - 1)
        sym_d, sym_i = symmetric_topk(q, k + 1 + 4)
        fallback = functools.lru_cache(maxsize=1)(lambda: ExactCosineSearch(g))
        return _search_metrics(result, q, q_labels, g_labels, r, valid, ks, k, one_set, chunk_size,
                               fallback, symmetric=(sym_d, sym_i))
    return _search_metrics(result, q, q_labels, g_labels, r, valid, ks, k, one_set, chunk_size,
                           ExactCosineSearch(g))


def _gpu_device(device, use_gpu: bool | None):
    """The device of the torch search, or None for the CPU (faiss / symmetric) path.

    ``use_gpu=True`` with a CPU ``device`` runs the torch search on the CPU: the GPU
    code path, checked against faiss by the tests and ``harness doctor``."""
    import torch

    if device is not None:
        device = torch.device(device)
        if device.type == "cpu":
            return device if use_gpu is True else None
        return device if use_gpu is not False else None
    if use_gpu is None:
        use_gpu = gpu_available()
    return torch.device("cuda") if use_gpu else None


def _release_gpu_memory() -> None:
    import torch

    try:
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a broken CUDA context: nothing to release
        pass


def _search_metrics(result, q, q_labels, g_labels, r, valid, ks, k, one_set, chunk_size, search,
                    symmetric=None) -> dict:
    """The metrics' sums over query chunks, with ``search`` (or symmetric candidates)."""
    result = dict(result)
    n_valid = int(valid.sum())
    hit_sums = {kk: 0 for kk in ks}
    rp_sum = ap_sum = 0.0
    valid_idx = np.flatnonzero(valid)
    # Only queries with positives are searched; chunks bound the result memory.
    for start in range(0, len(valid_idx), chunk_size):
        rows = valid_idx[start : start + chunk_size]
        if symmetric is not None:
            nn = _one_set_neighbours(q, rows, symmetric[0], symmetric[1], k, search)
        else:
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
