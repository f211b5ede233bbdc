"""Every use of Ray's and Optuna's private APIs, in one place.

The sweep needs a few things neither library offers publicly: a restored ``Tuner``'s
settings (to give it this driver's callbacks, storage and database), a trial's
checkpoint bookkeeping in Tune's experiment state, Ray's storage resolution and its
upload into a local storage (made atomic per file), the
autoscaler's cluster config, a bare GCS probe, and Optuna trials by their storage id.
Each is one function here; ``constraints.txt`` pins the versions they were written
against (ray 2.60.0, optuna 5.1.0) and ``tests/sweep/test_internals.py`` fails, naming
the function, when an upgrade changes one of them.

The searcher subclass ``harness.sweep.optuna_storage.StoredOptunaSearch`` extends Ray's
``OptunaSearch`` and so uses its attributes (``_ot_study``, ``_ot_trials``,
``_completed_trials``, ``_study_name``); the same test checks they are there.
"""

from __future__ import annotations

import json
from typing import Any

# Attributes of ray.tune.search.optuna.OptunaSearch that StoredOptunaSearch relies on.
OPTUNA_SEARCH_ATTRIBUTES = ("_ot_study", "_ot_trials", "_completed_trials", "_study_name")
# Keys of a restored Tuner's pickled state that must stay as the first start saved them.
TUNER_STATE_FIRST_START_KEYS = ("__trainable_name", "__flattened_param_space_keys",
                                "_is_restored", "_resume_config")

# Ray's own GCS client, run in a process of its own (harness/sweep/cluster.py): it reads
# its connect timeouts from the environment once per process, and its C++ side logs raw
# warnings to stderr. Prints "RAY", or "NO <reason>".
GCS_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1])
except Exception as e:
    print("NO", (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
else:
    print("RAY")
"""


# ---- a restored ray.tune.Tuner --------------------------------------------------------

def tuner_tune_config(tuner):
    """The ``TuneConfig`` a Tuner runs with (a restored one: as unpickled)."""
    return tuner._local_tuner._tune_config


def tuner_run_config(tuner):
    """The ``RunConfig`` a Tuner runs with; its ``callbacks`` list may be replaced."""
    return tuner._local_tuner.get_run_config()


def tuner_state(tuner) -> dict[str, Any]:
    """What Tune pickles into ``tuner.pkl`` for this Tuner."""
    return tuner._local_tuner.__getstate__()


# ---- Tune's experiment state and storage ----------------------------------------------

def load_run_metadata(json_state: str):
    """A trial's run metadata (second item of an ``experiment_state-*.json`` trial
    entry): ``.checkpoint_manager.latest_checkpoint_result`` is the checkpoint a restore
    continues from."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    return _TrainingRunMetadata.from_json_state(json_state)


def dump_run_metadata(metadata) -> str:
    metadata.invalidate_cache()
    return metadata.get_json_state()


def record_checkpoint(metadata, checkpoint, metrics: dict[str, Any]) -> None:
    """Make ``checkpoint`` (a ``tune.Checkpoint``) the one a restore of this trial's run
    metadata continues from, as Tune records a reported one."""
    from ray.train._internal.session import _TrainingResult

    metadata.checkpoint_manager.register_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=metrics))


def set_last_checkpoint_index(json_state: str, index: int) -> str:
    """A trial's state (first item of an ``experiment_state-*.json`` trial entry) whose
    last checkpoint is ``checkpoint_<index>``: a restored trial numbers its next
    checkpoint one on from the index its storage context was pickled with."""
    from ray.tune.utils.serialization import TuneFunctionEncoder, _loads_with_cloudpickle

    state = _loads_with_cloudpickle(json_state)
    state["storage"].current_checkpoint_index = index
    return json.dumps(state, indent=2, cls=TuneFunctionEncoder)


def trial_dir_name(json_state: str) -> str | None:
    """The trial's folder name under the experiment (first item of an
    ``experiment_state-*.json`` trial entry); None when the state names none."""
    name = json.loads(json_state).get("relative_logdir")
    return name if isinstance(name, str) and name else None


def fs_and_path(location: str):
    """``(pyarrow filesystem, path)`` of a storage location, as Ray Tune resolves it."""
    from ray.train._internal.storage import get_fs_and_path

    return get_fs_and_path(location)


