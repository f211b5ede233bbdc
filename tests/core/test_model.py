"""Backbone registry, weights and EmbeddingModel contract (docs/architecture.md)."""

import pytest
import timm
import torch
import torch.nn.functional as F

from harness.config import ModelConfig
from harness.core.model import (
    PACKAGE_BACKBONE, create_model, list_backbones, load_package_weights, package_weights_path,
)  # fmt: skip
from harness.errors import ConfigError


# Registered backbones too slow for a CPU test run, or needing weights the test cannot have:
# marked here (never dropped), so adding one to the registry adds a case all the same.
BACKBONE_MARKS: dict[str, list[pytest.MarkDecorator]] = {}
# timm's path, which the registry falls back to, with one small timm net.
TIMM_BACKBONES = ["resnet18"]


def backbone_cases() -> list:
    return [pytest.param(name, marks=BACKBONE_MARKS.get(name, ()), id=name)
            for name in [*list_backbones(), *TIMM_BACKBONES]]


def test_registry_holds_the_small_nets_and_the_timm_cases_go_through_timm():
    assert {"tiny_cnn", "tiny_cnn_small"} <= set(list_backbones())
    assert not set(TIMM_BACKBONES) & set(list_backbones())
    assert all(timm.is_model(name) for name in TIMM_BACKBONES)


@pytest.mark.parametrize("name", backbone_cases())
def test_every_registered_and_timm_backbone_builds_by_name(name):
    model = create_model(ModelConfig(backbone=name, embedding_size=24), with_prototypes=False).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.embeddings.shape == (2, 24) and out.histogram is None
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(2))
    assert torch.equal(out.pooled, out.gap)
    assert model.prototypes is None and len(model.new_parameters()) == 2


def test_prototype_model_outputs_and_new_parameters():
    model = create_model(
        ModelConfig(backbone="tiny_cnn_small", embedding_size=8, pooling="prototype", prototypes={"count": 5}),
        with_prototypes=False,
    ).train()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.histogram.shape == (3, 5) and out.pooled.shape == out.gap.shape == (3, 64)
    torch.testing.assert_close(out.pooled, out.histogram @ model.prototypes)
    assert any(p is model.prototypes for p in model.new_parameters())
    torch.testing.assert_close(model.embed_pooled(out.pooled), out.embeddings)


def test_freeze_bn_keeps_batchnorm_in_eval_and_frozen():
    model = create_model(ModelConfig(backbone="tiny_cnn_small", freeze_bn=True), False).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = bns[0].running_mean.clone()
    model(torch.randn(4, 3, 32, 32) + 3)
    assert all(not m.training for m in bns) and torch.equal(bns[0].running_mean, before)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert model.head.weight.requires_grad


def test_package_weights_load_and_classify_offline():
    model = create_model(ModelConfig(backbone=PACKAGE_BACKBONE, pretrained="package"), False).eval()
    assert model.mean == model.std == (0.5, 0.5, 0.5)
    # the same features as loading the package's tensors by position into timm directly
    state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    direct = timm.create_model(PACKAGE_BACKBONE, pretrained=False).eval()
    direct.load_state_dict(dict(zip(direct.state_dict().keys(), state.values())))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.forward_features(x), direct.forward_features(x))
    # and they are real ImageNet weights: scikit-learn's bundled photo of a daisy
    from sklearn.datasets import load_sample_image

    img = torch.tensor(load_sample_image("flower.jpg")).permute(2, 0, 1).float()[None] / 255
    x = (F.interpolate(img, size=(224, 224), mode="bilinear") - 0.5) / 0.5
    with torch.no_grad():
        top = direct(x).topk(3).indices[0].tolist()
    assert 985 in top  # ImageNet class 985: daisy
    classifier = timm.create_model(PACKAGE_BACKBONE, pretrained=False)
    load_package_weights(classifier)  # with the _fc classifier kept
    with torch.no_grad():
        assert classifier.eval()(x).argmax().item() == direct(x).argmax().item()


