"""The sweep's Tune schedulers: FIFO that follows the storage, and ASHA per compared value.

:class:`SweepScheduler` keeps every trial's files in this driver's storage (see its
docstring); :class:`PerValueScheduler` gives each compared value its own ASHA, so a
method's trials only compete with trials of the same method.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from harness.results.contract import OBJECTIVE_KEY
from harness.sweep.internals import fs_and_path
from harness.results.trial_spec import compare_label

if TYPE_CHECKING:
    from harness.sweep.experiment import Experiment


class SweepScheduler(FIFOScheduler):
    """FIFO, and every trial's files go under ``tune_path``, the phase's Tune folder
    in the storage of *this* driver's command line.

    ``Tuner.restore`` re-points the trials it restores, but trials the restored search
    algorithm creates afterwards inherit the storage of the first start (Ray pickles it
    with the generator): a resumed copy of a storage wrote checkpoints into the
    original. ``on_trial_add`` runs before a trial's first write and moves it over.
    """

    def __init__(self, tune_path: str | None = None):
        super().__init__()
        self.tune_path = tune_path

    def on_trial_add(self, tune_controller, trial):
        if self.tune_path:
            _follow_storage(trial, self.tune_path)
        super().on_trial_add(tune_controller, trial)


def _follow_storage(trial, tune_path: str) -> None:
    parent, name = tune_path.rstrip("/").rsplit("/", 1)
    fs, fs_path = fs_and_path(parent)
    old = trial.storage
    if old is None or (old.storage_fs_path == fs_path and old.experiment_dir_name == name):
        return
    new = copy.copy(old)
    new.storage_filesystem = fs
    new.storage_fs_path = fs_path
    new.experiment_dir_name = name
    trial.set_storage(new)


class PerValueScheduler(SweepScheduler):
    """ASHA per compared value: a method's trials are only stopped in favour of
    better trials of the same method, never of another one."""

    def __init__(self, make: Callable[[], Any], tune_path: str | None = None):
        super().__init__(tune_path)
        self._make = make
        self._by_value: dict[str, Any] = {}

    def _of(self, trial):
        label = compare_label(trial.config)
        if label not in self._by_value:
            self._by_value[label] = self._make()
        return self._by_value[label]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial):
        if self.tune_path:
            _follow_storage(trial, self.tune_path)
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._of(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self._of(trial).on_trial_error(tune_controller, trial)


class AshaFactory:
    """Picklable maker of one ASHA scheduler (Tune pickles the scheduler)."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    def __call__(self):
        asha = self.exp.search.scheduler
        epochs = self.exp.run_config().train.epochs
        # max_t one past the last epoch: ASHA must not stop a trial at its last epoch
        # report, before the trainable reports its final (test) result.
        return ASHAScheduler(
            time_attr="epoch", metric=OBJECTIVE_KEY, mode=self.exp.search.mode, max_t=epochs + 1,
            grace_period=min(asha.grace_period, epochs), reduction_factor=asha.reduction_factor,
            brackets=asha.brackets,
        )


def create_scheduler(exp: Experiment, tune_path: str) -> SweepScheduler:
    """The search phase's scheduler: ASHA per compared value when configured, else FIFO."""
    return PerValueScheduler(AshaFactory(exp), tune_path) if exp.search.scheduler else SweepScheduler(tune_path)
