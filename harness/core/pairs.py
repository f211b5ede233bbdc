"""Can the loss see a positive pair? A pair-based loss with one image per class in a
batch and no cross-batch memory has none: it trains at loss 0 and learns nothing,
which would otherwise end as a "completed" run."""

from __future__ import annotations

from harness.config import RunConfig


def positive_pair_problem(config: RunConfig) -> str | None:
    """One line saying why ``config`` cannot train, or None."""
    if config.train.samples_per_class > 1 or config.memory.kind != "none":
        return None
    from harness.core.losses import is_proxy_loss  # torch + pml: only in this corner

    if is_proxy_loss(config.loss.name):
        return None  # proxies are the positives
    return (f"train.samples_per_class: 1 gives {config.loss.name} no positive pair in a batch "
            "(it would train at loss 0); use samples_per_class >= 2, a cross-batch memory "
            "(memory.kind) or a proxy loss")
