"""The sweep's Optuna studies in Optuna's RDB storage (SQLite by default, any SQLAlchemy URL).

Each compared value's study is ``<experiment>:<value>`` (``<experiment>`` without a
compare axis) in ``sqlite:///<storage>/<experiment>/optuna.db`` unless
``--optuna-storage URL`` names another database (results on s3://: the SQLite file is
kept on the driver's machine, ``~/metric-harness-tracking/<experiment>/optuna.db``) (e.g. PostgreSQL on the cluster head), so
``optuna-dashboard <URL>`` and ``optuna.load_study`` see the live search. Ray Tune's own
``OptunaSearch(study_name=..., storage=...)`` keeps the study there; every Optuna trial
carries the ``trial_id`` of its ``trials.parquet`` row as a user attribute.

Two records of the search exist after an interruption: the database, and the searcher
state in Tune's last experiment snapshot. On ``--resume`` **the database wins** for the
history (what the sampler learns from, and every value once told): a trial it already
completed is never told again, even if the snapshot still had it running. Tune's
snapshot decides which Tune trials exist and are restarted; a trial the database shows
as running that no restored Tune trial owns (started after the snapshot) is marked FAIL.
If the database lost the study (a deleted SQLite file), it is rebuilt from the copy of
the finished trials and running parameters kept in Tune's snapshot, so a resume works
from either record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from harness.errors import ConfigError
from harness.sweep.internals import fail_optuna_trial, optuna_trial_id, optuna_trial_state
from harness.tracking.config import local_folder

DB_FILE = "optuna.db"
STATE_KEY = "optuna_storage"  # sweep.json: the --optuna-storage URL (null: optuna.db beside the tables)


def recorded_url(url: str, root: str) -> str | None:
    """What sweep.json records: null for the default file, so a moved or copied sweep
    folder resumes with its own optuna.db."""
    return None if url == default_storage_url(root) else url


def default_storage_url(root: str) -> str:
    """``sqlite:///<root>/optuna.db`` beside the tables; for results on s3:// & co. in
    ``~/metric-harness-tracking/<experiment>/`` on the driver's machine."""
    return f"sqlite:///{local_folder(root) / DB_FILE}"


