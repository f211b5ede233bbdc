"""The memory computes with views of the user's loss and miner, never modifying them."""

import pytest
import torch
from pytorch_metric_learning import distances, losses, miners

from harness.core.losses import is_proxy_loss
from harness.core.memory import CrossBatchMemory
from harness.core.shared_similarity import SharedSimilarity


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(12, 6, generator=g), dim=1)
    return z, torch.arange(12) % 4


@pytest.mark.parametrize("kind", ["xbm", "xbn", "axbn", "xbm+batch"])
def test_the_callers_loss_and_miner_are_unchanged(kind):
    loss, miner = losses.SupConLoss(), miners.PairMarginMiner(0.2, 0.8)
    loss_distance, miner_distance = loss.distance, miner.distance
    loss_modules, miner_modules = dict(loss._modules), dict(miner._modules)
    mem = CrossBatchMemory(loss, 6, 30, kind=kind, miner=miner)
    assert mem.shared_similarity  # the path that used to swap the distance in
    for seed in range(3):
        z, y = _batch(seed)
        mem(z.requires_grad_(), y).backward()
    assert loss.distance is loss_distance and miner.distance is miner_distance
    assert type(loss.distance) is distances.CosineSimilarity
    assert type(miner.distance) is distances.LpDistance
    assert dict(loss._modules) == loss_modules and dict(miner._modules) == miner_modules
    assert not any(isinstance(m, SharedSimilarity) for m in [*loss.modules(), *miner.modules()])
    # the memory still holds (and checkpoints) the user's objects, once
    assert mem.loss is loss and mem.miner is miner
    assert not any(k.startswith("_compute") for k in mem.state_dict())


def test_the_callers_loss_still_computes_its_own_value_after_use():
    loss = losses.ContrastiveLoss()
    z, y = _batch()
    before = loss(z, y)
    mem = CrossBatchMemory(loss, 6, 30, kind="xbn")
    for seed in range(3):
        mem(*_batch(seed))
    torch.testing.assert_close(loss(z, y), before)


def test_train_and_eval_mode_reach_the_views():
    mem = CrossBatchMemory(losses.SupConLoss(), 6, 30, kind="xbm", miner=miners.PairMarginMiner(0.2, 0.8))
    mem.eval()
    assert not mem._compute_loss.training and not mem._compute_miner.training and not mem.loss.training
    mem.train()
    assert mem._compute_loss.training and mem._compute_miner.training


def test_one_definition_of_a_proxy_loss():
    assert is_proxy_loss("ProxyAnchorLoss") and is_proxy_loss(losses.ProxyAnchorLoss(4, 6))
    assert not is_proxy_loss("SupConLoss") and not is_proxy_loss(losses.SupConLoss())
    # an instance with parameters of its own counts, whatever its class
    assert is_proxy_loss(losses.MarginLoss(learn_beta=True)) and not is_proxy_loss("MarginLoss")
    assert not is_proxy_loss("NoSuchLoss")


def test_stored_embeddings_fold_the_pending_adaptation():
    mem = CrossBatchMemory(losses.SupConLoss(), 6, 30, kind="xbn")
    for seed in range(3):
        mem(*_batch(seed))
    assert mem._pending  # the shared-similarity path keeps the affine pending
    folded = mem.stored_embeddings()
    assert not mem._pending and folded is mem._buffers["embeddings"]
