"""retrieval_metrics equals pytorch-metric-learning's AccuracyCalculator (docs/METHODS.md section 3).

Convention being checked: AccuracyCalculator(k="max_bin_count", avg_of_avgs=False) with
its default exact faiss k-NN, whose exact ties come out by ascending reference index;
queries without positives (lone classes) are excluded from every metric.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from harness.core import metrics as M
from harness.core.metrics import retrieval_metrics

CALC = AccuracyCalculator(
    include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
    k="max_bin_count",
    device=torch.device("cpu"),
)


def clustered(seed, n_classes=40, d=16, noise=0.8, n_dup=30):
    """Clusters of 1..8 images (size-1 classes included), plus exact duplicates: half
    in their own class, half relabelled to another class (ties across labels)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, n_classes)
    sizes[:3] = 1
    y = np.repeat(np.arange(n_classes), sizes)
    x = rng.standard_normal((n_classes, d))[y] + noise * rng.standard_normal((len(y), d))
    dup = rng.choice(len(y), n_dup, replace=False)
    x = np.concatenate([x, x[dup]])
    y = np.concatenate([y, np.where(np.arange(n_dup) % 2 == 0, y[dup], (y[dup] + 1) % n_classes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = rng.permutation(len(y))
    return x[p].astype(np.float32), y[p]


def assert_same(ours, theirs):
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_one_set_matches_accuracy_calculator(seed):
    x, y = clustered(seed)
    ours = retrieval_metrics(x, y, ks=(1, 4))
    assert_same(ours, CALC.get_accuracy(x, y))
    lone = np.sum(np.bincount(y)[y] == 1)
    assert ours["n_skipped"] == lone > 0 and ours["n_queries"] == len(y) - lone


@pytest.mark.parametrize("seed", range(4))
def test_query_gallery_matches_accuracy_calculator(seed):
    x, y = clustered(seed + 10)
    n = len(x) // 2
    ours = retrieval_metrics(x[:n], y[:n], x[n:], y[n:], ks=(1,))
    assert_same(ours, CALC.get_accuracy(x[:n], y[:n], x[n:], y[n:]))
    assert ours["n_skipped"] == int(np.sum(~np.isin(y[:n], y[n:])))


def test_many_exact_duplicates_tie_across_k_boundary(monkeypatch):
    """Groups of identical vectors spanning the k-th hit: the search must widen."""
    ks_asked = []
    orig = M.ExactCosineSearch.search
    monkeypatch.setattr(M.ExactCosineSearch, "search", lambda self, q, k: ks_asked.append(k) or orig(self, q, k))
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)  # AccuracyCalculator searches by L2
    x = np.repeat(base, 10, axis=0)  # 6 points, 10 copies each
    y = np.tile(np.arange(4), 15)  # labels cycle within a group of copies; R = 14
    p = rng.permutation(len(y))
    x, y = x[p], y[p]
    ours = retrieval_metrics(x, y, ks=(1, 2))
    assert_same(ours, CALC.get_accuracy(x, y))
    assert len(set(ks_asked)) > 1  # some rows were searched again, wider
    xq, yq, xg, yg = x[:20], y[:20], x[20:], y[20:]
    assert_same(retrieval_metrics(xq, yq, xg, yg), CALC.get_accuracy(xq, yq, xg, yg))


def test_hand_computed_example():
    # 1-D-like embeddings on a circle: neighbours by angle.
    ang = np.array([0.0, 0.1, 0.25, 1.0, 1.1, 3.0])
    x = np.stack([np.cos(ang), np.sin(ang)], 1)
    y = np.array([0, 1, 0, 1, 1, 2])
    m = retrieval_metrics(x, y, ks=(1, 2))
    # q0 (y0, R=1): nn 0.1(y1), 0.25(y0) -> R@1 0, R@2 1, RP 0, AP 0
    # q1 (y1, R=2): nn 0.0(y0), 0.25(y0) -> 0, 0, RP 0, AP 0
    # q2 (y0, R=1): nn 0.1(y1), 0.0(y0) -> 0, 1, 0, 0
    # q3 (y1, R=2): nn 1.1(y1), 0.25(y0) -> 1, 1, RP 1/2, AP (1/1)/2
    # q4 (y1, R=2): nn 1.0(y1), 0.25(y0) -> 1, 1, 1/2, 1/2
    # q5 lone (y2): skipped
    assert m["n_queries"] == 5 and m["n_skipped"] == 1
    assert m["recall@1"] == pytest.approx(2 / 5)
    assert m["recall@2"] == pytest.approx(4 / 5)
    assert m["r_precision"] == pytest.approx(1 / 5)
    assert m["map@r"] == pytest.approx(1 / 5)


def test_chunking_and_torch_inputs_give_same_result():
    x, y = clustered(5)
    full = retrieval_metrics(x, y, ks=(1, 2, 8))
    chunked = retrieval_metrics(torch.from_numpy(x) * 3.0, torch.from_numpy(y), ks=(8, 1, 2), chunk_size=7)
    assert chunked == pytest.approx(full)


def test_search_k_is_what_metrics_need(monkeypatch):
    """k = max(ks, largest R) (+1 self, + a small tie margin), never the whole gallery,
    and each search call holds at most one chunk of queries."""
    calls = []
    orig = M.ExactCosineSearch.search

    def spy(self, queries, k):
        calls.append((len(queries), k))
        return orig(self, queries, k)

    monkeypatch.setattr(M.ExactCosineSearch, "search", spy)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(200), rng.integers(2, 7, 200))
    x = rng.standard_normal((len(y), 32)).astype(np.float32)
    retrieval_metrics(x, y, ks=(1, 2), chunk_size=100)
    assert calls and max(n for n, _ in calls) <= 100
    largest_r = np.bincount(y).max() - 1
    assert calls[0][1] <= largest_r + 1 + 4 < len(y)


def test_no_positives_anywhere_gives_nan():
    m = retrieval_metrics(np.eye(3), [0, 1, 2], ks=(1,))
    assert m["n_queries"] == 0 and m["n_skipped"] == 3 and np.isnan(m["recall@1"])
    empty = retrieval_metrics(np.zeros((0, 4)), np.zeros(0), ks=(1,))
    assert empty["n_queries"] == 0 and np.isnan(empty["map@r"])


@pytest.mark.slow
def test_eval_speed_benchmark_smoke():
    """benchmarks/eval_speed.py end to end, tiny: the three contenders run and agree."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_speed.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--n", "1200", "--classes", "240", "--dim", "32", "--noise", "1.5"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for name in ("bare faiss search", "ours retrieval_metrics", "AccuracyCalculator"):
        assert name in out
    assert "metrics agree with AccuracyCalculator: yes" in out


@pytest.fixture
def symmetric_path(monkeypatch):
    """Force the CPU one-set symmetric blocked search at test sizes, small blocks."""
    monkeypatch.setattr(M, "_SYMMETRIC_MIN_N", 0)
    monkeypatch.setattr(M, "_SYMMETRIC_BLOCK", 37)
    monkeypatch.setattr(M, "gpu_available", lambda: False)


@pytest.mark.parametrize("seed", range(4))
def test_symmetric_one_set_matches_accuracy_calculator(seed, symmetric_path):
    x, y = clustered(seed)
    ours = retrieval_metrics(x, y, ks=(1, 4))
    assert_same(ours, CALC.get_accuracy(x, y))


def test_symmetric_topk_is_exact_order():
    """Small-integer vectors: every product is exact in float32 (any summation order),
    with many ties, so the reference is a full product sorted by (-sim, index)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, (300, 6)).astype(np.float32)
    full = x.astype(np.float64) @ x.T.astype(np.float64)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), full.shape), -full), axis=1)
    for block in (5, 64, 4096):
        for fetch in (1, 9, 300):
            d, i = M.symmetric_topk(x, fetch, block=block)
            np.testing.assert_array_equal(i, order[:, :fetch])
            np.testing.assert_array_equal(d, np.take_along_axis(full, i, 1).astype(np.float32))


def test_symmetric_ties_across_k_boundary(symmetric_path, monkeypatch):
    ks_asked = []
    orig = M.ExactCosineSearch.search
    monkeypatch.setattr(M.ExactCosineSearch, "search", lambda self, q, k: ks_asked.append(k) or orig(self, q, k))
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    x = np.repeat(base, 10, axis=0)
    y = np.tile(np.arange(4), 15)
    p = rng.permutation(len(y))
    x, y = x[p], y[p]
    assert_same(retrieval_metrics(x, y, ks=(1, 2)), CALC.get_accuracy(x, y))
    assert ks_asked  # rows whose tie crossed the candidates were searched again
