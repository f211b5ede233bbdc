"""The benchmarks' measuring loop: variants interleaved round by round, timed per call.

Every variant runs once per round, in an order that alternates between rounds, so slow
drifts of a shared machine (other processes, clocks, caches) fall on all variants alike;
the first ``warmup`` rounds are not recorded. Each call is timed in wall and CPU
(process) time: on a shared machine the CPU time excludes the time other processes
hold the cores.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence


def rounds(variants: Sequence[str], warmup: int, repeats: int) -> Iterator[tuple[int, str, bool]]:
    """``(round, variant, record)`` for ``warmup + repeats`` rounds of all ``variants``."""
    for r in range(warmup + repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for variant in order:
            yield r, variant, r >= warmup


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of ``fn()``; ``sync`` (e.g. a CUDA synchronise)
    runs before and inside the timed span so queued device work is counted."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0
