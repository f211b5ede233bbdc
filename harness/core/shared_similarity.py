"""The memory's shared-similarity path: one similarity matmul stands in for the distance
of the loss and of the miner (see :mod:`harness.core.memory`, "Speed").

:class:`SharedSimilarity` replaces the distance inside *views* of the user's loss and
miner (:func:`with_distance`), never inside the objects the user passed in.
"""

from __future__ import annotations

import copy
from typing import Any

from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning.distances import BaseDistance
from torch import Tensor, nn

# Losses / miners that use the reference embeddings only through ``self.distance``
# (checked against pytorch-metric-learning 2.9's source), so a precomputed similarity
# matrix can stand in for them (the shared-similarity path). Anything else takes the
# plain, materialised path.
SHARED_SIMILARITY_LOSSES = {
    "CircleLoss", "ContrastiveLoss", "GeneralizedLiftedStructureLoss",
    "IntraPairVarianceLoss", "LiftedStructureLoss", "MarginLoss", "MultiSimilarityLoss",
    "NCALoss", "NTXentLoss", "SignalToNoiseRatioContrastiveLoss", "SupConLoss",
    "TripletMarginLoss", "TupletMarginLoss",
}  # fmt: skip
SHARED_SIMILARITY_MINERS = {
    "PairMarginMiner", "MultiSimilarityMiner", "TripletMarginMiner", "BatchHardMiner",
    "BatchEasyHardMiner", "HDCMiner", "UniformHistogramMiner", "DistanceWeightedMiner",
}  # fmt: skip


class SharedSimilarity(BaseDistance):
    """Stands in for a loss's / miner's distance while the memory computes its loss.

    When called with the exact (query, reference) tensors the memory armed it with, it
    returns the matrix derived from the memory's one similarity matmul; any other call
    is delegated to the wrapped distance unchanged.
    """

    def __init__(self, inner: BaseDistance):
        super().__init__(
            normalize_embeddings=inner.normalize_embeddings, p=inner.p,
            power=inner.power, is_inverted=inner.is_inverted,
        )  # fmt: skip
        self.inner = inner
        self.cosine = isinstance(inner, pml_distances.CosineSimilarity)
        self._armed: tuple[Tensor, Tensor, Any] | None = None

    def forward(self, query_emb, ref_emb=None):
        armed = self._armed
        if armed is not None and query_emb is armed[0] and ref_emb is armed[1]:
            sim = armed[2]()
            if self.cosine:
                return sim
            # normalised L2 distance of unit vectors, as torch.cdist's mm path computes it
            return (2.0 - 2.0 * sim).clamp_min(0.0).sqrt()
        return self.inner(query_emb, ref_emb)

    def compute_mat(self, query_emb, ref_emb):
        return self.inner.compute_mat(query_emb, ref_emb)

    def pairwise_distance(self, query_emb, ref_emb):
        return self.inner.pairwise_distance(query_emb, ref_emb)


def shareable(distance: Any) -> bool:
    if type(distance) is pml_distances.CosineSimilarity:
        return distance.power == 1
    if type(distance) is pml_distances.LpDistance:
        return distance.normalize_embeddings and distance.p == 2 and distance.power == 1
    return False


def with_distance(module: nn.Module, distance: BaseDistance) -> nn.Module:
    """A view of ``module`` that computes with ``distance``; ``module`` is unchanged.

    A shallow copy: parameters, buffers and the other submodules are ``module``'s own
    objects (one set of weights, moved by ``module.to``); only the submodule table is
    the view's, so that its ``distance`` entry can differ.
    """
    view = copy.copy(module)
    view._modules = dict(module._modules)
    view.distance = distance
    return view
