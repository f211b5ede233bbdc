"""The ``tracking:`` section of an experiment (and of ``harness train``'s options).

Which trackers to feed, and where each one writes. Every tracker is optional: the core
install does not pull one in, and asking for a tracker that is not installed is one
:class:`ConfigError` line naming the extra to install (``pip install metric-harness[mlflow]``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from harness.errors import ConfigError

TrackerName = Literal["mlflow", "wandb", "tensorboard"]
TRACKERS: tuple[str, ...] = ("mlflow", "wandb", "tensorboard")
# tracker -> (module that must import, extra that installs it)
REQUIREMENTS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb"),
                "tensorboard": ("tensorboardX", "tensorboard")}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MlflowSpec(_Spec):
    # None: $MLFLOW_TRACKING_URI when set, else a SQLite store beside the results tables
    # (``sqlite:///<storage>/<experiment>/mlflow.db``, browsable with ``mlflow ui``).
    tracking_uri: str | None = None


class WandbSpec(_Spec):
    project: str | None = None  # None: the experiment's name
    entity: str | None = None
    # None: $WANDB_MODE when set, else "offline" (no account needed; `wandb sync` uploads later)
    mode: Literal["offline", "online", "disabled"] | None = None


class TrackingSpec(_Spec):
    trackers: list[TrackerName] = []
    mlflow: MlflowSpec = MlflowSpec()
    wandb: WandbSpec = WandbSpec()

    def with_trackers(self, names: list[str] | None) -> "TrackingSpec":
        """This spec plus the trackers named on the command line (``--tracking``)."""
        merged = list(self.trackers)
        for name in parse_trackers(names):
            if name not in merged:
                merged.append(name)
        return self.model_copy(update={"trackers": merged})


def local_folder(root: str) -> Path:
    """Where local stores (MLflow's SQLite file, W&B offline runs, TensorBoard events, the
    Optuna database) go: the experiment folder itself, or for results on s3:// & co.
    ``~/metric-harness-tracking/<experiment>`` on the driver's machine (the cluster head)."""
    if "://" in root and not root.startswith("file://"):
        return Path.home() / "metric-harness-tracking" / root.rstrip("/").rsplit("/", 1)[-1]
    return Path(root.removeprefix("file://")).expanduser().absolute()


def parse_trackers(names: list[str] | None) -> list[str]:
    """Validate ``--tracking`` values (also accepts "mlflow,wandb")."""
    out: list[str] = []
    for raw in names or []:
        for name in raw.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in TRACKERS:
                raise ConfigError(f"--tracking {name}: unknown tracker; choose from {', '.join(TRACKERS)}")
            if name not in out:
                out.append(name)
    return out


def require_installed(names: list[str]) -> None:
    """One ConfigError line, naming the extra, for the first tracker that is not installed."""
    for name in names:
        module, extra = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"tracking with {name} needs the '{module}' package: "
                f"pip install 'metric-harness[{extra}]'"
            )


def apply_tracking(exp, names: list[str] | None, resuming: bool = False):
    """``exp`` with the ``--tracking`` trackers added; checks they are installed.

    A sweep keeps the trackers it started with (recorded in sweep.json with the
    experiment), so a resumed sweep refuses a different set."""
    merged = exp.tracking.with_trackers(names)
    if resuming and merged.trackers != exp.tracking.trackers:
        was = ", ".join(exp.tracking.trackers) or "none"
        raise ConfigError(
            f"--tracking: this sweep started with trackers: {was}, and a resumed sweep keeps "
            "them; resume without --tracking, or start a new sweep with another --storage"
        )
    require_installed(merged.trackers)
    return exp.model_copy(update={"tracking": merged})
