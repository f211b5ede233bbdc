"""ClassBalancedBatchSampler: m-per-class blocks, class-disjoint halves, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.data.sampler import ClassBalancedBatchSampler
from harness.errors import HarnessError


def _labels(sizes, seed=0):
    y = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(y)


def _check_batch(batch, labels, batch_size, m):
    assert len(batch) == batch_size
    y = labels[np.asarray(batch)]
    c = batch_size // m
    blocks = y.reshape(c, m)
    assert (blocks == blocks[:, :1]).all()  # each block is one class
    first = math.ceil(c / 2)
    assert not set(blocks[:first, 0]) & set(blocks[first:, 0])  # halves class-disjoint
    return blocks[:, 0]


def test_m_per_class_blocks_and_disjoint_halves():
    labels = _labels([5, 9, 4, 6, 12, 7, 8, 3, 10, 5])
    s = ClassBalancedBatchSampler(labels, batch_size=16, samples_per_class=4, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == len(labels) // 16
    for b in batches:
        classes = _check_batch(b, labels, 16, 4)
        assert len(set(classes)) == 4  # enough classes: all distinct
        # Without replacement inside a block when the class has >= m images.
        y = labels[np.asarray(b)]
        for block in np.asarray(b).reshape(4, 4):
            if np.sum(labels == labels[block[0]]) >= 4:
                assert len(set(block)) == 4
        assert set(y) == set(classes)


def test_deterministic_under_seed_and_epoch():
    labels = _labels([6] * 20)
    a = ClassBalancedBatchSampler(labels, 24, 4, seed=7)
    b = ClassBalancedBatchSampler(labels, 24, 4, seed=7)
    assert list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    e1 = list(a)
    assert e1 == list(b) and e1 != e0
    a.set_epoch(0)
    assert list(a) == e0
    assert list(ClassBalancedBatchSampler(labels, 24, 4, seed=8)) != e0


def test_small_classes_sampled_with_replacement():
    labels = _labels([1, 2, 2, 3, 1, 2])
    s = ClassBalancedBatchSampler(labels, 8, 4, seed=0, iters_per_epoch=5)
    batches = list(s)
    assert len(batches) == 5
    for b in batches:
        _check_batch(b, labels, 8, 4)


def test_fewer_classes_than_blocks_keeps_halves_disjoint():
    labels = _labels([30, 30, 30])
    s = ClassBalancedBatchSampler(labels, 64, 4, seed=0, iters_per_epoch=4)
    for b in s:
        classes = _check_batch(b, labels, 64, 4)
        assert len(set(classes)) == 3


def test_odd_classes_per_batch():
    labels = _labels([8] * 10)
    for b in ClassBalancedBatchSampler(labels, 12, 4, seed=2):
        _check_batch(b, labels, 12, 4)


def test_covers_every_image_before_repeating():
    labels = _labels([8] * 16)
    s = ClassBalancedBatchSampler(labels, 32, 4, seed=3)
    seen = np.concatenate([np.asarray(b) for b in s])
    assert len(seen) == len(labels) and len(set(seen.tolist())) == len(labels)


@pytest.mark.parametrize(
    "labels, batch, m, match",
    [
        (np.zeros(10, int), 8, 4, "at least 2 classes"),
        (np.arange(10) % 3, 10, 4, "multiple"),
        (np.arange(10) % 3, 4, 4, "at least 2"),
    ],
)
def test_errors(labels, batch, m, match):
    with pytest.raises(HarnessError, match=match):
        ClassBalancedBatchSampler(labels, batch, m, seed=0)


def test_works_as_dataloader_batch_sampler():
    import torch

    labels = _labels([4] * 6)
    ds = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    s = ClassBalancedBatchSampler(labels, 8, 4, seed=0)
    got = [y.tolist() for _, y in torch.utils.data.DataLoader(ds, batch_sampler=s)]
    assert len(got) == len(s) and all(len(g) == 8 for g in got)
