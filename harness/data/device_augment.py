"""``data.augment_on``: where the training augmentation runs, the loader or the device.

``loader``: each worker decodes and augments with timm's CPU transforms
(:mod:`harness.data.transforms`). ``device``: each worker decodes (through
``data.image_cache`` when on) and applies timm's own first stage of the same recipe, the
random-resized crop and the flip (the centre crop for ``augment: none``), giving uint8
``[3, size, size]`` tensors (:func:`loader_transform`); :class:`DeviceAugment` then does
RandAugment, normalisation and random erasing on the training device, with
torchvision.transforms.v2 on tensors. ``auto`` (default): ``device`` when training on
CUDA, ``loader`` otherwise, so CPU runs are unchanged. Validation and test always use
the loader's evaluation transform.

Why the split there: decoding and RandAugment's per-image ops are what a CPU pays for;
the crop and the flip are cheap, and done by timm itself they are exactly the loader's
(the crop sees the whole photo, with timm's scale, ratio and bicubic resize), so
``standard`` is the same augmentation on both paths and ``randaugment`` differs only in
RandAugment itself (below).

Randomness is per sample, as on the CPU: the workers' crops draw from their per-batch
seeds as the loader path's do; RandAugment runs image by image (v2 draws one set of
parameters per call) from torch's CPU generator, seeded per batch from (run seed,
epoch, batch number), so a batch's augmentation is the same on any device, worker count
or resumption.

Cost on a GPU (not measured: no GPU was available when this was written): the per-image
loop launches a few dozen small kernels per image, and torchvision's rotate / shear /
translate build their affine matrix (and fill) on the device from host values, a copy that
waits for the GPU's queued work, so the host cannot queue the next step's work far ahead
while such ops run. ``harness doctor`` measures this augmentation's images/s on the node
and counts it in the GPU's time per image.

Differences from timm's CPU recipe (``rand-m9-mstd0.5``, erasing 0.2), honestly:

* RandAugment is torchvision's: 2 ops, each always applied (timm: each with p=0.5),
  magnitude 9 on timm's 0..10 scale (``num_magnitude_bins=11``) without timm's
  magnitude noise (``mstd0.5``); its op set has Identity and lacks timm's Invert and
  SolarizeAdd; Posterize/Solarize/translate limits are torchvision's; fill is the mean
  colour, as timm's; bilinear interpolation for its geometric ops (timm picks bilinear
  or bicubic at random).
* Random erasing: p=0.2, one zero-valued rectangle after normalisation (timm's
  ``const`` mode), scale (0.02, 1/3), ratio (0.3, 3.3), as timm.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from timm.data import create_transform
from torchvision.transforms import v2

from harness.data.image_cache import cache_short_side
from harness.data.transforms import AXBN_RE_PROB
from harness.errors import ConfigError

AUGMENT_ON = ("auto", "loader", "device")


def resolve_augment_on(setting: str, device: torch.device) -> str:
    """``auto`` -> ``device`` on CUDA, ``loader`` elsewhere; the others as given."""
    if setting not in AUGMENT_ON:
        raise ConfigError(f"data.augment_on: unknown '{setting}'; choose auto, loader or device")
    if setting == "auto":
        return "device" if torch.device(device).type == "cuda" else "loader"
    return setting


def loader_transform(augment: str, image_size: int, crop_pct: float) -> Callable:
    """What a worker does with ``augment_on: device``: PIL image -> uint8 [3, size, size]:
    timm's random-resized crop + flip of the same recipe (its centre crop for ``none``)."""
    if augment == "none":
        first = v2.Compose([
            v2.Resize(cache_short_side(image_size, crop_pct), interpolation=v2.InterpolationMode.BICUBIC,
                      antialias=True),
            v2.CenterCrop(image_size),
        ])
    elif augment in ("standard", "randaugment"):
        # timm's first stage (separate=True): the loader path's exact crop and flip
        first = create_transform(input_size=image_size, is_training=True, color_jitter=None,
                                 interpolation="bicubic", separate=True)[0]
    else:
        raise ConfigError(f"data.augment: unknown '{augment}'; choose none, standard or randaugment")
    return v2.Compose([first, v2.PILToTensor()])


class DeviceAugment:
    """uint8 [B, 3, size, size] (cropped and flipped by the loader) on the training
    device -> RandAugment (``randaugment`` only) -> normalised float -> random erasing."""

    def __init__(self, augment: str, image_size: int, mean: Sequence[float], std: Sequence[float]):
        if augment not in ("none", "standard", "randaugment"):
            raise ConfigError(f"data.augment: unknown '{augment}'; choose none, standard or randaugment")
        self.augment, self.image_size = augment, image_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.per_sample = None
        self.erase = None
        if augment == "randaugment":
            self.per_sample = v2.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11,
                                             interpolation=v2.InterpolationMode.BILINEAR,
                                             fill=[round(255 * m) for m in self.mean])
            self.erase = v2.RandomErasing(p=AXBN_RE_PROB, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value=0)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"DeviceAugment expects uint8 [B, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
        with torch.random.fork_rng(devices=[]):  # the run's own RNG stream is left alone
            torch.manual_seed(seed)
            out = images if self.per_sample is None else torch.stack([self.per_sample(image) for image in images])
            mean, std = self._mean_std(out.device)
            out = (out.float().div_(255) - mean).div_(std)
            if self.erase is not None:
                for image in out:
                    self._erase(image)
        return out

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Copied to the device once: a host-to-GPU copy per batch would wait for the GPU.
        if device not in self._stats:
            self._stats[device] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                                   torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return self._stats[device]

    def _erase(self, image: torch.Tensor) -> None:
        """v2.RandomErasing in place, its parameters drawn as it draws them (on the CPU),
        filled with a Python zero: v2's own fill is a CPU tensor, copied to the GPU (and
        so waiting for it) at every erased image."""
        if torch.rand(1) >= self.erase.p:
            return
        p = self.erase.make_params([image])
        if p["v"] is not None:
            image[..., p["i"]:p["i"] + p["h"], p["j"]:p["j"] + p["w"]] = 0.0