def forget_last_upload(storage) -> bool:
    """Drop a pickled ``StorageContext``'s record of its last upload (which names the
    folder it uploaded to, kept for a retry); True when there was one."""
    syncer = getattr(storage, "syncer", None)
    if getattr(syncer, "_current_cmd", None) is None:
        return False
    syncer._current_cmd = None
    return True


def last_upload_target(storage) -> str | None:
    """The folder a pickled ``StorageContext``'s last upload went to, if it kept one."""
    last = getattr(getattr(storage, "syncer", None), "_current_cmd", None)
    return None if last is None else str(last[1].get("fs_path", ""))


UPLOAD_TEMP_PREFIX = ".upload-"  # a temporary copy beside its destination (atomic uploads)


def atomic_local_uploads() -> None:
    """Make this process's uploads into a local (or mounted) storage atomic per file.

    The driver copies its experiment state (``experiment_state-*.json``,
    ``searcher-state-*.pkl``, ...) into the sweep's storage after every snapshot with
    ``pyarrow.fs.copy_files``, which writes each file in place; a driver killed in the
    middle leaves a truncated state file, and Tune's restore then logs "Failed to
    restore the run state" and starts the experiment anew (every trial again, the
    searchers unrestored). Here a local destination is written as a temporary copy
    beside it first, then each file is renamed over its old version. Object stores
    (S3, GCS) replace whole objects already and are left to Ray. Idempotent.
    """
    import os
    import shutil
    import uuid

    import pyarrow.fs
    from ray.train._internal import storage as ray_storage

    upload = ray_storage._upload_to_fs_path
    if getattr(upload, "harness_atomic", False):
        return

    def atomic_upload(local_path: str, fs, fs_path: str, exclude=None) -> None:
        if not isinstance(fs, pyarrow.fs.LocalFileSystem):
            return upload(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)
        target = os.path.normpath(fs_path)
        temp = os.path.join(os.path.dirname(target),
                            f"{UPLOAD_TEMP_PREFIX}{os.path.basename(target)}-{uuid.uuid4().hex[:8]}")
        try:
            upload(local_path=local_path, fs=fs, fs_path=temp, exclude=exclude)
            if os.path.isfile(temp):
                os.replace(temp, target)
                return
            for folder, _, files in os.walk(temp):
                dest = os.path.join(target, os.path.relpath(folder, temp))
                os.makedirs(dest, exist_ok=True)
                for name in files:
                    os.replace(os.path.join(folder, name), os.path.join(dest, name))
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    atomic_upload.harness_atomic = True
    ray_storage._upload_to_fs_path = atomic_upload


# ---- the connected Ray cluster ----------------------------------------------------------

def autoscaler_config():
    """The autoscaler's cluster config as the GCS holds it (Ray Train reads the same);
    None when the cluster has none."""
    import ray._private.state

    return ray._private.state.state.get_cluster_config()


# ---- Ray Tune's W&B callback ----------------------------------------------------------------

def wandb_logging_actor_that_waits_for_its_writer():
    """Ray's W&B logging actor, except that ``run`` returns only once W&B's service has
    written the run out. Ray kills a logging actor as soon as its ``run`` returns, and
    ``wandb.finish()`` returns before wandb-core has closed the run's stream: on a busy
    machine an offline run lost every record (a 7-byte ``run-*.wandb``).
    ``wandb.teardown()`` waits for the service to shut down, its streams closed."""
    from ray.air.integrations.wandb import _WandbLoggingActor

    class WandbLoggingActor(_WandbLoggingActor):
        def run(self):
            try:
                super().run()
            finally:
                self._wandb.teardown()

    return WandbLoggingActor


def use_wandb_logging_actor(callback_cls, actor_cls):
    """``callback_cls`` (a ``WandbLoggerCallback`` subclass) starting ``actor_cls``."""
    callback_cls._logger_actor_cls = actor_cls
    return callback_cls


# ---- Optuna -------------------------------------------------------------------------------

def optuna_trial_id(trial) -> int:
    """The storage id of an Optuna ``Trial`` or ``FrozenTrial`` (not its number)."""
    return trial._trial_id


def optuna_trial_state(study, trial_id: int):
    """A trial's state as the study's storage has it now (no cached copy)."""
    return study._storage.get_trial(trial_id).state


def fail_optuna_trial(study, trial_id: int) -> None:
    """Mark a RUNNING trial FAIL in the study's storage (Optuna's ``tell`` needs the
    ``Trial`` object of the process that asked it)."""
    from optuna.trial import TrialState

    study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
