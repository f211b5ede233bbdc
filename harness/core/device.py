"""Device and mixed-precision choice: CUDA when there is one, CPU otherwise.

``train.device`` and ``train.amp`` are ``"auto"`` by default, so the same config runs
on a laptop (CPU, fp32) and on a GPU node (CUDA, bf16 autocast, faiss GPU search).
"""

from __future__ import annotations

import torch

from harness.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: unknown device '{name}'; use 'auto', 'cpu' or 'cuda'")
    return torch.device(name)


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` (None: full fp32).

    ``auto`` turns AMP on for CUDA only (CPU autocast is rarely faster). On CUDA, bf16
    where the GPU supports it (no loss scaling needed), fp16 otherwise; on CPU, ``on``
    means bf16, the only CPU autocast dtype.
    """
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode not in ("auto", "on"):
        raise ConfigError(f"train.amp: unknown mode '{mode}'; use 'auto', 'on' or 'off'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def amp_enabled(device: torch.device, mode: str = "auto") -> bool:
    return amp_dtype(device, mode) is not None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 do not need it."""
    return dtype == torch.float16


def describe_device(device: torch.device) -> str:
    """``"cpu"`` or ``"cuda:0 NVIDIA H100 80GB HBM3"`` (recorded in RunResult.device)."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"
