"""Device and mixed-precision choice: CUDA when torch can use a GPU, CPU otherwise.

``train.device`` and ``train.amp`` are ``"auto"`` by default, so the same config runs
on a laptop (CPU, fp32) and on a GPU node (CUDA, bf16 or fp16 autocast, exact search
on the GPU). ``auto`` never falls back to the CPU silently: a machine with an NVIDIA
GPU that torch cannot use (driver too old for torch's CUDA build, a CPU-only torch) is
an error, unless the GPUs were hidden on purpose (``CUDA_VISIBLE_DEVICES=""``, as a
``gpus: 0`` trial gets them, see :func:`isolate_gpus`).
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import Sequence

import torch

from harness.errors import ConfigError

VISIBLE = "CUDA_VISIBLE_DEVICES"


def nvidia_devices() -> list[str]:
    """The NVIDIA GPU device files of this machine (``/dev/nvidia0``, ...), torch aside."""
    return sorted(p for p in glob.glob("/dev/nvidia[0-9]*") if os.path.basename(p)[6:].isdigit())


def gpus_hidden() -> bool:
    """``CUDA_VISIBLE_DEVICES`` is set and selects no device ("" or "-1")."""
    value = os.environ.get(VISIBLE)
    return value is not None and value.strip() in ("", "-1")


def cuda_unusable_reason() -> str | None:
    """Why torch cannot use this machine's NVIDIA GPU, or None (usable, absent, or hidden).

    torch reports the reason (e.g. "The NVIDIA driver on your system is too old") only
    as a warning from ``is_available``; it is captured here.
    """
    if gpus_hidden() or not nvidia_devices():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    if usable:
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    why = next((str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)), "")
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot initialise CUDA" + (
        f": {why}" if why else " (driver too old for this CUDA build, or no driver loaded)"
    )


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when torch can use a GPU, ``cpu`` on a machine without one.

    ``auto`` on a machine whose GPU torch cannot use is an error (never a silent CPU
    run on a GPU node); ``"cuda"`` without a usable GPU is an error too.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: unknown device '{name}'; use 'auto', 'cpu' or 'cuda'")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    reason = cuda_unusable_reason()
    if reason is not None:
        raise ConfigError(
            f"train.device: this machine has an NVIDIA GPU but {reason}; install a torch build "
            "matching the driver (see `harness doctor`), or set train.device=cpu to train on the CPU"
        )
    if name == "cuda":
        raise ConfigError("train.device: 'cuda' requested but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device("cpu")


def isolate_gpus(gpu_ids: Sequence[int | str]) -> None:
    """Show this process exactly the GPUs it was assigned (none: ``CUDA_VISIBLE_DEVICES=""``).

    Ray >= 2.50 leaves ``CUDA_VISIBLE_DEVICES`` alone for tasks given zero GPUs, so a
    ``gpus: 0`` trial on a GPU node would otherwise see (and use) every GPU outside
    Ray's accounting. Must run before torch first touches CUDA in this process.
    """
    wanted = ",".join(str(i) for i in gpu_ids)
    if os.environ.get(VISIBLE) == wanted:
        return
    if torch.cuda.is_initialized():
        raise RuntimeError(
            f"isolate_gpus: CUDA is already initialised in this process; "
            f"cannot restrict it to GPUs [{wanted}] any more"
        )
    os.environ[VISIBLE] = wanted


def gpu_capability(device: torch.device) -> tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)


def native_bf16(device: torch.device) -> bool:
    """bf16 tensor-core math exists from compute capability 8.0 (A100, A10G, H100) on;
    older GPUs (T4 7.5, V100 7.0) only emulate it, slower than fp16 + loss scaling."""
    return device.type == "cuda" and gpu_capability(device) >= (8, 0)


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` (None: full fp32).

    ``auto`` turns AMP on for CUDA only (CPU autocast is rarely faster). On CUDA, bf16
    where the GPU computes it natively (no loss scaling needed), fp16 + GradScaler
    otherwise; on CPU, ``on`` means bf16, the only CPU autocast dtype.
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"train.amp: unknown mode '{mode}'; use 'auto', 'on' or 'off'")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.bfloat16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 do not need it."""
    return dtype == torch.float16


def describe_device(device: torch.device) -> str:
    """``"cpu"`` or ``"cuda:0 NVIDIA H100 80GB HBM3"`` (recorded in RunResult.device)."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def channels_last(device: torch.device) -> bool:
    """Whether the model and its inputs use the channels_last memory format and cuDNN
    autotuning: on CUDA only. Tensor cores read NHWC convolutions without transposes
    (bf16/fp16), and the fixed training input size makes cuDNN's benchmark search pay
    off; on the CPU channels_last is often slower and cudnn is not used."""
    return torch.device(device).type == "cuda"


def memory_format(device: torch.device) -> torch.memory_format:
    """The model's and its inputs' memory format on ``device`` (see :func:`channels_last`)."""
    return torch.channels_last if channels_last(device) else torch.contiguous_format


def apply_layout(model: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """Put ``model`` in the memory format for ``device`` (channels_last on CUDA) and turn
    cuDNN autotuning on for CUDA; on the CPU nothing changes. -> the inputs' format."""
    fmt = memory_format(device)
    if channels_last(device):
        model.to(memory_format=fmt)
        torch.backends.cudnn.benchmark = True
    return fmt
