"""Non-finite numbers in a model: a diverged run, never a result.

A run whose weights, buffers (BatchNorm statistics) or embeddings hold NaN or inf has
diverged even when its loss still printed a number; ``best.pt`` must never hold such a
model, and evaluation must not score one (its "metrics" are artefacts of NaN ordering).
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError


class NonFiniteError(HarnessError):
    """NaN or inf in a model's state or in its embeddings."""


def nonfinite_tensors(*modules: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or inf."""
    bad = []
    for module in modules:
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def check_embeddings(embeddings: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` when any embedding holds NaN or inf."""
    rows = ~torch.isfinite(embeddings).all(dim=1) if embeddings.numel() else torch.zeros(0, dtype=torch.bool)
    if bool(rows.any()):
        raise NonFiniteError(
            f"{int(rows.sum())} of {len(embeddings)} embeddings are NaN or inf: the model "
            "diverged (non-finite weights or normalisation statistics)"
        )
