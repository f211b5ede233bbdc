"""Prototype GAP and the cross-batch metric learning loss (``docs/METHODS.md`` section 2).

- ``prototype_histogram``: soft nearest-prototype histogram of the local features.
- ``PrototypePooling``: pools a feature map into GAP ``g`` or ``Σ h_i v_i``, with ``h``.
- ``fit_prototypes``: the closed-form ridge fit anchored to the running prototypes.
- ``split_halves`` + ``XMLLoss``: fit on one class-disjoint half, reconstruct the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from harness.core.model import ModelOutput

__all__ = [
    "prototype_histogram", "fit_prototypes", "split_halves", "PrototypePooling",
    "XMLLoss", "xml_total_loss",
]  # fmt: skip


def prototype_histogram(features: Tensor, prototypes: Tensor, temperature: float = 0.1) -> Tensor:
    """§2 histogram: ``h_i = (1/n) Σ_j softmax_i(<v̂_i, f̂_j>/τ)`` for features [N,c,h,w] -> [N,m]."""
    f = F.normalize(features.flatten(2), dim=1)  # [N, c, n]
    v = F.normalize(prototypes, dim=1)  # [m, c]
    logits = torch.einsum("mc,ncj->nmj", v.to(f.dtype), f) / temperature
    return logits.softmax(dim=1).mean(dim=2)


def fit_prototypes(H: Tensor, G: Tensor, prior: Tensor, alpha: float) -> Tensor:
    """§2 ridge fit ``(HᵀH + αI)⁻¹ (HᵀG + αV)`` [m,c], solved without an explicit inverse."""
    m = H.shape[1]
    H32, G32, V = H.float(), G.float(), prior.float()
    lhs = H32.T @ H32 + alpha * torch.eye(m, device=H.device, dtype=H32.dtype)
    rhs = H32.T @ G32 + alpha * V
    # solve_ex: no error check, which would read the LU status on the host (a device
    # sync); HᵀH + αI with α > 0 is positive definite.
    return torch.linalg.solve_ex(lhs, rhs).result


def split_halves(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of two class-disjoint halves: the first half of the classes (in order of
    first appearance) and the rest.

    Data-dependent sizes: on a GPU tensor this syncs with the host; the training loop
    calls it on the loader's CPU labels and moves the indices over (``XMLLoss`` halves).
    """
    labels = labels.reshape(-1)
    classes, inverse = torch.unique(labels, return_inverse=True)
    k = len(classes)
    if k < 2:
        raise ConfigError(
            f"XML needs at least 2 classes in a batch to split it into halves, got {k}: "
            "raise train.batch_size / train.samples_per_class"
        )
    n = len(labels)
    pos = torch.arange(n, device=labels.device)
    first = torch.full((k,), n, device=labels.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, pos, reduce="amin")
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(k, device=labels.device)
    in_a = rank[inverse] < k // 2
    return pos[in_a], pos[~in_a]


class PrototypePooling(nn.Module):
    """Pools [N,c,h,w] into ``(pooled, gap, histogram)`` (§2).

    ``pooling="gap"``: pooled = g; ``"prototype"``: pooled = Σ_i h_i v_i. The prototypes
    are initialised from m random local features of the first training batch (so they
    start inside the feature distribution, where the histogram is informative).
    """

    def __init__(self, channels: int, count: int, temperature: float = 0.1, pooling: str = "prototype"):
        super().__init__()
        if pooling not in ("gap", "prototype"):
            raise ConfigError(f"model.pooling '{pooling}' is unknown; choose gap or prototype")
        self.pooling, self.temperature = pooling, float(temperature)
        self.prototypes = nn.Parameter(torch.randn(count, channels) * 0.01)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Host mirror of ``initialized``: no device read per forward.
        self._initialized = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "initialized"
        if key in state_dict:
            self._initialized = bool(state_dict[key])

    @torch.no_grad()
    def _init_from(self, features: Tensor) -> None:
        local = features.detach().flatten(2).transpose(1, 2).reshape(-1, features.shape[1])
        m = self.prototypes.shape[0]
        pick = torch.randint(len(local), (m,), device=local.device) if len(local) < m else torch.randperm(len(local), device=local.device)[:m]
        self.prototypes.copy_(local[pick].float())
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.training and not self._initialized:
            self._init_from(features)
        gap = features.mean(dim=(2, 3))
        hist = prototype_histogram(features, self.prototypes, self.temperature)
        pooled = gap if self.pooling == "gap" else hist @ self.prototypes.to(hist.dtype)
        return pooled, gap, hist

    def extra_repr(self) -> str:
        m, c = self.prototypes.shape
        return f"channels={c}, count={m}, temperature={self.temperature}, pooling={self.pooling!r}"


def xml_total_loss(plain: Tensor, l_xml: Tensor | None, weight: float) -> Tensor:
    """§2 ``L_total = L + λ L_XML``; λ = 0 returns the plain loss itself."""
    if weight == 0 or l_xml is None:
        return plain
    return plain + weight * l_xml


class XMLLoss(nn.Module):
    """§2 L_XML = L(e(H_C V_A), y_C) + L(e(H_A V_C), y_A), with V_S the ridge fit on half S."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, alpha: float = 1.0):
        super().__init__()
        self.loss, self.miner, self.alpha = loss, miner, float(alpha)

    def _metric(self, emb: Tensor, labels: Tensor) -> Tensor:
        indices = self.miner(emb, labels) if self.miner is not None else None
        return self.loss(emb, labels, indices)

    def forward(
        self,
        out: "ModelOutput",
        labels: Tensor,
        prototypes: Tensor,
        embed_pooled: Callable[[Tensor], Tensor],
        halves: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``halves``: ``split_halves`` of these labels computed beforehand (on the CPU, so
        the step does not wait for the GPU to learn their sizes)."""
        if out.histogram is None:
            raise ConfigError("XML needs a model with prototypes (create_model(..., with_prototypes=True))")
        idx_a, idx_c = halves if halves is not None else split_halves(labels)
        H, G = out.histogram, out.gap
        V_a = fit_prototypes(H[idx_a], G[idx_a], prototypes, self.alpha)
        V_c = fit_prototypes(H[idx_c], G[idx_c], prototypes, self.alpha)
        g_c = H[idx_c].float() @ V_a  # half C expressed with the prototypes of half A
        g_a = H[idx_a].float() @ V_c
        return self._metric(embed_pooled(g_c), labels[idx_c]) + self._metric(embed_pooled(g_a), labels[idx_a])
