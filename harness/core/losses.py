"""Losses and miners by name: any pytorch-metric-learning class (docs/METHODS.md §4).

``create_loss(cfg)`` builds ``(loss, miner)`` from a ``LossConfig``. Proxy-based losses
(those with trainable parameters: ProxyAnchorLoss, ArcFaceLoss, ...) need the number of
training classes and the embedding size; pass them in ``cfg.params`` or as keyword
arguments (the training loop passes both). Unknown names are a ConfigError listing the
closest matches.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin

from harness.config import LossConfig
from harness.errors import ConfigError

__all__ = ["create_loss", "create_miner", "is_proxy_loss", "loss_names", "miner_names"]

# Wrappers and bases that are not losses by themselves.
_NOT_LOSSES = {
    "BaseMetricLossFunction", "BaseLossWrapper", "GenericPairLoss", "CrossBatchMemory",
    "MultipleLosses", "SelfSupervisedLoss",
}  # fmt: skip
# Proxy / classification losses that carry learnable class weights but are not
# WeightRegularizerMixin subclasses.
_EXTRA_PROXY = {"P2SGradLoss", "ManifoldLoss"}


def _classes(module, base) -> dict[str, type]:
    return {
        n: c for n, c in vars(module).items()
        if inspect.isclass(c) and issubclass(c, base) and not n.startswith("Base")
    }  # fmt: skip


def loss_names() -> list[str]:
    return sorted(n for n in _classes(pml_losses, torch.nn.Module) if n not in _NOT_LOSSES)


def miner_names() -> list[str]:
    return sorted(_classes(pml_miners, pml_miners.BaseMiner))


def _lookup(kind: str, name: str, names: list[str], module) -> type:
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(names)}"
        raise ConfigError(f"unknown {kind} '{name}' (pytorch-metric-learning): {hint}")
    return getattr(module, name)


def is_proxy_loss(loss: str | torch.nn.Module) -> bool:
    """The one definition of a proxy loss: a loss that learns parameters of its own
    (proxies, class weights), so it has no reference set for a memory and needs
    ``memory.kind=none``.

    By name (configs): the pytorch-metric-learning classes that carry them
    (``WeightRegularizerMixin`` subclasses, plus P2SGrad and Manifold). An instance
    (what the memory is given) also counts when it has any parameters, e.g.
    ``MarginLoss(learn_beta=True)``.
    """
    if isinstance(loss, torch.nn.Module):
        cls: type | None = type(loss)
        if any(True for _ in loss.parameters()):
            return True
    else:
        cls = getattr(pml_losses, loss, None)
    if cls is None:
        return False
    return issubclass(cls, WeightRegularizerMixin) or cls.__name__ in _EXTRA_PROXY


def _instantiate(kind: str, cls: type, params: dict[str, Any]):
    try:
        return cls(**params)
    except TypeError as e:  # a wrong/missing keyword: name it
        raise ConfigError(f"{kind} {cls.__name__}: bad params {params}: {e}") from None


def create_miner(name: str | None, params: dict[str, Any] | None = None):
    if name is None:
        return None
    cls = _lookup("miner", name, miner_names(), pml_miners)
    return _instantiate("miner", cls, dict(params or {}))


def create_loss(
    cfg: LossConfig, num_classes: int | None = None, embedding_size: int | None = None
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """Build the loss and miner named by ``cfg`` (docs/METHODS.md §4 defaults in LossConfig)."""
    cls = _lookup("loss", cfg.name, loss_names(), pml_losses)
    params = dict(cfg.params)
    if is_proxy_loss(cfg.name):
        accepted = inspect.signature(cls.__init__).parameters
        for key, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if key not in params and value is not None:
                params[key] = value
        if cfg.name == "P2SGradLoss" and "descriptors_dim" not in params and embedding_size:
            params["descriptors_dim"] = embedding_size
            params.pop("embedding_size", None)
        missing = [k for k in ("num_classes", "embedding_size") if k in accepted and k not in params]
        if missing:
            raise ConfigError(
                f"proxy loss {cfg.name} needs {' and '.join(missing)}: set loss.params."
                f"{missing[0]} or let the training loop pass it"
            )
    loss = _instantiate("loss", cls, params)
    return loss, create_miner(cfg.miner, cfg.miner_params)
