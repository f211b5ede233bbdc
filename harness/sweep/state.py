"""``sweep.json``: what a sweep has done so far, the one part of a run that changes.

A :class:`~harness.sweep.plan.SweepPlan` is fixed before Ray starts; the state is
written as the run moves on (created, search done, reproductions done), and a resumed
sweep reads it back. Nothing here imports Ray.
"""

from __future__ import annotations

from typing import Any

from harness.errors import ResultsError
from harness.results.contract import STATE_FILE
from harness.sweep.experiment import Experiment
from harness.sweep.results import ResultsStore


class SweepState:
    """The fields of ``sweep.json`` in ``store``; :meth:`update` writes them through."""

    def __init__(self, store: ResultsStore, fields: dict[str, Any] | None = None):
        self.store = store
        self._fields: dict[str, Any] = dict(fields or {})

    @classmethod
    def read(cls, store: ResultsStore) -> SweepState:
        """The recorded state; a damaged or missing file is one line."""
        lost = (f"the sweep's state is lost; its tables still render with `harness report "
                f"{store.root}`, or start the sweep again with another --storage")
        try:
            fields = store.read_json(STATE_FILE)
            Experiment.model_validate(fields["experiment"])
        except ResultsError as e:
            raise ResultsError(f"{e}; {lost}") from None
        except (KeyError, TypeError, ValueError):
            raise ResultsError(f"{store.path(STATE_FILE)} is not a sweep state file; {lost}") from None
        return cls(store, fields)

    @property
    def experiment(self) -> Experiment:
        return Experiment.model_validate(self._fields["experiment"])

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def __bool__(self) -> bool:  # an empty state: a sweep that has not started yet
        return bool(self._fields)

    def update(self, **fields: Any) -> None:
        """Record ``fields`` and write the whole state (atomically, through the store)."""
        self._fields.update(fields)
        self.store.write_json(STATE_FILE, self._fields)
