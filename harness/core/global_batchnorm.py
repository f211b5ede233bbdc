"""BatchNorm over the global batch of a data-parallel run: torch's ``SyncBatchNorm`` on
GPUs (timm's converter, which keeps ``BatchNormAct2d``'s activation) and
:class:`GlobalBatchNorm2d` on CPUs, where torch's SyncBatchNorm does not run.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from harness.core.collectives import is_distributed
from harness.errors import ConfigError


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks; backward: the gradients of all ranks summed."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Training-mode batch norm with the statistics of all ranks' rows (differentiable)."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float()
    n_local = xf.new_tensor([x.numel() // x.shape[1]])
    # one all-reduce for the sums and the count, a second for the centred squares
    # (a one-pass E[x²] - E[x]² would lose digits where the mean is large)
    summed = _AllReduceSum.apply(torch.cat([xf.sum(dims), n_local]))
    count = summed[-1].detach()
    mean = summed[:-1] / count
    centred = xf - mean.view(shape)
    var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / count
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
            unbiased = var.detach() * count / (count - 1).clamp_min(1)
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var), momentum)
    return y.to(x.dtype)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch (any
    device; torch's SyncBatchNorm needs a GPU). Same parameters and buffers, so its
    state dict loads into a plain ``BatchNorm2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        return _global_batch_norm(self, x)


def _global_bn_act_class():
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return None, None

    class GlobalBatchNormAct2d(BatchNormAct2d):
        """timm's BatchNormAct2d with global batch statistics (see GlobalBatchNorm2d)."""

        def forward(self, x: Tensor) -> Tensor:
            if not (self.training and is_distributed()):
                return super().forward(x)
            return self.act(self.drop(_global_batch_norm(self, x)))

    return BatchNormAct2d, GlobalBatchNormAct2d


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of ``model`` use global batch statistics while training."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    bn_act, global_bn_act = _global_bn_act_class()
    for m in model.modules():
        if bn_act is not None and type(m) is bn_act:
            m.__class__ = global_bn_act
        elif type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in (GlobalBatchNorm2d, global_bn_act):
            raise ConfigError(
                f"data-parallel training on CPU cannot synchronise {type(m).__name__}; "
                "use a backbone with BatchNorm2d, set model.freeze_bn: true, or train.workers: 1"
            )
    return model
