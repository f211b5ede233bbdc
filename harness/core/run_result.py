"""What one training run returns (and ``summary.json`` holds): :class:`RunResult`.

Its own module, free of torch, so that code that only passes results around (the
trainables' callers, test doubles of ``run_training`` that Ray ships to its workers)
does not import the training stack (torch, timm, pytorch-metric-learning: seconds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.results.contract import TrialStatus


@dataclass
class RunResult:
    status: TrialStatus  # STATUS_COMPLETED | STATUS_DIVERGED
    epochs_run: int
    best_epoch: int | None
    best_val: dict[str, float]  # "val.recall@1", "val.map@r", ...
    test: dict[str, float]  # "test.recall@1", ... (best checkpoint only)
    wall_seconds: float
    device: str  # "cpu" | "cuda:0 NVIDIA H100 ..."
    out_dir: Path
    # Extension: the test metrics of the network before training ("test_untrained.*").
    test_untrained: dict[str, float] = field(default_factory=dict)
    # A search trial of several runs (search.objective): each run's fold, seed, status
    # and search-metric value (trainables/objective.py); empty for a single run.
    units: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_summary(cls, s: dict[str, Any], out_dir: Path) -> "RunResult":
        """The inverse of :meth:`summary` (a ``summary.json`` read back)."""
        def pick(prefix: str) -> dict[str, float]:
            return {k: float(v) for k, v in s.items() if k.startswith(prefix)}

        return cls(
            status=s["status"], epochs_run=int(s["epochs_run"]), best_epoch=s.get("best_epoch"),
            best_val=pick("val."), test=pick("test."), wall_seconds=float(s["wall_seconds"]),
            device=str(s["device"]), out_dir=out_dir, test_untrained=pick("test_untrained."),
            units=list(s.get("units") or []),
        )

    def summary(self) -> dict[str, Any]:
        """The flat ``summary.json`` mapping."""
        d = {k: v for k, v in asdict(self).items()
             if k not in ("best_val", "test", "test_untrained") and not (k == "units" and not v)}
        d["out_dir"] = str(self.out_dir)
        return {**d, **self.best_val, **self.test, **self.test_untrained}
