"""Checkpoints: the full training state, written atomically, and ``load_model``.

``last.pt`` holds everything a resumed run needs to continue the same run (model,
optimizers, scheduler, grad scaler, memory incl. its Kalman state, RNG states, epoch,
best-so-far, drift probe embeddings, the config). ``best.pt`` holds the model weights
of the best validation epoch and the config, which is all ``load_model`` needs.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.utils.atomic import atomic_write
from harness.config import RunConfig, build_config
from harness.errors import HarnessError


class CheckpointError(HarnessError):
    """A missing, truncated or foreign checkpoint file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` atomically: a crash mid-write leaves the previous checkpoint intact,
    never a truncated one."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; problems are one-line errors.

    The default loads every tensor to the CPU whatever device it was saved from (a
    GPU node's checkpoint opens on a CPU-only machine); ``load_state_dict`` of the
    model, optimizers and memory then copies each tensor to where its owner lives.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: the state holds RNG states (numpy arrays, python tuples).
        # Checkpoints are our own files, written by this harness.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({first}); point to another checkpoint or run folder"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a harness checkpoint (no model/config entries)")
    return state


def rng_states() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) generator states."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`rng_states`; CUDA states go to the GPUs this process has.

    A checkpoint from a machine with more GPUs than this one (a multi-GPU node's run
    resumed in a one-GPU trial, or on a CPU node) restores the states of the devices
    present, by index; the others are dropped. Fewer saved than present: the rest keep
    their current state.
    """
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    saved = states.get("cuda") or []
    if saved and torch.cuda.is_available():
        for index in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[index].cpu(), index)


def config_from_checkpoint(state: dict[str, Any], path: str | Path = "checkpoint") -> RunConfig:
    return build_config(state["config"], source=f"{path} (stored config)")


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """``(model, RunConfig)`` from a ``best.pt`` / ``last.pt``; the model is in eval mode.

    Used by ``harness eval``. Pretrained weights are not fetched again: the model is
    built from the architecture and the stored weights are loaded over it.
    """
    state = load_checkpoint(path, map_location)
    config = config_from_checkpoint(state, path)
    arch = config.model_copy(
        update={"model": config.model.model_copy(update={"pretrained": False})}
    )
    # here, not at the top: building a model imports timm and pytorch-metric-learning
    # (seconds); reading and writing checkpoints, and `harness eval`'s input checks, do not
    from harness.core.components import build_model

    model = build_model(arch)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit the stored model config ({str(e).splitlines()[0]})"
        ) from None
    model.eval()
    return model, config
