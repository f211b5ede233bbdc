"""The doctor's tiny run and state inspection, shared with the tests and benchmarks.

``tiny_config`` (the smallest real training run), ``tensors_in`` / ``misplaced_state``
(which state tensors are off the training device) and ``tie_heavy_embeddings`` (exact,
tie-heavy retrieval input). Kept apart from :mod:`harness.doctor` (the checks and the
verdict table) so that tests and benchmarks import them without the doctor's checks.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch


def tensors_in(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested state (dicts, lists, tuples), with a dotted path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors_in(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors_in(v, f"{prefix}.{i}" if prefix else str(i))


def misplaced_state(trainer, device: torch.device) -> list[str]:
    """Paths of the trainer's state tensors that are not where they belong.

    The training device for everything, except the RNG states and the optimizers'
    ``step`` counters (CPU by torch's design) and the drift probe (CPU, where ``embed``
    returns embeddings). Kalman moments live outside ``state_dict`` tensors' modules
    and are checked too.
    """
    state = trainer.state_dict()
    out = []
    for path, t in tensors_in(state):
        if path.startswith("rng") or path == "probe_prev" or path.endswith(".step"):
            want = "cpu"
        else:
            want = device.type
        if t.device.type != want:
            out.append(f"{path}@{t.device}")
    kalman = getattr(trainer.memory, "kalman", None)
    for key in ("mean", "std"):
        t = getattr(kalman, key, None) if kalman is not None else None
        if t is not None and t.device.type != device.type:
            out.append(f"memory.kalman.{key}@{t.device}")
    return out


def tiny_config(memory_kind: str, device: str, epochs: int = 2, **train) -> dict:
    """A seconds-long digits run with XML on: the doctor's and the tests' smallest run."""
    return {
        "seed": 0,
        "data": {"name": "digits", "image_size": 32, "val_fraction": 0.4, "workers": 0},
        "model": {"backbone": "tiny_cnn_small", "embedding_size": 16,
                  "prototypes": {"count": 8, "temperature": 0.1}},
        "loss": {"miner": None},
        "memory": {"kind": memory_kind, "size": 64},
        "xml": {"enabled": True, "weight": 0.5},
        "optim": {"lr": 1e-3},
        "train": {"epochs": epochs, "batch_size": 16, "samples_per_class": 4, "iters_per_epoch": 3,
                  "probe_size": 8, "eval_batch_size": 128, "device": device, "amp": "auto", **train},
    }  # fmt: skip


def tie_heavy_embeddings(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows with four entries of +-1: after normalisation every entry is +-0.5, so every
    cosine is a multiple of 1/4, exact in any summation order (any BLAS, any GPU), with
    many exact ties; the labels put about 10 rows in a class."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), np.float32)
    for row in x:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return x, rng.integers(0, max(1, n // 10), n)
