"""What every tracker records about a run: its identity, parameters and metrics.

A sweep trial becomes one tracked run named after its ``trial_id`` (the key of its row
in ``trials.parquet``), grouped by experiment and method, with the trial's flat run
config as parameters, a metrics point per epoch (step = epoch) and the final test
metrics at the last epoch. Metric names are the harness's own with ``@`` spelled
``_at_`` (``val.recall@1`` -> ``val.recall_at_1``), because MLflow forbids ``@``; every
tracker uses the same names, so the runs read the same in each.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from harness.results.contract import TUNE_RESULT_KEYS
from harness.results.trial_report import REPORT_KEYS, TrialReport
from harness.results.trial_spec import run_overrides, spec_of

# Tune's bookkeeping and the trainable's non-metric report keys (the epoch is the step).
NOT_METRICS = TUNE_RESULT_KEYS | REPORT_KEYS


def metric_key(name: str) -> str:
    """A harness metric name as every tracker records it (MLflow forbids '@')."""
    return name.replace("@", "_at_")


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Finite numeric values under tracker-safe names."""
    out = {}
    for k, v in metrics.items():
        if k in NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[metric_key(k)] = float(v)
    return out


def result_metrics(result: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, metrics) of one Tune result of harness.trainables.retrieval: an epoch's metrics,
    or for the final report the test metrics of the best checkpoint (at the last epoch)."""
    report = TrialReport.decode(result)
    step = report.epoch or int(result.get("training_iteration") or 0)
    metrics = clean_metrics(report.metrics)
    if report.final and report.summary is not None:
        metrics.update(clean_metrics({**report.summary.test, **report.summary.test_untrained}))
    return step, metrics


@dataclass(frozen=True)
class TrackedRun:
    """Identity and parameters of one tracked run (a sweep trial or a `harness train` run)."""

    run_name: str  # the trials.parquet trial_id, or the run folder's name
    experiment: str
    method: str
    phase: str  # "search" | "reproduction" | "train"
    params: dict[str, Any]  # the flat run config (dotted keys)
    searched: dict[str, Any] = field(default_factory=dict)  # the values the search sampled
    compare_value: str | None = None
    link: str | None = None  # where the run's results live (trials.parquet, run folder)

    def tags(self) -> dict[str, str]:
        tags = {"experiment": self.experiment, "method": self.method, "phase": self.phase,
                "trial_id": self.run_name}
        if self.compare_value is not None:
            tags["compare_value"] = str(self.compare_value)
        if self.link:
            tags["results"] = self.link
        if self.searched:
            tags["searched"] = json.dumps(self.searched, sort_keys=True)
        return tags

    def param_strings(self) -> dict[str, str]:
        """Parameters as strings (lists as JSON), the form MLflow and TensorBoard take."""
        return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                for k, v in self.params.items()}

    def hparams(self) -> dict[str, Any]:
        """The few parameters a TensorBoard HParams table shows: searched values, seed, method."""
        out: dict[str, Any] = {"method": self.method, "phase": self.phase}
        for k, v in {**self.searched, "seed": self.params.get("seed")}.items():
            out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
        return out


def sweep_trial_run(exp, trial, trials_table: str) -> TrackedRun:
    """The TrackedRun of a Tune trial of a harness sweep (``trial.config["spec"]``)."""
    from harness.sweep.experiment import method_of

    spec = spec_of(trial.config) or {}
    cfg = exp.run_config(run_overrides(spec))
    # The trials.parquet key: reproductions carry their own id, search trials use Tune's.
    trial_id = spec.get("trial_id") or trial.trial_id
    return TrackedRun(
        run_name=trial_id, experiment=exp.name, method=method_of(cfg),
        phase=str(spec.get("phase", "search")), params=cfg.flat(),
        searched=dict(spec.get("params") or {}), compare_value=spec.get("compare_value"),
        link=f"{trials_table}#trial_id={trial_id}",
    )
