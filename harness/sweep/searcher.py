"""CompareSearcher: one Optuna searcher per compared value behind one Tune searcher.

Like Ray's ``search/concurrency_limiter.py``, one wrapper in one file; the sweep's
search phase puts it (inside Ray's ConcurrencyLimiter with ``--max-concurrent``) in
the one Tuner of :mod:`harness.sweep.tuner`.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from harness.results.contract import OBJECTIVE_KEY
from harness.sweep.optuna_storage import create_searcher
from harness.sweep.space import create_sampler, define_by_run
from harness.results.trial_spec import NO_COMPARE_LABEL, SPEC_KEY, search_spec

if TYPE_CHECKING:
    from harness.sweep.experiment import Experiment

# Tune's searchers key everything by string: the label of "no compare axis"


class CompareSearcher(Searcher):
    """One Optuna searcher per compared value, each with its own trial budget.

    Suggestions go to the value with the fewest trials so far, so all values make
    progress together and share the parallel slots.
    """

    def __init__(self, searchers: dict[str, Any], budget: dict[str, int], metric: str,
                 mode: str, seed: int, phase_overrides: dict[str, dict[str, Any]]):
        super().__init__(metric=metric, mode=mode)
        self.searchers = searchers
        self.budget = budget
        self.seed = seed
        self.phase_overrides = phase_overrides
        self.assigned: dict[str, str] = {}  # tune trial id -> compare label

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours; Tune's param_space stays empty

    def suggest(self, trial_id: str):
        counts = {label: 0 for label in self.budget}
        for label in self.assigned.values():
            counts[label] += 1
        open_labels = [lb for lb in self.budget if counts[lb] < self.budget[lb]]
        if not open_labels:
            return self.FINISHED
        label = min(open_labels, key=lambda lb: counts[lb])
        params = self.searchers[label].suggest(trial_id)
        if params is None:
            return None
        if params == self.FINISHED:  # a finished grid
            self.budget[label] = counts[label]
            return self.suggest(trial_id)
        self.assigned[trial_id] = label
        overrides = {**self.phase_overrides[label], **params}
        return {SPEC_KEY: search_spec(compare_value(label), overrides, params, self.seed)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.assigned and OBJECTIVE_KEY in result:
            self.searchers[self.assigned[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.assigned:
            self.searchers[self.assigned[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        url = getattr(self, "optuna_url", None)  # set by this driver, not the snapshot's
        # else the database this driver's own searchers were built with (a snapshot names none)
        own = {label: getattr(s, "_url", None) for label, s in self.searchers.items()}
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.optuna_url = url
        for label, searcher in self.searchers.items():  # studies in a database: agree with it
            if hasattr(searcher, "reconcile"):
                searcher.reconcile(url or own.get(label))


def searcher_label(value: str | None) -> str:
    """The searcher's key of a compared value (``None``: no compare axis)."""
    return NO_COMPARE_LABEL if value is None else value


def compare_value(label: str) -> str | None:
    """Inverse of :func:`searcher_label`."""
    return None if label == NO_COMPARE_LABEL else label


def create_compare_searcher(exp: Experiment, optuna_storage: str | None,
                            max_concurrent: int | None = None) -> Searcher:
    """The search phase's searcher: an Optuna study per compared value, each with its
    share of the budget (:meth:`Experiment.trial_budget`), in a ConcurrencyLimiter of
    ``max_concurrent`` trials when given."""
    budget = {searcher_label(k): v for k, v in exp.trial_budget().items()}
    searchers = {
        lb: create_searcher(exp, compare_value(lb), optuna_storage,
                            space=define_by_run(exp, compare_value(lb)),
                            sampler=create_sampler(exp, compare_value(lb), i), metric=OBJECTIVE_KEY)
        for i, lb in enumerate(budget)
    }
    overrides = {lb: exp.compare_overrides(compare_value(lb)) for lb in budget}
    searcher: Searcher = CompareSearcher(searchers, budget, OBJECTIVE_KEY, exp.search.mode,
                                         seed=exp.run_config().seed, phase_overrides=overrides)
    if max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return searcher
