"""DataLoaders built once per run, with persistent workers and per-batch seeds.

A training run iterates the same loader every epoch; rebuilding it each epoch forks
all workers again and refills the prefetch pipeline while the GPU waits.
:func:`training_loader` is built once (``persistent_workers`` when there are workers)
and stays deterministic across epochs and resumptions: every batch carries a seed
derived from (run seed, epoch, batch number), and the worker that loads it reseeds
``random``, numpy and torch from it first, so a batch's augmentation depends neither on
which worker loads it, on the worker count, nor on an earlier interruption. Without
workers the loading runs in the main process on its own RNG (restored on resume), as
before. :class:`EvalLoaders` keeps one persistent loader per dataset evaluated every
epoch (validation).
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from harness.data.datasets import collate_skip_corrupt


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1, np.uint64)[0] >> 1)


class SeededBatches:
    """Wraps a batch sampler: yields ``[(batch_seed, index), ...]`` for the current epoch."""

    def __init__(self, batch_sampler, seed: int):
        self.batch_sampler, self.seed, self.epoch = batch_sampler, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b, indices in enumerate(self.batch_sampler):
            s = batch_seed(self.seed, self.epoch, b)
            yield [(s, int(i)) for i in indices]


class SeededDataset(torch.utils.data.Dataset):
    """``dataset[(seed, index)]`` -> (image, label, index), or None for a corrupt image;
    in a worker, reseeds the RNGs when a new batch starts."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        if seed != self._seed and get_worker_info() is not None:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            self._seed = seed
        item = self.dataset[index]
        return None if item is None else (*item, index)


def collate_training(batch):
    """:func:`collate_skip_corrupt` plus the batch's training-image indices ->
    (images, labels, n_skipped, indices); the memory keeps the indices beside its rows
    (the staleness diagnostic re-embeds those images)."""
    kept = [b for b in batch if b is not None]
    images, labels, n_skipped = collate_skip_corrupt([None if b is None else b[:2] for b in batch])
    return images, labels, n_skipped, torch.tensor([b[2] for b in kept], dtype=torch.long)


def training_loader(dataset, batch_sampler, seed: int, workers: int, pin_memory: bool) -> DataLoader:
    """The run's training loader; call ``loader.batch_sampler.set_epoch(e)`` before each epoch."""
    return DataLoader(
        SeededDataset(dataset), batch_sampler=SeededBatches(batch_sampler, seed),
        collate_fn=collate_training, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


class EvalLoaders:
    """One persistent loader per dataset (by identity), for splits evaluated each epoch."""

    def __init__(self, batch_size: int, workers: int, pin_memory: bool):
        self.batch_size, self.workers, self.pin_memory = batch_size, workers, pin_memory
        self._loaders: dict[int, tuple[Any, DataLoader]] = {}

    def __call__(self, dataset) -> DataLoader:
        hit = self._loaders.get(id(dataset))
        if hit is not None and hit[0] is dataset:
            return hit[1]
        loader = DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
            pin_memory=self.pin_memory, collate_fn=collate_skip_corrupt,
            persistent_workers=self.workers > 0,
        )
        self._loaders[id(dataset)] = (dataset, loader)
        return loader

    def close(self) -> None:
        """Stop the persistent workers (dropping the loaders ends their processes)."""
        self._loaders.clear()
