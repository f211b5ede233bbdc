"""The collectives of a data-parallel run (:mod:`harness.core.distributed`): this
process's rank and the world size, the differentiable gather of the global batch, the
broadcast of a module's state from rank 0 and the one flat gradient all-reduce. Outside
a process group they are the single-process identities.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherRows(torch.autograd.Function):
    """All-gather of ``[n_r, ...]`` rows (each rank's padded to ``capacity``); backward:
    the gradient of each rank's rows summed over all ranks."""

    @staticmethod
    def forward(ctx, x: Tensor, capacity: int, sizes: tuple[int, ...]):
        ctx.n, ctx.capacity, ctx.sizes = x.shape[0], capacity, sizes
        padded = x.new_zeros((capacity, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        cap = ctx.capacity
        full = grad.new_zeros((len(ctx.sizes) * cap, *grad.shape[1:]))
        offset = 0
        for i, s in enumerate(ctx.sizes):
            full[i * cap: i * cap + s] = grad[offset: offset + s]
            offset += s
        dist.all_reduce(full)  # a reduce-scatter would move W times less; these are tiny
        start = rank() * cap
        return full[start: start + ctx.n], None, None


_HOST_GROUP: dict = {}  # the default group -> its gloo companion for host-side values


def _host_group():
    """The process group for values the host already holds: the default group when it is
    gloo (CPU tensors), else a gloo group made once beside NCCL (every rank makes it at
    the same call), so that these values never pass through the device."""
    if dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD
    if world not in _HOST_GROUP:  # one per process group (a process may join a new one)
        _HOST_GROUP.clear()
        _HOST_GROUP[world] = dist.new_group(backend="gloo")
    return _HOST_GROUP[world]


def rank_sizes(n: int) -> tuple[int, ...]:
    """Every rank's row count ``n`` (a host integer: its batch's length), in rank order.

    Gathered as CPU tensors over gloo, so nothing waits for the device: with NCCL the
    sizes read from gathered device labels (``.tolist()``) would make the host wait for
    the forward pass every step."""
    if not is_distributed():
        return (n,)
    mine = torch.tensor([n], dtype=torch.int64)
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine, group=_host_group())
    return tuple(int(p) for p in parts)  # CPU tensors: no device sync


def gather_labels(labels: Tensor, capacity: int,
                  sizes: tuple[int, ...] | None = None) -> tuple[Tensor, tuple[int, ...]]:
    """All ranks' labels in rank order and the number of rows of every rank.

    Every rank holds at most ``capacity`` rows (its share of the global batch; fewer
    when images were skipped as corrupt): ``sizes`` (``rank_sizes``, known on the host
    before the step), else gathered here over the host group. The labels travel padded
    to ``capacity`` and are cut on the host's sizes: no read of the device.
    """
    if not is_distributed():
        return labels, (len(labels),)
    if sizes is None:
        sizes = rank_sizes(len(labels))
    padded = labels.new_full((capacity,), -1)
    padded[: len(labels)] = labels
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), tuple(sizes)


def gather_rows(x: Tensor, capacity: int, sizes: tuple[int, ...]) -> Tensor:
    """Differentiable all-gather of every rank's ``[n_r, ...]`` rows, in rank order."""
    if not is_distributed():
        return x
    return _GatherRows.apply(x, capacity, sizes)


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Parameters and buffers of rank ``src`` on every rank (as DDP does at start)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


@torch.no_grad()
def average_gradients(params: list[nn.Parameter], finite: Tensor | None = None) -> Tensor | None:
    """Mean of the gradients over ranks: one flat all-reduce of every present gradient.

    Every rank runs the same graph, so the set of parameters with a gradient (and its
    order) is the same everywhere. ``finite`` (a 0-dim bool tensor on the device: this
    rank's loss is finite) rides along in the same all-reduce, so every rank learns at
    no extra collective whether *any* rank's loss was not; returns that agreement
    (``finite`` itself outside a process group), without reading it on the host.
    """
    if not is_distributed():
        return finite
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        if finite is None:
            return None
        bad = (~finite).reshape(1).float()
        dist.all_reduce(bad)
        return bad[0] == 0
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    w = world_size()
    agreed = finite
    for i, group in enumerate(by_dtype.values()):
        pieces = [g.reshape(-1) for g in group]
        if i == 0 and finite is not None:  # the count of ranks with a non-finite loss
            pieces.append((~finite).reshape(1).to(group[0].dtype))
        flat = torch.cat(pieces)
        dist.all_reduce(flat)
        if i == 0 and finite is not None:
            agreed = flat[-1] == 0
        flat.div_(w)
        offset = 0
        for g in group:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
    return agreed
