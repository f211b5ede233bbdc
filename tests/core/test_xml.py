"""Prototype histogram, ridge fit and XML loss of docs/METHODS.md §2."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses

from harness.config import ModelConfig
from harness.core.model import create_model
from harness.core.xml import (
    PrototypePooling, XMLLoss, fit_prototypes, prototype_histogram, split_halves, xml_total_loss,
)  # fmt: skip
from harness.errors import HarnessError


def test_histogram_rows_on_simplex_and_hard_counts_as_tau_to_zero():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 8, 4, 5, generator=g)
    protos = torch.randn(6, 8, generator=g)
    h = prototype_histogram(feats, protos, temperature=0.5)
    assert h.shape == (3, 6)
    assert torch.all(h >= 0) and torch.allclose(h.sum(1), torch.ones(3))
    # τ → 0: each of the n = 20 local features puts mass 1/n on its nearest prototype
    f = F.normalize(feats.flatten(2), dim=1)
    nearest = (F.normalize(protos, dim=1) @ f).argmax(dim=1)  # [N, n]
    hard = torch.zeros(3, 6).scatter_add_(1, nearest, torch.full((3, 20), 1 / 20))
    torch.testing.assert_close(prototype_histogram(feats, protos, temperature=1e-4), hard, atol=1e-5, rtol=0)
    assert not torch.allclose(h, hard, atol=1e-3)  # a soft τ is really soft


def test_fit_prototypes_equals_closed_form_ridge():
    g = torch.Generator().manual_seed(1)
    H = torch.rand(10, 4, generator=g, dtype=torch.float64)
    G = torch.randn(10, 3, generator=g, dtype=torch.float64)
    V = torch.randn(4, 3, generator=g, dtype=torch.float64)
    alpha = 0.7
    # independent solution: least squares on the augmented system [H; √α I] W = [G; √α V]
    A = np.vstack([H.numpy(), np.sqrt(alpha) * np.eye(4)])
    b = np.vstack([G.numpy(), np.sqrt(alpha) * V.numpy()])
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(fit_prototypes(H, G, V, alpha).numpy(), expected, rtol=1e-5, atol=1e-5)
    # large α keeps the history, small α follows the batch
    assert torch.allclose(fit_prototypes(H, G, V, 1e9).double(), V, atol=1e-5)


def test_split_halves_is_class_disjoint_in_order_of_first_appearance():
    labels = torch.tensor([7, 7, 3, 3, 9, 9, 1, 1, 5, 5])
    a, c = split_halves(labels)
    assert labels[a].tolist() == [7, 7, 3, 3] and labels[c].tolist() == [9, 9, 1, 1, 5, 5]
    assert sorted(torch.cat([a, c]).tolist()) == list(range(10))
    with pytest.raises(HarnessError, match="2 classes"):
        split_halves(torch.tensor([4, 4, 4]))


def test_prototype_pooling_modes():
    g = torch.Generator().manual_seed(2)
    feats = torch.rand(5, 8, 3, 3, generator=g)
    pool = PrototypePooling(8, 4, 0.1, pooling="prototype").train()
    pooled, gap, hist = pool(feats)
    assert bool(pool.initialized)
    torch.testing.assert_close(gap, feats.mean(dim=(2, 3)))
    torch.testing.assert_close(pooled, hist @ pool.prototypes)
    pool.pooling = "gap"
    assert torch.equal(pool(feats)[0], gap)


def _model_and_batch():
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="tiny_cnn_small", embedding_size=16, prototypes={"count": 8}), True)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(4).repeat_interleave(4)
    return model.train(), x, y


def test_xml_loss_weight_zero_is_the_plain_loss_and_gradients_flow():
    model, x, y = _model_and_batch()
    loss = losses.SupConLoss()  # all pairs: an untrained net's embeddings mine no negatives
    xml = XMLLoss(loss, None, alpha=1.0)
    out = model(x)
    plain = loss(out.embeddings, y)
    l_xml = xml(out, y, model.prototypes, model.embed_pooled)
    assert torch.isfinite(l_xml) and float(l_xml.detach()) > 0
    assert torch.equal(xml_total_loss(plain, l_xml, 0.0), plain)
    assert torch.equal(xml_total_loss(plain, l_xml, 0.0), plain + 0.0 * l_xml)
    total = xml_total_loss(plain, l_xml, 0.1)
    assert float(total.detach()) == pytest.approx(float(plain.detach()) + 0.1 * float(l_xml.detach()), rel=1e-6)
    model.zero_grad()
    l_xml.backward()
    assert model.prototypes.grad is not None and model.prototypes.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0
