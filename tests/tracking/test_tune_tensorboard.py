"""The TensorBoard logger of every sweep's Tune trial folders leaves out non-finite values.

A failed trial reports its objective as -inf (trainables/retrieval.py), which Ray Tune's
own TBXLoggerCallback hands to tensorboardX, which prints "NaN or Inf found in input
tensor." on stderr without saying from where. Real Tune runs, real event files.
"""

from __future__ import annotations

import math
import sys

import pytest
import ray.cloudpickle
from ray import tune
from ray.tune.logger.tensorboardx import TBXLoggerCallback

from fixtures.tracker_stores import read_tensorboard
from harness.tracking import with_tune_tensorboard
from harness.tracking.tensorboard_tracker import FiniteTBXLoggerCallback, TensorBoardTrialCallback, finite_result

pytestmark = pytest.mark.cluster

# the trainable below runs in Ray's workers, which cannot import the tests' modules
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def trial_like_a_failed_one(config):
    """An epoch, then the final report of a failed trial (objective -inf, a NaN metric)."""
    tune.report({"epoch": 1, "objective": 0.5, "val_metric": 0.25})
    tune.report({"epoch": 1, "objective": -math.inf, "val_metric": math.nan, "status": "failed",
                 "nested": {"ok": 1.0, "bad": math.inf}})


def run_tune(tmp_path, name, callbacks):
    tuner = tune.Tuner(trial_like_a_failed_one, run_config=tune.RunConfig(
        name=name, storage_path=str(tmp_path), callbacks=callbacks, verbose=0))
    tuner.fit()
    (trial_dir,) = [p for p in (tmp_path / name).iterdir() if p.is_dir() and list(p.glob("events.out.*"))]
    return read_tensorboard(trial_dir)


def test_finite_result_drops_only_non_finite_numbers():
    result = {"a": 1.0, "b": math.nan, "c": -math.inf, "d": "text", "e": 3, "f": {"g": math.inf, "h": 2.0}}
    assert finite_result(result) == {"a": 1.0, "d": "text", "e": 3, "f": {"h": 2.0}}


def test_the_sweep_logger_writes_finite_values_and_no_noise(tmp_path, caplog, ray_session):
    """tensorboardX logs the line as a warning (logger tensorboardX.x2num), which reaches
    the sweep's stderr; pytest's caplog holds it here."""
    # the control: Ray's own logger, the one every sweep had, logs the unexplained line
    run_tune(tmp_path, "plain", [TBXLoggerCallback()])
    assert "NaN or Inf found in input tensor" in caplog.text
    caplog.clear()

    callbacks = with_tune_tensorboard([])
    assert [type(cb) for cb in callbacks] == [FiniteTBXLoggerCallback]
    scalars = run_tune(tmp_path, "finite", callbacks)
    assert "NaN or Inf" not in caplog.text
    assert scalars["ray/tune/objective"] == {1: 0.5}  # the -inf of the second report left out
    assert scalars["ray/tune/val_metric"] == {1: 0.25}
    assert 1.0 in scalars["ray/tune/nested/ok"].values() and "ray/tune/nested/bad" not in scalars


def test_no_second_logger_beside_the_tensorboard_tracker(tmp_path):
    tracker = TensorBoardTrialCallback(exp=None, folder=str(tmp_path), trials_table=str(tmp_path / "t.parquet"))
    assert with_tune_tensorboard([tracker]) == [tracker]
