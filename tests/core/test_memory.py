"""Memories of docs/METHODS.md §1: XBN/AXBN equations, Kalman filter, ring buffer, checkpoint
state, and agreement with pytorch-metric-learning's own CrossBatchMemory."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from harness.core.memory import CrossBatchMemory
from harness.core.moments import KalmanMoments, xbn_adapt
from harness.errors import ConfigError


def _batches(steps, B=12, d=6, classes=5, seed=0, drift=0.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        z = torch.randn(B, d, generator=g) * (1 + 0.3 * k * drift) + drift * k
        out.append((F.normalize(z, dim=1), torch.randint(0, classes, (B,), generator=g)))
    return out


def _grad(loss, x):
    return torch.autograd.grad(loss, x)[0] if loss.requires_grad else torch.zeros_like(x)


def test_xbn_adapt_matches_eq6_by_hand():
    g = torch.Generator().manual_seed(1)
    R = torch.randn(7, 3, generator=g, dtype=torch.float64) * 2 + 1
    Bt = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.5 - 3
    r, b = R.numpy(), Bt.numpy()
    expected = np.empty_like(r)
    for j in range(3):  # per dimension, population std, eps in the denominator
        rm, rs = r[:, j].sum() / 7, np.sqrt(((r[:, j] - r[:, j].sum() / 7) ** 2).sum() / 7)
        bm, bs = b[:, j].sum() / 5, np.sqrt(((b[:, j] - b[:, j].sum() / 5) ** 2).sum() / 5)
        expected[:, j] = (r[:, j] - rm) / (rs + 1e-6) * bs + bm
    np.testing.assert_allclose(xbn_adapt(R, Bt).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_kalman_matches_hand_computed_sequence_with_gain_interval():
    p0, q, r, g = 1.0, 0.5, 2.0, 3
    kf = KalmanMoments(p0=p0, q=q, r=r, gain_interval=g)
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 2, generator=gen, dtype=torch.float64) * (k + 1) for k in range(7)]
    # the filter by hand, plain floats, dimension 0 of the mean and dimension 1 of the std
    u_mean = u_std = P = K = None
    gains = []
    for k, batch in enumerate(batches, start=1):
        x = batch.numpy()
        v_mean, v_std = x[:, 0].mean(), x[:, 1].std()  # numpy std: population
        if k == 1:
            u_mean, u_std, P = v_mean, v_std, p0
        else:
            P = P + q
            if K is None or k % g == 0:
                K = P / (P + r / 4)
            u_mean = u_mean + K * (v_mean - u_mean)
            u_std = u_std + K * (v_std - u_std)
            P = (1 - K) * P
        gains.append(K)
        m_hat, s_hat = kf.update(batch)
        assert kf.iteration == k
        assert m_hat[0].item() == pytest.approx(u_mean, rel=1e-12)
        assert s_hat[1].item() == pytest.approx(u_std, rel=1e-12)
    # the gain is computed at k=2 (never before), recomputed at k=3 and k=6 only
    assert gains[0] is None
    assert gains[2] != gains[1] and gains[3] == gains[2] == gains[4] and gains[5] != gains[4]
    assert kf.K == pytest.approx(gains[-1])
    # state_dict round trip continues identically
    clone = KalmanMoments()
    clone.load_state_dict(kf.state_dict())
    nxt = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    a, b = kf.update(nxt), clone.update(nxt)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _pair_loss(kind, **kw):
    return CrossBatchMemory(losses.ContrastiveLoss(), 6, 30, kind=kind, **kw)


def test_axbn_with_r0_equals_xbn():
    xbn = CrossBatchMemory(losses.SupConLoss(), 6, 30, kind="xbn", miner=miners.PairMarginMiner(0.2, 0.8))
    axbn = CrossBatchMemory(
        losses.SupConLoss(), 6, 30, kind="axbn", miner=miners.PairMarginMiner(0.2, 0.8),
        kalman=KalmanMoments(r=0.0, gain_interval=3),
    )  # fmt: skip
    for z, y in _batches(8, drift=0.2):
        la, lb = xbn(z, y), axbn(z, y)
        assert torch.equal(la, lb)
        assert torch.equal(xbn.stored_embeddings(), axbn.stored_embeddings())
    assert axbn.fill == xbn.fill == 30 and float(la) > 0


def test_ring_buffer_keeps_exactly_the_newest_entries():
    mem = _pair_loss("xbm")
    seen_z, seen_y = [], []
    for z, y in _batches(7, B=8):  # 56 entries into 30 slots: wraps around
        mem(z, y)
        seen_z.append(z)
        seen_y.append(y)
        assert mem.fill == min(8 * len(seen_z), 30)
    newest_z = torch.cat(seen_z)[-30:]
    newest_y = torch.cat(seen_y)[-30:]
    order = torch.roll(torch.arange(30), -int(mem.pointer))  # oldest slot first
    assert int(mem.pointer) == 56 % 30
    assert torch.equal(mem.stored_embeddings()[order], newest_z)
    assert torch.equal(mem.labels[order], newest_y)
    assert mem.stored_embeddings().shape == (30, 6)  # preallocated, never grown


def _reference_xbn_losses(batches, loss_fn, miner, M, adaptive):
    """XBN / XBM written out literally: adapt all stored rows, overwrite, enqueue, loss."""
    R = torch.zeros(M, batches[0][0].shape[1])
    Ry = torch.zeros(M, dtype=torch.long)
    ptr = fill = 0
    out = []
    for z, y in batches:
        e = z.clone().requires_grad_()
        if adaptive and fill >= 2:
            R[:fill] = xbn_adapt(R[:fill], z)
        idx = (torch.arange(len(z)) + ptr) % M
        R[idx], Ry[idx] = z, y
        ptr, fill = (ptr + len(z)) % M, min(fill + len(z), M)
        ref, ref_y = R[:fill], Ry[:fill]
        t = miner(e, y, ref, ref_y) if miner is not None else lmu.get_all_pairs_indices(y, ref_y)
        t = lmu.remove_self_comparisons(t, idx, M)
        loss = loss_fn(e, y, t, ref, ref_y)
        out.append((loss.detach(), _grad(loss, e)))
    return out, R


@pytest.mark.parametrize(
    "make",
    [
        lambda: (losses.SupConLoss(temperature=0.1), miners.PairMarginMiner(0.2, 0.8)),
        lambda: (losses.ContrastiveLoss(), None),
        # a distance the shared-similarity path does not handle: the plain path
        lambda: (losses.ContrastiveLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False)), None),
    ],
    ids=["supcon+miner", "contrastive", "plain-path"],
)
@pytest.mark.parametrize("kind", ["xbn", "axbn-r0", "xbm"])
def test_memory_matches_literal_reference(make, kind):
    batches = _batches(9, B=10, d=5, drift=0.3, seed=3)
    ref_loss, ref_miner = make()
    expected, R = _reference_xbn_losses(batches, ref_loss, ref_miner, 24, adaptive=kind != "xbm")
    loss, miner = make()
    kw = {"kalman": KalmanMoments(r=0.0)} if kind == "axbn-r0" else {}
    plain_path = isinstance(loss.distance, distances.DotProductSimilarity) and not loss.distance.normalize_embeddings
    mem = CrossBatchMemory(loss, 5, 24, kind=kind.split("-")[0], miner=miner, fold_interval=4, **kw)
    assert mem.shared_similarity is not plain_path  # both code paths are covered
    for (z, y), (exp_loss, exp_grad) in zip(batches, expected):
        e = z.clone().requires_grad_()
        got = mem(e, y)
        torch.testing.assert_close(got.detach(), exp_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_grad(got, e), exp_grad, rtol=1e-4, atol=1e-5)
        assert float(mem.last_parts["loss.memory"]) == pytest.approx(float(exp_loss), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(mem.stored_embeddings(), R, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (losses.SupConLoss(temperature=0.1), miners.PairMarginMiner(0.2, 0.8)),
        lambda: (losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.2)),
        lambda: (losses.MultiSimilarityLoss(), None),
    ],
    ids=["supcon+pairmargin", "triplet+miner", "multisimilarity"],
)
def test_xbm_matches_pytorch_metric_learning_cross_batch_memory(make):
    loss_a, miner_a = make()
    loss_b, miner_b = make()
    ours = CrossBatchMemory(loss_a, 5, 32, kind="xbm", miner=miner_a)
    theirs = losses.CrossBatchMemory(loss_b, 5, memory_size=32, miner=miner_b)
    nonzero = 0
    for z, y in _batches(8, B=10, d=5, seed=4):
        e1, e2 = z.clone().requires_grad_(), z.clone().requires_grad_()
        a, b = ours(e1, y), theirs(e2, y)
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_grad(a, e1), _grad(b, e2), rtol=1e-4, atol=1e-6)
        nonzero += float(b.detach()) > 0
    assert nonzero >= 4  # the comparison exercised real losses
    assert torch.equal(ours.stored_embeddings(), theirs.embedding_memory)


def test_state_dict_round_trip_continues_identically():
    make = lambda: CrossBatchMemory(  # noqa: E731
        losses.SupConLoss(), 6, 30, kind="axbn", miner=miners.PairMarginMiner(0.2, 0.8)
    )
    a = make()
    batches = _batches(10, drift=0.2, seed=5)
    for z, y in batches[:6]:
        a(z, y)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert {"embeddings", "labels", "pointer", "filled", "iteration"} <= set(state)
    assert state["_extra_state"]["kalman"]["iteration"] == 6
    b = make()
    b.load_state_dict(state)
    assert b.fill == a.fill == 30 and int(b.iteration) == 6
    for z, y in batches[6:]:
        assert torch.equal(a(z, y), b(z, y))
    assert torch.equal(a.stored_embeddings(), b.stored_embeddings())


def test_kinds_parts_start_iteration_and_skipped_adaptation():
    batches = _batches(4, seed=6)
    # xbn with a single stored entry: no adaptation yet (fewer than 2 entries)
    mem = CrossBatchMemory(losses.ContrastiveLoss(), 6, 10, kind="xbn")
    z1 = batches[0][0][:1]
    mem(z1, torch.tensor([0]))
    mem(batches[1][0][:3], batches[1][1][:3])
    assert torch.equal(mem.stored_embeddings()[0], z1[0])
    # before start_iteration: the batch loss only
    mem = CrossBatchMemory(losses.ContrastiveLoss(), 6, 30, kind="xbm", start_iteration=2)
    plain = losses.ContrastiveLoss()
    for k, (z, y) in enumerate(batches):
        got = mem(z, y)
        if k < 2:
            assert torch.allclose(got, plain(z, y)) and float(mem.last_parts["loss.memory"]) == 0.0
        else:
            assert float(mem.last_parts["loss.batch"]) == 0.0 and float(mem.last_parts["loss.memory"]) == float(got)
    # xbm+batch = L(B,B) + w L(B, R∪B)
    both = CrossBatchMemory(losses.ContrastiveLoss(), 6, 30, kind="xbm+batch", batch_loss_weight=0.5)
    only = CrossBatchMemory(losses.ContrastiveLoss(), 6, 30, kind="xbm")
    for z, y in batches:
        total, mem_part = both(z, y), only(z, y)
        assert torch.allclose(total, plain(z, y) + 0.5 * mem_part)
        assert float(both.last_parts["loss.memory"]) == pytest.approx(float(mem_part))


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="proxy"):
        CrossBatchMemory(losses.ProxyAnchorLoss(4, 6), 6, 10, kind="xbm")
    CrossBatchMemory(losses.ProxyAnchorLoss(4, 6), 6, 10, kind="none")  # fine
    with pytest.raises(ConfigError, match="unknown"):
        CrossBatchMemory(losses.ContrastiveLoss(), 6, 10, kind="xbnn")
    mem = CrossBatchMemory(losses.ContrastiveLoss(), 6, 4, kind="xbm")
    with pytest.raises(ConfigError, match="does not fit"):
        mem(torch.randn(5, 6), torch.arange(5))


def test_a_loss_reused_by_a_second_memory_keeps_the_shared_path():
    loss, miner = losses.SupConLoss(), miners.PairMarginMiner(0.2, 0.8)
    first = CrossBatchMemory(loss, 6, 30, kind="xbm", miner=miner)
    second = CrossBatchMemory(loss, 6, 30, kind="xbm", miner=miner)  # e.g. a resumed run
    assert first.shared_similarity and second.shared_similarity
    z, y = _batches(1)[0]
    torch.testing.assert_close(second(z, y), losses.CrossBatchMemory(losses.SupConLoss(), 6, 30, miner=miners.PairMarginMiner(0.2, 0.8))(z, y))


@pytest.mark.parametrize("with_miner", [False, True], ids=["all-pairs", "miner"])
def test_pair_selection_adds_no_host_sync(with_miner):
    """Dropping each query's own stored copy from its pairs makes no host sync of its own
    (a host sync stalls a GPU step): without a miner the own copy is cleared in the match matrix
    before the pairs' one ``torch.where`` (which pytorch-metric-learning's all-pairs helper
    makes anyway); with a miner, one ``nonzero`` of the kept pairs instead of a boolean
    mask per index tensor. The losses stay those of test_memory_matches_literal_reference."""
    from fixtures.host_syncs import host_syncs

    miner = miners.PairMarginMiner(0.2, 0.8) if with_miner else None
    mem = CrossBatchMemory(losses.SupConLoss(), 5, 24, kind="axbn", miner=miner)
    for z, y in _batches(5, B=10, d=5, seed=2):  # fills, wraps around, then full
        e = z.clone().requires_grad_()
        with host_syncs() as syncs:
            mem(e, y).backward()
        ours = [s for s in syncs if "harness/core/memory.py" in s]
        assert not [s for s in ours if s.startswith(("index", "masked"))], ours  # no boolean masks
        assert [s.split(" ")[0] for s in ours] == ["nonzero.default"] * (1 if with_miner else 2), ours
