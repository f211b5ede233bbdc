"""Reference-set memories: XBM, XBN and AXBN (``docs/METHODS.md`` section 1).

``CrossBatchMemory`` wraps any pair-based pytorch-metric-learning loss (and optional
miner) like the library's own ``CrossBatchMemory``: the batch is enqueued into a ring
buffer and the loss is computed for the batch (queries) against the buffer (``ref_emb``,
``ref_labels``), with each embedding's comparison against its own stored copy removed.

Speed (``benchmarks/memory_step.py``). The adaptation of XBN/AXBN is a per-dimension
affine map ``ẑ = a ⊙ z + b`` of every stored embedding. Instead of rewriting the M×d
buffer every step, the buffer holds *pre-images* ``P`` and a pending affine ``(A, C)``
with ``R = P ⊙ A + C``; one adaptation is then O(d) (``A ← aA``, ``C ← aC + b``), the
moments of R follow from running sums of P and P², and the loss's cosine similarities
of the batch against R come from one matmul with ``P`` (the shift as a per-query bias)
and R's row norms from one streaming pass over ``P`` through a cache-sized scratch
block, never materialising R. The pending affine is folded into the buffer
whenever the stored embeddings are read (``stored_embeddings()``, ``state_dict()``), when it
leaves a safe numeric range, and every ``fold_interval`` steps, so what the API shows is
exactly the persistent adaptation of docs/METHODS.md (up to float rounding). Losses/miners
whose distance is not cosine / normalised L2 take the plain path (R materialised).

The shared-similarity path computes with *views* of the user's loss and miner (shallow
copies sharing their parameters and submodules, with a :class:`SharedSimilarity` in place
of the distance): the objects passed in are never modified.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import CrossBatchMemory as _PMLCrossBatchMemory
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import Tensor, nn

from harness.core.losses import is_proxy_loss
from harness.core.moments import EPS, KalmanMoments, batch_moments
from harness.core.shared_similarity import (
    SHARED_SIMILARITY_LOSSES,
    SHARED_SIMILARITY_MINERS,
    SharedSimilarity,
    shareable,
    with_distance,
)
from harness.errors import ConfigError
from harness.results.contract import ADAPTIVE_MEMORY_KINDS, MEMORY_KINDS, MemoryKind


class CrossBatchMemory(nn.Module):
    """A metric loss computed against a memory of past embeddings (docs/METHODS.md §1).

    kinds: ``none`` L(B,B); ``xbm`` L(B, R∪B) from ``start_iteration`` on (L(B,B)
    before); ``xbm+batch`` L(B,B) + w·L(B, R∪B); ``xbn`` / ``axbn`` adapt R with the
    batch's / Kalman-filtered moments first, then L(B, R̂∪B). The step order is
    docs/METHODS.md's: adapt (detached statistics, persistent), enqueue, loss.
    """

    def __init__(
        self,
        loss: nn.Module,
        embedding_size: int,
        memory_size: int,
        kind: MemoryKind = "xbn",
        miner: nn.Module | None = None,
        start_iteration: int = 0,
        batch_loss_weight: float = 1.0,
        kalman: KalmanMoments | None = None,
        fold_interval: int = 500,
        range_check_interval: int = 16,
    ):
        super().__init__()
        if kind not in MEMORY_KINDS:
            raise ConfigError(f"memory.kind '{kind}' is unknown; choose one of {', '.join(MEMORY_KINDS)}")
        name = type(loss).__name__
        if kind != "none":
            if is_proxy_loss(loss):
                raise ConfigError(
                    f"loss {name} is proxy-based and has no reference set: use memory.kind=none with it"
                )
            if not any(c.__name__ in _PMLCrossBatchMemory.supported_losses() for c in type(loss).__mro__):
                raise ConfigError(
                    f"loss {name} cannot be computed against a memory; use memory.kind=none or one of "
                    f"{', '.join(_PMLCrossBatchMemory.supported_losses())}"
                )
            if memory_size < 1:
                raise ConfigError(f"memory size must be >= 1 for memory.kind={kind}, got {memory_size}")
        self.loss, self.miner, self.kind = loss, miner, kind
        self.embedding_size, self.memory_size = int(embedding_size), int(memory_size)
        self.start_iteration, self.batch_loss_weight = int(start_iteration), float(batch_loss_weight)
        self.kalman = (kalman or KalmanMoments()) if kind == "axbn" else kalman
        self.fold_interval = int(fold_interval)
        # The pending affine's range is read on the host (a device sync) only every
        # this many adaptations; between checks it can move by a^interval, far from
        # float32's limits given the [1e-4, 1e4] window.
        self.range_check_interval = max(1, int(range_check_interval))
        self.adaptive = kind in ADAPTIVE_MEMORY_KINDS
        # One shared similarity matmul for loss and miner when their distances allow it.
        self.shared_similarity = (
            kind != "none" and name in SHARED_SIMILARITY_LOSSES and shareable(loss.distance)
        )
        if self.shared_similarity and miner is not None:
            self.shared_similarity = (
                type(miner).__name__ in SHARED_SIMILARITY_MINERS and shareable(miner.distance)
            )
        # What the steps compute with: the user's loss and miner, or views of them whose
        # distance is a SharedSimilarity. Plain attributes, not submodules: the state dict
        # keeps the user's loss and miner under "loss." / "miner." once.
        self._shared: list[SharedSimilarity] = []
        compute_loss, compute_miner = loss, miner
        if self.shared_similarity:
            self._shared.append(SharedSimilarity(loss.distance))
            compute_loss = with_distance(loss, self._shared[-1])
            if miner is not None:
                self._shared.append(SharedSimilarity(miner.distance))
                compute_miner = with_distance(miner, self._shared[-1])
        self.__dict__["_compute_loss"], self.__dict__["_compute_miner"] = compute_loss, compute_miner
        cap = self.memory_size if kind != "none" else 0
        d = self.embedding_size
        # The checkpointed state (docs/METHODS.md §1: a preallocated ring buffer).
        self.register_buffer("embeddings", torch.zeros(cap, d))
        self.register_buffer("labels", torch.zeros(cap, dtype=torch.long))
        # Which training image each row came from (-1: not given): the staleness
        # diagnostic re-embeds these images (harness/core/staleness.py).
        self.register_buffer("sources", torch.full((cap,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        # Derived caches, rebuilt on load: pending affine R = P*A + C, float64 sums of P
        # and P^2 over the stored rows, row norms^2 (xbm kinds).
        self.register_buffer("_scale", torch.ones(d), persistent=False)
        self.register_buffer("_shift", torch.zeros(d), persistent=False)
        self.register_buffer("_sum", torch.zeros(d, dtype=torch.float64), persistent=False)
        self.register_buffer("_sumsq", torch.zeros(d, dtype=torch.float64), persistent=False)
        self.register_buffer("_row_sq", torch.zeros(cap if not self.adaptive else 0), persistent=False)
        # scratch block for R's row norms, ~4 MiB: it stays in cache between the two passes
        tmp_rows = min(cap, max(1, 2**20 // max(d, 1))) if self.adaptive and self.shared_similarity else 0
        self.register_buffer("_norm_tmp", torch.zeros(tmp_rows, d), persistent=False)
        self._pending = False  # (A, C) differ from (1, 0)
        self._since_fold = 0
        # python mirrors of the counters (no device sync per step)
        self._fill = self._ptr = self._iter = 0
        # Detached 0-dim tensors on the loss's device: read them (float()) off the hot
        # path, e.g. once per step for all parts together.
        self.last_parts: dict[str, Tensor] = {"loss.batch": torch.zeros(()), "loss.memory": torch.zeros(())}
        self.register_state_dict_pre_hook(lambda module, prefix, keep_vars: module.fold())
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._rebuild())
        self._register_load_state_dict_pre_hook(self._default_sources)

    def _default_sources(self, state, prefix, *args) -> None:
        """A checkpoint written before rows recorded their image keeps loading (unknown: -1)."""
        key = prefix + "sources"
        if key not in state and prefix + "labels" in state:
            state[key] = torch.full_like(state[prefix + "labels"], -1)

    # ------------------------------------------------------------------ state
    def stored_embeddings(self) -> Tensor:
        """The whole buffer R as docs/METHODS.md defines it: the pending adaptation folded in.

        (The ``embeddings`` buffer itself holds pre-images while an adaptation is pending.)
        """
        self.fold()
        return self._buffers["embeddings"]

    def train(self, mode: bool = True) -> "CrossBatchMemory":
        super().train(mode)
        for view in (self._compute_loss, self._compute_miner):  # not submodules: set here
            if view is not None:
                view.train(mode)
        return self

    @property
    def fill(self) -> int:
        """Number of embeddings stored (≤ memory_size)."""
        return self._fill

    def get_extra_state(self) -> dict[str, Any]:
        return {"kalman": None if self.kalman is None else self.kalman.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("kalman") is not None:
            if self.kalman is None:
                self.kalman = KalmanMoments()
            self.kalman.load_state_dict(state["kalman"])
            # a checkpoint loaded to the CPU resumes on the memory's device
            device = self._buffers["embeddings"].device
            for key in ("mean", "std"):
                value = getattr(self.kalman, key)
                if value is not None:
                    setattr(self.kalman, key, value.to(device))

    @torch.no_grad()
    def fold(self) -> None:
        """Write the pending affine into the stored embeddings (R = P*A + C)."""
        if not self._pending:
            return
        n = self._fill
        rows = self._buffers["embeddings"][:n]
        torch.addcmul(self._shift, rows, self._scale, out=rows)
        if self.shared_similarity or self._since_fold >= self.fold_interval:
            self._rebuild()  # exact sums (and P² for the shared similarity)
            return
        # the plain path folds every step: move the sums through the affine map in O(d)
        A, C = self._scale.double(), self._shift.double()
        self._sumsq.copy_(A * A * self._sumsq + 2 * A * C * self._sum + n * C * C)
        self._sum.copy_(A * self._sum + n * C)
        self._scale.fill_(1.0)
        self._shift.zero_()
        self._pending = False

    @torch.no_grad()
    def _rebuild(self) -> None:
        """Recompute every derived cache from the stored embeddings (exact)."""
        buf = self._buffers["embeddings"]
        self._fill = int(self._buffers["filled"])
        self._ptr = int(self._buffers["pointer"])
        self._iter = int(self._buffers["iteration"])
        n = self._fill
        self._scale.fill_(1.0)
        self._shift.zero_()
        self._pending = False
        self._since_fold = 0
        rows = buf[:n]
        if self.adaptive:
            self._sum.copy_(rows.sum(0, dtype=torch.float64))
            self._sumsq.copy_(rows.pow(2).sum(0, dtype=torch.float64))
        if len(self._row_sq):
            self._row_sq[:n] = rows.pow(2).sum(1)

    # ------------------------------------------------------------------ steps
    @torch.no_grad()
    def _adapt(self, target_mean: Tensor, target_std: Tensor) -> None:
        """docs/METHODS.md §1 step 2-3 on all stored rows, as an update of (A, C)."""
        n = self._fill
        p_mean = self._sum / n
        p_var = (self._sumsq / n - p_mean * p_mean).clamp_min(0.0)
        A, C = self._scale.double(), self._shift.double()
        r_mean = A * p_mean + C
        r_std = A.abs() * p_var.sqrt()
        a = target_std.double() / (r_std + EPS)
        b = target_mean.double() - a * r_mean
        self._scale.copy_(a * A)
        self._shift.copy_(a * C + b)
        self._pending = True
        self._since_fold += 1
        if (
            not self.shared_similarity  # the plain path reads R itself
            or self._since_fold >= self.fold_interval
            or (self._since_fold % self.range_check_interval == 0 and not self._scale_in_range())
        ):
            self.fold()

    def _scale_in_range(self) -> bool:
        """The pending scale is within [1e-4, 1e4] (a host read: a device sync)."""
        s = self._scale.abs()
        return bool(((s > 1e-4) & (s < 1e4)).all())

    @torch.no_grad()
    def _enqueue(self, z: Tensor, labels: Tensor, sources: Tensor | None = None) -> Tensor:
        """docs/METHODS.md §1 step 4: overwrite the oldest rows; returns the slots written."""
        bsz, M = z.shape[0], self.memory_size
        if bsz > M:
            raise ConfigError(f"batch of {bsz} does not fit a memory of {M}; raise memory.size")
        slots = (torch.arange(bsz, device=z.device) + self._ptr) % M
        buf = self._buffers["embeddings"]
        p = z.to(buf.dtype)
        if self._pending:  # store the pre-image so that P*A + C == z
            p = (p - self._shift) / self._scale
        if self.adaptive:
            p_sq = p * p
            if self._fill + bsz > M:  # overwritten rows (slots < fill) leave the sums
                # before the ring is full the pointer is the fill, so the rows that
                # wrap to the front (slots M - fill ...) are the overwritten ones: a
                # slice known on the host, not a boolean mask (a host sync)
                if self._fill == M:
                    old = slots
                elif self._ptr == self._fill:
                    old = slots[M - self._fill:]
                else:  # not reached by the ring's own updates
                    old = slots[slots < self._fill]
                old_rows = buf[old]
                self._sum -= old_rows.sum(0, dtype=torch.float64)
                self._sumsq -= old_rows.pow(2).sum(0, dtype=torch.float64)
            self._sum += p.sum(0, dtype=torch.float64)
            self._sumsq += p_sq.sum(0, dtype=torch.float64)
        else:
            self._row_sq[slots] = (p * p).sum(1)
        buf[slots] = p
        self._buffers["labels"][slots] = labels.to(self._buffers["labels"].dtype)
        self._buffers["sources"][slots] = -1 if sources is None else sources.to(slots.device, torch.long)
        self._ptr = (self._ptr + bsz) % M
        self._fill = min(self._fill + bsz, M)
        self.pointer.fill_(self._ptr)
        self.filled.fill_(self._fill)
        return slots

    def _similarity(self, q: Tensor) -> Tensor:
        """Cosine similarity of the batch [B,d] against R = P*A + C [n,d], exact."""
        n = self._fill
        P = self._buffers["embeddings"][:n]
        qn = F.normalize(q.float(), p=2, dim=1)
        if not self._pending:
            dots = qn @ P.T
            norm = self._row_sq[:n].sqrt() if not self.adaptive else torch.linalg.vector_norm(P, dim=1)
        else:
            A, C = self._scale, self._shift
            # q·(A⊙p + C) = (q⊙A)·p + q·C: the matmul's bias adds q·C (no extra B×n pass).
            # The norms stay out of the matmul: a 65th row (for their cross term) costs an
            # edge tile in the matmul and its backward, about as much as their own pass.
            dots = torch.addmm((qn @ C).unsqueeze(1), qn * A, P.T)
            norm = self._adapted_norms(P, A, C)
        inv_norm = norm.clamp_min(1e-12).reciprocal()
        # in place: (add)mm's backward does not need its output, so no second B×n tensor
        return dots.mul_(inv_norm).to(q.dtype)

    @torch.no_grad()
    def _adapted_norms(self, P: Tensor, A: Tensor, C: Tensor) -> Tensor:
        """Row norms ||A⊙p + C|| of R, exact: R is formed block by block in the scratch.

        One read of P; cheaper than a gemv over a cached P² (which is as large as P) plus
        the cross term, and free of the cancellation of the expanded ||A⊙p||² + 2(A⊙C)·p + C·C.
        """
        tmp = self._norm_tmp
        norm = P.new_empty(len(P))
        for rows, out in zip(P.split(len(tmp)), norm.split(len(tmp))):
            block = tmp[: len(rows)]
            torch.addcmul(C, rows, A, out=block)
            torch.linalg.vector_norm(block, dim=1, out=out)
        return norm

    def _indices(self, embeddings, labels, ref_emb, ref_labels, slots):
        """The mined (or all) pairs of the batch against the memory, without each query's
        comparison with its own stored copy (slot ``slots[a]``).

        Without a miner: pytorch-metric-learning's ``get_all_pairs_indices`` with the
        own copy cleared in the match matrix before its ``torch.where`` (the same pairs in
        the same order, no extra host sync: a boolean mask over the pairs would be one
        per index tensor). With a miner: one ``nonzero`` of the kept positions, then
        ``index_select`` (one sync instead of one per index tensor)."""
        if self._compute_miner is None:
            matches = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
            diffs = ~matches
            matches[torch.arange(len(labels), device=matches.device), slots] = False
            a1, p = torch.where(matches)
            a2, n = torch.where(diffs)
            return a1, p, a2, n
        t = self._compute_miner(embeddings, labels, ref_emb, ref_labels)
        kept = (t[1] != slots[t[0]]).nonzero().squeeze(1)
        if len(t) == 3:
            return tuple(x.index_select(0, kept) for x in t)
        return t[0].index_select(0, kept), t[1].index_select(0, kept), t[2], t[3]

    def _memory_loss(self, embeddings: Tensor, labels: Tensor, slots: Tensor) -> Tensor:
        n = self._fill
        ref_labels = self._buffers["labels"][:n]
        ref_emb = self._buffers["embeddings"][:n]
        if not self.shared_similarity:
            self.fold()
            indices = self._indices(embeddings, labels, ref_emb, ref_labels, slots)
            return self._compute_loss(embeddings, labels, indices, ref_emb, ref_labels)
        cache: list[Tensor] = []

        def sim() -> Tensor:
            if not cache:  # the miner calls first, under no_grad: keep the graph
                with torch.enable_grad():
                    cache.append(self._similarity(embeddings))
            return cache[0]

        for dist in self._shared:
            dist._armed = (embeddings, ref_emb, sim)
        try:
            indices = self._indices(embeddings, labels, ref_emb, ref_labels, slots)
            return self._compute_loss(embeddings, labels, indices, ref_emb, ref_labels)
        finally:
            for dist in self._shared:
                dist._armed = None

    def _batch_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        miner = self._compute_miner
        indices = miner(embeddings, labels) if miner is not None else None
        return self._compute_loss(embeddings, labels, indices)

    def batch_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """L(B, B) alone, leaving the memory untouched: nothing is adapted, enqueued or
        counted (the pre-warm-up of docs/METHODS.md §4, and ``kind="none"``)."""
        labels = labels.to(embeddings.device)
        loss = self._batch_loss(embeddings, labels)
        self.last_parts = {"loss.batch": loss.detach(), "loss.memory": loss.new_zeros(())}
        return loss

    def forward(self, embeddings: Tensor, labels: Tensor, sources: Tensor | None = None) -> Tensor:
        """The loss of one step; ``sources``: the batch's training-image indices, kept
        beside the stored rows for the staleness diagnostic (optional)."""
        if self.kind == "none":
            return self.batch_loss(embeddings, labels)
        labels = labels.to(embeddings.device)
        k = self._step_count()
        z = embeddings.detach().float()
        if self.adaptive:
            if self.kind == "axbn":
                target_mean, target_std = self.kalman.update(z)
            else:
                target_mean, target_std = batch_moments(z)
            if self._fill >= 2:
                self._adapt(target_mean, target_std)
        slots = self._enqueue(z, labels, sources)
        use_memory = k >= self.start_iteration
        batch_part = memory_part = None
        if self.kind == "xbm+batch" or not use_memory:
            batch_part = self._batch_loss(embeddings, labels)
        if use_memory:
            memory_part = self._memory_loss(embeddings, labels, slots)
        if batch_part is not None and memory_part is not None:
            loss = batch_part + self.batch_loss_weight * memory_part
        else:
            loss = batch_part if batch_part is not None else memory_part
        zero = loss.new_zeros(())
        self.last_parts = {
            "loss.batch": zero if batch_part is None else batch_part.detach(),
            "loss.memory": zero if memory_part is None else memory_part.detach(),
        }
        return loss

    def _step_count(self) -> int:
        """0-based iteration index k of this step (docs/METHODS.md §1 table)."""
        k = self._iter
        self._iter += 1
        self._buffers["iteration"].fill_(self._iter)
        return k

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, embedding_size={self.embedding_size}, memory_size={self.memory_size}, "
            f"start_iteration={self.start_iteration}, batch_loss_weight={self.batch_loss_weight}, "
            f"kalman={self.kalman!r}, shared_similarity={self.shared_similarity}"
        )
