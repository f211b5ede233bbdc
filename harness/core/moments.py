"""The statistics the adaptive memories use (docs/METHODS.md section 1): per-dimension batch
moments, the XBN adaptation of stored embeddings, and AXBN's Kalman-filtered moments.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.errors import ConfigError

EPS = 1e-6


def batch_moments(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and population std of ``z`` [N, d] in one fused pass."""
    var, mean = torch.var_mean(z, dim=0, correction=0)
    return mean, var.sqrt()


def xbn_adapt(memory: Tensor, batch: Tensor, eps: float = EPS) -> Tensor:
    """docs/METHODS.md §1 eq. 6: ``(z - mean(R)) / (std(R) + eps) * std(B) + mean(B)``."""
    r_mean, r_std = batch_moments(memory)
    b_mean, b_std = batch_moments(batch)
    return (memory - r_mean) / (r_std + eps) * b_std + b_mean


class KalmanMoments:
    """Kalman-filtered dataset mean/std per dimension (docs/METHODS.md §1, AXBN).

    Two scalar-per-dimension filters (mean and std) with a static state model. Both
    see the same p0, q, r and |B| every step, so their covariance P and gain K are
    identical and kept once. ``update`` is called once per iteration; the counter is 1
    on the first call.
    """

    def __init__(self, p0: float = 1.0, q: float = 1.0, r: float = 0.01, gain_interval: int = 100):
        if gain_interval < 1:
            raise ConfigError(f"Kalman gain_interval must be >= 1, got {gain_interval}")
        self.p0, self.q, self.r, self.gain_interval = float(p0), float(q), float(r), int(gain_interval)
        self.iteration = 0
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.P = float(p0)
        self.K: float | None = None

    def update(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        v_mean, v_std = batch_moments(batch.detach())
        self.iteration += 1
        if self.mean is None or self.std is None:
            self.mean, self.std, self.P = v_mean.clone(), v_std.clone(), self.p0
            return self.mean, self.std
        self.P += self.q
        if self.K is None or self.iteration % self.gain_interval == 0:
            denom = self.P + self.r / batch.shape[0]
            self.K = self.P / denom if denom > 0 else 0.0
        # lerp is exact at K = 1 (returns v), so r = 0 reproduces XBN bit for bit.
        self.mean = torch.lerp(self.mean.to(v_mean), v_mean, self.K)
        self.std = torch.lerp(self.std.to(v_std), v_std, self.K)
        self.P = (1.0 - self.K) * self.P
        return self.mean, self.std

    def state_dict(self) -> dict[str, Any]:
        return {
            "p0": self.p0, "q": self.q, "r": self.r, "gain_interval": self.gain_interval,
            "iteration": self.iteration, "mean": self.mean, "std": self.std,
            "P": self.P, "K": self.K,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("p0", "q", "r", "P"):
            setattr(self, key, float(state[key]))
        self.gain_interval = int(state["gain_interval"])
        self.iteration = int(state["iteration"])
        self.mean, self.std = state["mean"], state["std"]
        self.K = None if state["K"] is None else float(state["K"])

    def __repr__(self) -> str:
        return f"KalmanMoments(p0={self.p0}, q={self.q}, r={self.r}, gain_interval={self.gain_interval})"
