"""harness/data/image_cache.py: ``data.image_cache`` stores each image once, shrunk to
image_size / crop_pct, under $HARNESS_CACHE_DIR; later loads skip decoding; a changed
photo gets a new entry; a corrupt entry is rebuilt; an unwritable cache is one error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from harness.config import DataConfig, build_config
from harness.data import create_datasets
from harness.data.datasets import ImageFileDataset
from harness.data.image_cache import ImageCache, cache_short_side
from harness.errors import ConfigError, DataError
from harness.doctor.throughput import MEAN, STD, make_sop_folder

IMAGE_SIZE = 32  # SOP's crop_pct 0.875: cached short side floor(32 / 0.875) = 36


@pytest.fixture
def sop(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "sop"
    make_sop_folder(root, classes=4, per_class=3, size=120)  # 120 x 90 JPEGs
    return root


def bundle(root, **data):
    cfg = DataConfig(name="sop", root=str(root), image_size=IMAGE_SIZE, val_fraction=0.0, **data)
    return create_datasets(cfg, seed=0, mean=MEAN, std=STD)


def cache_files(tmp_path):
    return sorted((tmp_path / "cache" / "images").rglob("*.npy"))


def test_first_load_fills_the_cache_and_later_loads_skip_decoding(sop, tmp_path, monkeypatch):
    train = bundle(sop, image_cache=True).train
    assert cache_files(tmp_path) == []
    first = [np.asarray(train.load_image(i)) for i in range(len(train))]
    files = cache_files(tmp_path)
    assert len(files) == len(train)
    assert all(f.parent.parent.name == f"{cache_short_side(IMAGE_SIZE, 0.875)}px" for f in files)
    assert {min(a.shape[:2]) for a in first} == {36} and first[0].shape == (36, 48, 3)

    def no_decoding(self, index):
        raise AssertionError("decoded a cached image")

    monkeypatch.setattr(ImageFileDataset, "decode_image", no_decoding)
    again = bundle(sop, image_cache=True).train  # another trial, same data and size
    assert all(np.array_equal(np.asarray(again.load_image(i)), a) for i, a in enumerate(first))


def test_evaluation_pixels_are_the_same_with_and_without_the_cache(sop):
    plain, cached = bundle(sop).test.query, bundle(sop, image_cache=True).test.query
    assert cached.image_cache is not None and plain.image_cache is None
    for i in range(len(plain)):
        cached[i]  # fills the entry
        assert torch.equal(plain[i][0], cached[i][0])


def test_default_is_off_and_in_memory_datasets_ignore_it(sop, tmp_path):
    assert DataConfig().image_cache is False
    bundle(sop).train[0]
    assert cache_files(tmp_path) == []
    digits = create_datasets(DataConfig(image_size=16, image_cache=True), seed=0, mean=MEAN, std=STD)
    digits.train[0]
    assert cache_files(tmp_path) == []


def test_a_changed_photo_gets_a_new_entry(sop, tmp_path):
    train = bundle(sop, image_cache=True).train
    train.load_image(0)
    path = train.paths[0]
    before = train.image_cache.entry(path, None)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert train.image_cache.entry(path, None) != before
    train.load_image(0)
    assert len(cache_files(tmp_path)) == 2


def test_boxes_and_sizes_are_part_of_the_key(tmp_path, sop):
    cache = ImageCache.for_size(IMAGE_SIZE, 0.875, tmp_path / "c")
    path = str(next(sop.rglob("*.JPG")))
    keys = {cache.entry(path, None), cache.entry(path, [0, 0, 10, 10]),
            ImageCache.for_size(64, 0.875, tmp_path / "c").entry(path, None)}
    assert len(keys) == 3


@pytest.mark.parametrize("garbage", [b"", b"not an npy file", "object"])
def test_a_corrupt_entry_is_rebuilt(sop, tmp_path, garbage):
    train = bundle(sop, image_cache=True).train
    good = np.asarray(train.load_image(0))
    entry = train.image_cache.entry(train.paths[0], None)
    if garbage == "object":  # a valid .npy file holding the wrong array
        np.save(entry, np.zeros((4, 4), dtype=np.float32))
    else:
        entry.write_bytes(garbage)
    assert np.array_equal(np.asarray(train.load_image(0)), good)
    assert np.array_equal(np.load(entry), good)  # rewritten


def test_an_unwritable_cache_is_one_error_naming_the_file_and_the_fix(sop, tmp_path, monkeypatch):
    import harness.data.image_cache as ic

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ic, "atomic_write_bytes", full)
    train = bundle(sop, image_cache=True).train
    with pytest.raises(DataError) as e:
        train[0]  # not a skipped "corrupt image": the run stops
    msg = str(e.value)
    assert "\n" not in msg and "data.image_cache" in msg and "No space left" in msg
    assert ".npy" in msg and "HARNESS_CACHE_DIR" in msg and "data.image_cache=false" in msg


@pytest.mark.parametrize("key, value", [("image_cache", "sometimes"), ("image_cache", [1]),
                                        ("augment_on", "gpu"), ("augment_on", 1)])
def test_bad_values_are_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"data.{key}"):
        build_config({"data": {key: value}})


@pytest.mark.parametrize("size", [(127, 90), (90, 127), (300, 37), (30, 20)])
def test_evaluation_is_unchanged_for_any_aspect(tmp_path, size):
    """The cached long side is truncated as torchvision's Resize truncates it, so the
    evaluation resize of a cached image is the identity (a rounded side would shift the
    centre crop); an image smaller than the short side is stored as it is."""
    from PIL import Image

    from harness.data.transforms import eval_transform

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    tf = eval_transform(IMAGE_SIZE, MEAN, STD, 0.875)
    plain = ImageFileDataset([path], [0], transform=tf)
    cached = plain.with_image_cache(ImageCache.for_size(IMAGE_SIZE, 0.875, tmp_path / "cache"))
    cached[0]  # fills the entry
    assert min(cached.load_image(0).size) == min(36, min(size))
    assert torch.equal(plain[0][0], cached[0][0])


def test_a_cache_folder_that_is_a_file_is_one_error_not_a_corrupt_entry(sop, tmp_path, monkeypatch, caplog):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "file"))
    train = bundle(sop, image_cache=True).train
    with pytest.raises(DataError, match="cannot write .*file/images/36px/.*npy.*data.image_cache=false"):
        train[0]
    assert "corrupt" not in caplog.text