def open_storage(url: str):
    """An RDBStorage for ``url``; a bad URL or an unreachable database is one ConfigError line."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Readers (optuna-dashboard) may hold the file briefly: wait instead of failing.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 30}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # SQLAlchemy raises many types: bad URL, missing driver, refused
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"--optuna-storage {url}: cannot open this Optuna storage ({reason}); give a SQLAlchemy "
            "URL such as sqlite:///path/optuna.db or postgresql://user@host/db"
        ) from None


def resolve_storage_url(experiment, store, state, requested: str | None) -> str:
    """The URL of the studies of ``experiment`` (results in ``store``): the one a resumed
    sweep started with (its ``state``, a :class:`~harness.sweep.state.SweepState`; None
    for a new sweep), else ``requested`` (``--optuna-storage``), else the SQLite file
    beside the tables. A new sweep whose study names are taken in that database is a
    ConfigError."""
    if state and STATE_KEY in state:
        # null: the default file beside the tables, wherever the folder is now
        recorded = state.get(STATE_KEY) or default_storage_url(store.root)
        if requested and requested != recorded:
            raise ConfigError(
                f"--optuna-storage {requested}: this sweep keeps its studies in {recorded}; "
                "resume without --optuna-storage (or with that URL)"
            )
        return recorded
    url = requested or default_storage_url(store.root)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return url  # nothing to check, and no file written before the sweep starts
    existing = set(optuna.get_all_study_names(open_storage(url)))  # fails before Ray starts
    names = [study_name(experiment.name, label) for label in experiment.compare_labels]
    taken = [n for n in names if n in existing]
    if taken:
        # A new sweep must not learn from (or add to) another sweep's history.
        raise ConfigError(
            f"Optuna study '{taken[0]}' already exists in {url}; delete it "
            f"(optuna delete-study --study-name '{taken[0]}' --storage {url}) or give another "
            "--optuna-storage"
        )
    return url


def study_name(experiment: str, label: str | None) -> str:
    return experiment if label is None else f"{experiment}:{label}"


class StoredOptunaSearch(OptunaSearch):
    """Ray Tune's OptunaSearch with its study in an RDB storage (see the module docstring)."""

    def __init__(self, *, url: str, name: str, user_attrs: dict[str, Any], **kwargs: Any):
        self._url = url
        self._user_attrs = dict(user_attrs)
        super().__init__(study_name=name, storage=open_storage(url), **kwargs)
        for k, v in self._user_attrs.items():  # shown by optuna-dashboard
            self._ot_study.set_user_attr(k, v)
        self._history: list[Any] = []  # finished FrozenTrials, as of the last snapshot
        self._running: dict[str, Any] = {}  # Tune trial id -> FrozenTrial still running

    # ---- the live search ----------------------------------------------------------
    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if params is not None and ot_trial is not None:
            ot_trial.set_user_attr("trial_id", trial_id)  # = trials.parquet's trial_id
        return params

    def _finished_in_storage(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in self._completed_trials or ot_trial is None:
            return False
        return optuna_trial_state(self._ot_study, optuna_trial_id(ot_trial)).is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._finished_in_storage(trial_id):  # the database wins
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self._finished_in_storage(trial_id):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    # ---- snapshots and --resume ---------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._ot_study is not None:
            try:
                trials = {optuna_trial_id(t): t for t in self._ot_study.get_trials(deepcopy=False)}
                state["_history"] = [t for t in trials.values() if t.state.is_finished()]
                state["_running"] = {
                    tid: trials[optuna_trial_id(ot)] for tid, ot in self._ot_trials.items()
                    if optuna_trial_id(ot) in trials and not trials[optuna_trial_id(ot)].state.is_finished()}
            except Exception:  # database unreachable right now: keep the last copy
                pass
        # A snapshot holds no database: no storage object, study or live Optuna trial
        # (each names the URL, and unpickling one connects to it: a moved storage's old
        # path is gone, and a copy's would read the original's file), not even the URL.
        # The restoring driver attaches its own database in reconcile().
        study = state.get("_ot_study")
        if study is not None:
            state["_study_sampler"], state["_study_directions"] = study.sampler, list(study.directions)
        state.update(_ot_study=None, _storage=None, _url=None,
                     _ot_trials={tid: None for tid in state.get("_ot_trials", {})})
        return state

    def reconcile(self, url: str | None = None) -> None:
        """After Tune restored this searcher from its snapshot: make the database and
        the snapshot agree (the module docstring says who wins what). ``url``: the
        database of this driver (a copied sweep folder has its own optuna.db)."""
        url = url or self._url
        if url is None:
            raise ConfigError(f"Optuna study '{self._study_name}': no database to resume it from; "
                              "resume with --optuna-storage URL")
        if self._storage is None or url != self._url:
            self._url, self._storage = url, open_storage(url)
        old = self._ot_study
        sampler = old.sampler if old is not None else self._study_sampler
        directions = old.directions if old is not None else self._study_directions
        study = optuna.create_study(storage=self._storage, sampler=sampler,
                                    pruner=optuna.pruners.NopPruner(), study_name=self._study_name,
                                    directions=directions, load_if_exists=True)
        for k, v in self._user_attrs.items():
            study.set_user_attr(k, v)
        in_db = {t.user_attrs.get("trial_id"): t for t in study.get_trials(deepcopy=False)}
        for frozen in self._history:  # lost from the database: copy back from the snapshot
            if frozen.user_attrs.get("trial_id") not in in_db:
                study.add_trial(frozen)
        live = {}
        for tid in self._ot_trials:
            if tid in self._completed_trials:
                continue
            found = in_db.get(tid)
            if found is None:  # running in the snapshot, lost from the database
                frozen = self._running.get(tid)
                if frozen is None:
                    continue
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.RUNNING, params=frozen.params,
                    distributions=frozen.distributions, user_attrs=frozen.user_attrs))
                found = study.get_trials(deepcopy=False)[-1]
            live[tid] = optuna.trial.Trial(study, optuna_trial_id(found))
        owned = {optuna_trial_id(t) for t in live.values()}
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if optuna_trial_id(t) not in owned:  # asked after the snapshot; nobody will tell it
                fail_optuna_trial(study, optuna_trial_id(t))
        self._ot_study = study
        self._ot_trials = {tid: t for tid, t in self._ot_trials.items() if tid in self._completed_trials}
        self._ot_trials.update(live)


def create_searcher(exp, label: str | None, url: str | None, *, space, sampler, metric: str):
    """The OptunaSearch of one compared value: in the RDB storage at ``url`` when given."""
    if url is None:
        return OptunaSearch(space=space, metric=metric, mode=exp.search.mode, sampler=sampler)
    attrs = {"experiment": exp.name, "compare_key": exp.compare_key, "compare_value": label,
             "metric": exp.search.metric, "mode": exp.search.mode}
    return StoredOptunaSearch(url=url, name=study_name(exp.name, label), user_attrs=attrs,
                              space=space, metric=metric, mode=exp.search.mode, sampler=sampler)
