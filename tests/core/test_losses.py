"""create_loss: any pytorch-metric-learning loss / miner by name (docs/METHODS.md §4)."""

import pytest
import torch
from pytorch_metric_learning import losses, miners

from harness.config import LossConfig
from harness.core.losses import create_loss, is_proxy_loss
from harness.errors import ConfigError


def test_protocol_default_and_params():
    loss, miner = create_loss(LossConfig())
    assert isinstance(loss, losses.SupConLoss) and loss.temperature == 0.1
    assert isinstance(miner, miners.PairMarginMiner) and (miner.pos_margin, miner.neg_margin) == (0.2, 0.8)
    loss, miner = create_loss(LossConfig(name="TripletMarginLoss", params={"margin": 0.3}, miner=None))
    assert loss.margin == 0.3 and miner is None


def test_proxy_losses_get_classes_and_size():
    assert is_proxy_loss("ProxyAnchorLoss") and is_proxy_loss("ArcFaceLoss")
    assert not is_proxy_loss("SupConLoss") and not is_proxy_loss("MarginLoss")
    cfg = LossConfig(name="ProxyAnchorLoss", params={}, miner=None)
    loss, _ = create_loss(cfg, num_classes=7, embedding_size=12)
    assert loss.proxies.shape == (7, 12)
    emb = torch.nn.functional.normalize(torch.randn(8, 12), dim=1)
    assert torch.isfinite(loss(emb, torch.arange(8) % 7))
    with pytest.raises(ConfigError, match="num_classes"):
        create_loss(cfg)


def test_unknown_names_list_close_matches():
    with pytest.raises(ConfigError, match="SupConLoss"):
        create_loss(LossConfig(name="SupconLoss"))
    with pytest.raises(ConfigError, match="PairMarginMiner"):
        create_loss(LossConfig(miner="PairMarginMinr"))
    with pytest.raises(ConfigError, match="bad params"):
        create_loss(LossConfig(params={"temprature": 0.1}))
