"""Sizes checked before anything is allocated: a config whose tensors cannot fit the
device's memory is one ConfigError line naming the key and the estimate, not an
allocator traceback (``DefaultCPUAllocator: can't allocate memory``) or an OOM kill.

The estimates are lower bounds, counted in float32 from the shapes the run will hold
(docs/METHODS.md §1, §2): the memory's ring buffer (M × d embeddings + labels) and one step's
similarities against it (B × M, with the loss's temporaries and their gradients), a batch
of input images (B × 3 × S², plus at least the first layer's output), the embeddings and
the head's weights with AdamW's state (d), the prototypes' ridge fit (m × m) and
histograms (B × m), the pairwise B × B matrices. Activations beyond the first layer, the
backbone's weights and allocator slack come on top, so a config that passes may still
not fit; one that fails cannot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import RunConfig
from harness.errors import ConfigError

F32 = 4
I64 = 8
# float32 B x M (or B x B) matrices one loss step holds at least: similarities, their
# gradient, the loss's exp/log terms and the miner's mask.
PAIR_MATRICES = 4
# Parameter, gradient and AdamW's two moments per weight.
WEIGHT_COPIES = 4


@dataclass
class Term:
    keys: str  # the config key(s) to name, "memory.size"
    what: str  # what the bytes hold, for the message
    nbytes: int


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def _cgroup_free() -> int | None:
    """Memory left under this process's cgroup limit (v2, else v1), None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


def host_available() -> int:
    """Bytes this process can still allocate on the host: MemAvailable (or free pages),
    capped by the cgroup's limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not POSIX: no check
            available = 2**62
    cgroup = _cgroup_free()
    return min(available, cgroup) if cgroup is not None else available


def device_available(device: torch.device) -> tuple[int, str]:
    """(free bytes, how to name them) of the device a run trains on."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"{torch.cuda.get_device_name(device)} has {human(free)} free"
    free = host_available()
    return free, f"the host has {human(free)} available"


def estimate_terms(config: RunConfig, memory_capacity: int | None = None, workers: int = 1) -> list[Term]:
    """Lower bounds of what a run of ``config`` holds, per config key. ``memory_capacity``:
    the memory's size in embeddings when known (after the data is read), else the explicit
    ``memory.size`` (a fraction is checked once the data is known)."""
    t, m, d = config.train, config.model, config.model.embedding_size
    b = t.batch_size
    s = config.data.image_size
    terms = [
        Term("train.batch_size, data.image_size", f"a batch of {b} images of 3 x {s} x {s}",
             2 * b * 3 * s * s * F32),
        Term("train.eval_batch_size, data.image_size", f"an evaluation batch of {t.eval_batch_size} images of "
             f"3 x {s} x {s}", 2 * t.eval_batch_size * 3 * s * s * F32),
        Term("train.batch_size", f"the {b} x {b} pair matrices of a step", PAIR_MATRICES * b * b * F32),
        Term("model.embedding_size", f"{b} embeddings of {d} and the head's weights",
             WEIGHT_COPIES * b * d * F32 + WEIGHT_COPIES * d * F32),
    ]
    cap = memory_capacity if memory_capacity is not None else (
        config.memory.size if config.memory.kind != "none" and config.memory.size is not None else 0)
    if cap:
        key = "memory.size" if config.memory.size is not None else "memory.fraction"
        terms.append(Term(key, f"a memory of {cap} embeddings of {d} and a step's {b} x {cap} similarities",
                          cap * (d * F32 + 2 * I64 + F32) + PAIR_MATRICES * b * cap * F32
                          # the adapted kinds' row-norm scratch block (<= 4 MiB) and per-dimension moments
                          + min(cap * d, 2**20) * F32 + 6 * d * F32))
    if m.pooling == "prototype" or config.xml.enabled:
        p = m.prototypes.count
        terms.append(Term("model.prototypes.count", f"{p} prototypes' {p} x {p} ridge fit and {b} x {p} histograms",
                          3 * p * p * F32 + WEIGHT_COPIES * b * p * F32))
    return terms


def check_sizes(config: RunConfig, device: torch.device, memory_capacity: int | None = None,
                available: tuple[int, str] | None = None) -> None:
    """ConfigError when the lower bound of what ``config`` holds exceeds the device's free memory."""
    free, where = available if available is not None else device_available(device)
    terms = estimate_terms(config, memory_capacity)
    total = sum(x.nbytes for x in terms)
    if total <= free:
        return
    big = max(terms, key=lambda x: x.nbytes)
    keys = [k.strip() for k in big.keys.split(",")]
    flat = config.flat()
    values = ", ".join(f"{k}={flat.get(k)}" if flat.get(k) is not None else f"{k}=0.5 (the default)" for k in keys)
    raise ConfigError(
        f"{values}: {big.what}: at least {human(big.nbytes)} ({human(total)} for the whole run), but "
        f"{where} ({device.type}); lower {' or '.join(keys)}"
    )
