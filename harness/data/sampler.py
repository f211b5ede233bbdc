"""m-per-class batches whose two halves are class-disjoint (XML splits them).

A batch is ``c = batch_size // m`` class blocks of ``m`` indices, listed in order.
Blocks ``[0, ceil(c/2))`` and ``[ceil(c/2), c)`` use disjoint classes, so the first
``m * ceil(c/2)`` items and the rest share no label (``c`` even: exactly the halves).
Classes within a batch are distinct when there are at least ``c`` classes; with fewer,
the classes are split into two groups and each half cycles through its own group
(a class may then fill several adjacent blocks), so the halves stay disjoint.

Like pytorch-metric-learning's ``MPerClassSampler``, an epoch has
``len(labels) // batch_size`` batches unless ``iters_per_epoch`` is given. Unlike it,
images are drawn from per-class shuffled queues (every image is seen before any
repeats) and classes from a shuffled class queue, so coverage is even. A class with
fewer than ``m`` images is sampled with replacement. Everything derives from
``(seed, epoch)``: the same seed and epoch give the same batches in any process.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.errors import ConfigError, DataError


class ClassBalancedBatchSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(self, labels, batch_size: int, samples_per_class: int, seed: int = 0,
                 iters_per_epoch: int | None = None):
        labels = np.asarray(labels).reshape(-1)
        if samples_per_class < 1 or batch_size < 1 or batch_size % samples_per_class:
            raise ConfigError(
                f"batch size {batch_size} must be a positive multiple of samples_per_class "
                f"{samples_per_class}; change train.batch_size or train.samples_per_class"
            )
        self.classes_per_batch = batch_size // samples_per_class
        if self.classes_per_batch < 2:
            raise ConfigError(
                f"batch size {batch_size} holds one class of {samples_per_class}; need at least 2 "
                "classes per batch (raise train.batch_size)"
            )
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise DataError(f"class-balanced sampling needs at least 2 classes, the training set has {len(classes)}")
        self.batch_size = batch_size
        self.m = samples_per_class
        self.seed = seed
        self.epoch = 0
        self.iters_per_epoch = iters_per_epoch
        # Indices of each class, as lists of positions into ``labels``.
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1]
        self.class_indices = np.split(order, bounds)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle deterministically for ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.iters_per_epoch is not None:
            return self.iters_per_epoch
        return max(1, sum(len(c) for c in self.class_indices) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self.class_indices)
        c = self.classes_per_batch
        first = math.ceil(c / 2)
        pools = [_Queue(idx, rng) for idx in self.class_indices]
        if n_classes >= c:
            class_queue = _Queue(np.arange(n_classes), rng)
        else:
            # Too few classes for distinct blocks: two fixed-size disjoint groups,
            # reshuffled per batch, each feeding one half.
            n_first = max(1, min(n_classes - 1, round(n_classes * first / c)))
        for _ in range(len(self)):
            if n_classes >= c:
                chosen = class_queue.take_distinct(c)
            else:
                perm = rng.permutation(n_classes)
                g1, g2 = perm[:n_first], perm[n_first:]
                chosen = np.concatenate([np.resize(g1, first), np.resize(g2, c - first)])
            batch = np.concatenate([pools[k].take(self.m) for k in chosen])
            yield batch.tolist()


class _Queue:
    """Endless shuffled cycle over ``items``: every item once before any repeat."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator):
        self.items = np.asarray(items)
        self.rng = rng
        self.buf = self.rng.permutation(self.items)
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        if len(self.items) < n:
            # Fewer images than m: with replacement.
            return self.rng.choice(self.items, size=n, replace=True)
        out = []
        while n > 0:
            if self.pos >= len(self.buf):
                self.buf, self.pos = self.rng.permutation(self.items), 0
                if out:
                    # Crossing into a new cycle: items already in this block go last,
                    # so a block never repeats an image of a class that has >= m.
                    taken = np.isin(self.buf, np.concatenate(out))
                    self.buf = np.concatenate([self.buf[~taken], self.buf[taken]])
            got = self.buf[self.pos:self.pos + n]
            self.pos += len(got)
            n -= len(got)
            out.append(got)
        return np.concatenate(out)

    def take_distinct(self, n: int) -> np.ndarray:
        """``n`` distinct items (n <= len(items)), continuing the cycle."""
        out: list = []
        seen: set = set()
        while len(out) < n:
            if self.pos >= len(self.buf):
                self.buf, self.pos = self.rng.permutation(self.items), 0
            x = self.buf[self.pos]
            self.pos += 1
            if x in seen:
                # Wrapped onto an item already in this batch: defer it to the next cycle.
                continue
            seen.add(x)
            out.append(x)
        return np.asarray(out)
