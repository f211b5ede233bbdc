"""harness/data/device_augment.py: ``data.augment_on``. auto picks the device on CUDA
only; with ``device`` the loader yields timm's own crop and flip as uint8 (the same
crops as the loader path) and :class:`DeviceAugment` gives normalised, correctly shaped
batches, per-sample random, deterministic under a seed, on a CPU tensor; a short
training run with it completes."""

from __future__ import annotations

import random

import pytest
import torch

from harness.config import DataConfig, build_config
from harness.data import create_datasets
from harness.data.device_augment import DeviceAugment, loader_transform, resolve_augment_on
from harness.errors import ConfigError
from harness.doctor.throughput import MEAN, STD, make_sop_folder


@pytest.mark.parametrize("setting, device, resolved", [
    ("auto", "cuda", "device"), ("auto", "cpu", "loader"),
    ("loader", "cuda", "loader"), ("device", "cpu", "device"),
])
def test_auto_augments_on_the_device_when_training_on_cuda(setting, device, resolved):
    assert resolve_augment_on(setting, torch.device(device)) == resolved


def test_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="data.augment_on"):
        resolve_augment_on("gpu", torch.device("cpu"))
    assert DataConfig().augment_on == "auto"


def squares(n=6, side=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("augment", ["none", "standard", "randaugment"])
def test_batches_are_shaped_normalised_and_seeded(augment):
    aug = DeviceAugment(augment, 32, MEAN, STD)
    images = squares()
    out = aug(images, seed=7)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # normalised: uint8 pixels land in [(0 - mean) / std, (1 - mean) / std]
    lo = ((0 - torch.tensor(MEAN)) / torch.tensor(STD)).min()
    hi = ((1 - torch.tensor(MEAN)) / torch.tensor(STD)).max()
    assert lo - 1e-5 <= out.min() and out.max() <= hi + 1e-5
    assert torch.equal(out, aug(images, seed=7))  # deterministic under a seed
    if augment == "randaugment":  # the crop and flip are the loader's: nothing else is random
        assert not torch.equal(out, aug(images, seed=8))


@pytest.mark.parametrize("augment", ["none", "standard"])
def test_without_randaugment_the_device_only_normalises(augment):
    images = squares()
    out = DeviceAugment(augment, 32, MEAN, STD)(images, seed=0)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_randomness_is_per_sample_and_leaves_the_run_rng_alone():
    aug = DeviceAugment("randaugment", 32, MEAN, STD)
    same = squares(n=1).expand(8, -1, -1, -1).contiguous()  # one image, 8 times
    torch.manual_seed(123)
    state = torch.get_rng_state()
    out = aug(same, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    # each drew its own ops (one draw per batch would give 1 distinct image; two draws may coincide)
    assert len({tuple(x.flatten().tolist()) for x in out}) >= 6


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        DeviceAugment("standard", 32, MEAN, STD)(squares().float(), seed=0)


def test_the_loader_side_yields_uint8_crops_and_eval_is_unchanged(tmp_path):
    make_sop_folder(tmp_path, classes=4, per_class=3, size=120)
    cfg = DataConfig(name="sop", root=str(tmp_path), image_size=32, augment="randaugment", val_fraction=0.0)
    dev = create_datasets(cfg, seed=0, mean=MEAN, std=STD, augment_on="device")
    cpu = create_datasets(cfg, seed=0, mean=MEAN, std=STD)
    image, label = dev.train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert cpu.train[0][0].dtype == torch.float32 and cpu.train[0][0].shape == (3, 32, 32)
    assert torch.equal(dev.test.query[0][0], cpu.test.query[0][0])
    with pytest.raises(ValueError, match="augment_on"):
        create_datasets(cfg, seed=0, mean=MEAN, std=STD, augment_on="auto")


@pytest.mark.parametrize("augment", ["none", "standard"])
def test_the_device_path_gives_the_loader_paths_crops(tmp_path, augment):
    """Same seeds, same crop and flip: the device path's batch (uint8 crops, then
    normalised on the device) equals the loader path's, for the recipes without RandAugment."""
    make_sop_folder(tmp_path, classes=4, per_class=3, size=120)
    cfg = DataConfig(name="sop", root=str(tmp_path), image_size=32, augment=augment, val_fraction=0.0)
    dev = create_datasets(cfg, seed=0, mean=MEAN, std=STD, augment_on="device")
    cpu = create_datasets(cfg, seed=0, mean=MEAN, std=STD)
    aug = DeviceAugment(augment, 32, MEAN, STD)
    for index in range(4):
        random.seed(index)
        torch.manual_seed(index)
        crop = dev.train[index][0]
        random.seed(index)
        torch.manual_seed(index)
        expected = cpu.train[index][0]
        # timm converts and normalises in float32 as the device does; bicubic rounding to
        # uint8 is the one difference (ToTensor of the PIL crop sees the same uint8)
        torch.testing.assert_close(aug(crop[None], seed=0)[0], expected, atol=1e-5, rtol=0)


def test_a_short_training_run_augments_on_the_device(tmp_path, tiny_config, monkeypatch):
    from harness.core import trainer as T
    from harness.core.train import run_training

    calls = []
    real = T.DeviceAugment.__call__

    def spy(self, images, seed):
        calls.append((images.dtype, tuple(images.shape), seed))
        return real(self, images, seed)

    monkeypatch.setattr(T.DeviceAugment, "__call__", spy)
    cfg = build_config(tiny_config(data={"augment": "randaugment", "augment_on": "device"}))
    result = run_training(cfg, tmp_path / "run")
    assert result.status == "completed" and result.epochs_run == 2
    assert len(calls) == 2 * 3 and all(c[0] == torch.uint8 and c[1][1:] == (3, 16, 16) for c in calls)
    assert len({c[2] for c in calls}) == 6  # a seed per (epoch, batch)


def test_erasing_is_v2s_random_erasing_with_zeros():
    """The in-place erasing draws what v2.RandomErasing draws and writes the same zeros."""
    from torchvision.transforms import v2

    aug = DeviceAugment("randaugment", 32, MEAN, STD)
    reference = v2.RandomErasing(p=0.2, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value=0)
    erased = 0
    for seed in range(40):
        image = torch.randn(3, 32, 32)
        torch.manual_seed(seed)
        expected = reference(image.clone())
        torch.manual_seed(seed)
        mine = image.clone()
        aug._erase(mine)
        assert torch.equal(mine, expected)
        erased += not torch.equal(mine, image)
    assert 0 < erased < 40
