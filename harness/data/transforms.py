"""Train / eval transforms built with ``timm.data.create_transform``.

``data.augment``: ``none`` (resize + normalise), ``standard`` (random resized crop +
horizontal flip), ``randaugment`` (the AXBN paper's recipe: standard plus
RandAugment ``rand-m9-mstd0.5`` and random erasing with p=0.2). Mean / std come from
the model (``EmbeddingModel.mean/std``).
"""

from __future__ import annotations

from typing import Callable

from timm.data import create_transform

from harness.errors import ConfigError

AXBN_AUTO_AUGMENT = "rand-m9-mstd0.5"
AXBN_RE_PROB = 0.2


def eval_transform(image_size: int, mean, std, crop_pct: float = 0.875) -> Callable:
    """Resize (to image_size / crop_pct) + centre crop + normalise."""
    return create_transform(
        input_size=image_size,
        is_training=False,
        interpolation="bicubic",
        crop_pct=crop_pct,
        mean=tuple(mean),
        std=tuple(std),
    )


def train_transform(augment: str, image_size: int, mean, std, crop_pct: float = 0.875) -> Callable:
    if augment == "none":
        return eval_transform(image_size, mean, std, crop_pct)
    if augment == "standard":
        return create_transform(
            input_size=image_size, is_training=True, color_jitter=None,
            interpolation="bicubic", mean=tuple(mean), std=tuple(std),
        )
    if augment == "randaugment":
        return create_transform(
            input_size=image_size, is_training=True, auto_augment=AXBN_AUTO_AUGMENT,
            re_prob=AXBN_RE_PROB, interpolation="bicubic", mean=tuple(mean), std=tuple(std),
        )
    raise ConfigError(f"data.augment: unknown '{augment}'; choose none, standard or randaugment")
