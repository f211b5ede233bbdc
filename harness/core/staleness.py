"""How stale a run's reference set is (docs/METHODS.md §1, "Staleness diagnostics").

A memory helps when the embeddings it stores are close to what the current network
would compute for the same images; the papers' claims rest on that drift being slow.
Two measurements, both in eval mode and without gradients, so training itself is not
changed by them (same RNG draws, same BatchNorm statistics):

* **step drift** (AXBN paper, appendix C, with Δk = 1): a fixed probe minibatch of
  training images is embedded right before and right after an optimizer step;
  ``D = ‖z^k − z^{k−1}‖₂`` per image. Measured every ``every`` steps (two small
  forwards), averaged over the epoch: ``drift_step_mean`` (mean over the probe images)
  and ``drift_step_max`` (max over the probe images).
* **memory error**, at the end of each epoch: for a seeded sample of the rows in the
  memory, the distance between the stored reference *as the loss uses it* (for XBN
  and AXBN the adapted rows, ``CrossBatchMemory.stored_embeddings()``) and the current
  network's embedding of the image it came from (``memory_error_mean`` / ``_max``),
  and how often the nearest stored reference of a probe query (cosine, as the loss
  ranks) differs from its nearest fresh embedding among the same rows
  (``memory_nn_disagreement``, 0 = the memory ranks as the network would).

``staleness_seconds`` is the wall time these took in the epoch, beside ``epoch_seconds``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.core.memory import CrossBatchMemory

Embedder = Callable[[np.ndarray], Tensor]  # training-image indices -> embeddings [n, d]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for a measurement; every submodule's own mode restored after (the
    warm-up keeps the backbone in eval mode while the head trains)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class StepDrift:
    """Per-image drift of a fixed probe minibatch across one optimizer step (Δk = 1)."""

    def __init__(self, model: nn.Module, probe_images: Tensor, every: int):
        self.model, self.images, self.every = model, probe_images, int(every)
        self._before: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self._sum_mean = self._sum_max = None
        self.count = 0
        self.seconds = 0.0

    @torch.no_grad()
    def _embed(self) -> Tensor:
        with eval_mode(self.model):
            return self.model(self.images).embeddings.float()

    def before_step(self, step: int) -> None:
        """``step``: 0-based within the epoch; measured when ``step % every == 0``."""
        self._before = None
        if self.every > 0 and len(self.images) and step % self.every == 0:
            t = time.perf_counter()
            self._before = self._embed()
            self.seconds += time.perf_counter() - t

    def after_step(self) -> None:
        if self._before is None:
            return
        t = time.perf_counter()
        d = (self._embed() - self._before).norm(dim=1)
        # summed on the device: read once per epoch, not per step
        mean, mx = d.mean(), d.max()
        self._sum_mean = mean if self._sum_mean is None else self._sum_mean + mean
        self._sum_max = mx if self._sum_max is None else self._sum_max + mx
        self.count += 1
        self._before = None
        self.seconds += time.perf_counter() - t

    def epoch_metrics(self) -> dict[str, float]:
        if not self.count:
            return {"drift_step_mean": math.nan, "drift_step_max": math.nan}
        return {"drift_step_mean": float(self._sum_mean) / self.count,
                "drift_step_max": float(self._sum_max) / self.count}


@torch.no_grad()
def memory_error(
    memory: CrossBatchMemory, embed_images: Embedder, queries: Tensor, sample: int, seed: int
) -> dict[str, float]:
    """The memory's error against the current network (see the module docstring).

    ``embed_images(indices)`` embeds training images with the current network (eval
    transform, eval mode); ``queries`` are current embeddings of the probe minibatch.
    Rows whose image is unknown (``sources == -1``) are not sampled.
    """
    nan = {"memory_error_mean": math.nan, "memory_error_max": math.nan, "memory_nn_disagreement": math.nan}
    if memory.kind == "none" or memory.fill == 0 or sample <= 0:
        return nan
    n = memory.fill
    sources = memory.sources[:n].cpu().numpy()
    rows = np.flatnonzero(sources >= 0)
    if len(rows) == 0:
        return nan
    rng = np.random.default_rng([seed, 11])
    rows = np.sort(rng.choice(rows, size=min(sample, len(rows)), replace=False))
    stored = memory.stored_embeddings()[torch.as_tensor(rows, device=memory.sources.device)].float()
    fresh = embed_images(sources[rows]).to(stored.device).float()
    err = (stored - fresh).norm(dim=1)
    out = {"memory_error_mean": float(err.mean()), "memory_error_max": float(err.max())}
    if len(queries) and len(rows) > 1:
        q = F.normalize(queries.to(stored.device).float(), dim=1)
        nn_stored = (q @ F.normalize(stored, dim=1).T).argmax(1)
        nn_fresh = (q @ F.normalize(fresh, dim=1).T).argmax(1)
        out["memory_nn_disagreement"] = float((nn_stored != nn_fresh).float().mean())
    else:
        out["memory_nn_disagreement"] = math.nan
    return out