def test_weight_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="tf_efficientnet_lite0 only"):
        create_model(ModelConfig(backbone="resnet18", pretrained="package"), False)
    with pytest.raises(ConfigError, match="not found"):
        create_model(ModelConfig(backbone="tiny_cnn", pretrained=str(tmp_path / "nope.pt")), False)
    with pytest.raises(ConfigError, match="did you mean"):
        create_model(ModelConfig(backbone="resnet_18"), False)
    # a local checkpoint round-trips; a mismatched one names the keys
    src = create_model(ModelConfig(backbone="tiny_cnn_small"), False)
    good = tmp_path / "good.pt"
    torch.save(src.backbone.state_dict(), good)
    loaded = create_model(ModelConfig(backbone="tiny_cnn_small", pretrained=str(good)), False)
    assert torch.equal(loaded.backbone.features[0].weight, src.backbone.features[0].weight)
    bad = tmp_path / "bad.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="missing .*shape"):
        create_model(ModelConfig(backbone="tiny_cnn_small", pretrained=str(bad)), False)


@pytest.mark.parametrize("prototypes", [False, True], ids=["gap", "prototype"])
def test_bf16_evaluation_embeds_in_fp32_after_the_backbone(prototypes):
    """Under bf16 autocast (CPU here, the GPU's path) only the backbone is bf16: pooling,
    head and normalisation run in fp32, so a bf16 evaluation's embeddings are the fp32
    head of the bf16 features, unit length to fp32 precision and close to the fp32 run."""
    from harness.core.evaluate import embed

    torch.manual_seed(0)
    pooling = "prototype" if prototypes else "gap"
    model = create_model(ModelConfig(backbone="tiny_cnn_small", embedding_size=24, pooling=pooling),
                         with_prototypes=prototypes).eval()
    if prototypes:
        model.pooling._init_from(torch.randn(4, model.backbone.num_features, 4, 4))
    images = torch.randn(40, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        features = model.backbone.forward_features(images)
    assert features.dtype == torch.bfloat16  # the backbone does run in bf16
    assert out.embeddings.dtype == out.pooled.dtype == torch.float32
    with torch.no_grad():  # the fp32 head and normalisation of those bf16 features
        pooled = model.pooling(features.float())[0]
        reference = F.normalize(model.head(pooled), dim=1)
    torch.testing.assert_close(out.embeddings, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(40), rtol=0, atol=1e-6)

    dataset = torch.utils.data.TensorDataset(images, torch.arange(40))
    bf16, _ = embed(model, [(x, int(y)) for x, y in dataset], batch_size=16, amp_dtype=torch.bfloat16)
    fp32, _ = embed(model, [(x, int(y)) for x, y in dataset], batch_size=16)
    assert bf16.dtype == fp32.dtype == torch.float32
    torch.testing.assert_close(bf16, out.embeddings, rtol=1e-6, atol=1e-6)
    cosine = (bf16 * fp32).sum(dim=1)
    assert float(cosine.min()) > 0.999, float(cosine.min())


def test_a_network_error_fetching_pretrained_weights_is_one_line_and_retryable(monkeypatch):
    """A transient download failure (an OSError: connection, timeout, HTTP) is retried by a
    sweep, unlike a config that can never work (a variant without weights)."""
    from harness.core.model import WeightsDownloadError, create_backbone
    from harness.sweep.failures import is_deterministic

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /timm/resnet18.a1_in1k")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsDownloadError, match="could not download timm pretrained weights for resnet18") as e:
        create_backbone("resnet18", pretrained=True)
    assert "\n" not in str(e.value) and not is_deterministic(e.value, started_training=False)

    def no_weights(*args, **kwargs):
        raise RuntimeError("No pretrained weights exist for this model")

    monkeypatch.setattr(timm, "create_model", no_weights)
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet18", pretrained=True)
    assert is_deterministic(e.value, started_training=False)
