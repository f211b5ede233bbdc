"""The results contract: every name and constant that sweeps, trainables and reports share.

The tables ``trials.parquet`` / ``epochs.parquet`` (docs/architecture.md, "Results
tables") are read by code that never sees the code that wrote them (another harness
version, pandas, DuckDB), so each fact about them is defined here once and imported
everywhere else: the schema version, the file names, the phase and status values, the
column names, the key the trainable reports its objective under, and the spelling of
the compared methods (memory kind, plus ``+xml``), and the files of a run folder that
the trials' checkpoints carry. Like OML's ``const.py``, this module imports nothing from
the harness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

# ---- tables ---------------------------------------------------------------------------

SCHEMA_VERSION = 1
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
SPACE_FILE = "space.json"  # the experiment's search space, compare axis, objective
STATE_FILE = "sweep.json"  # the driver's own state (phase, best configs)
# ---- a run folder (`harness train --out DIR`, a sweep trial's run folder) ---------------

CONFIG_FILE = "config.yaml"  # the run config it ran with
EPOCH_LOG = "epochs.jsonl"  # one JSON line per epoch
SUMMARY_FILE = "summary.json"  # harness.core.run_result.RunResult.summary()
# a sweep trial's run folder, in addition (trainables/trial_runner.py)
FINAL_REPORT_FILE = "final.json"  # its final TrialReport (harness/results/trial_report.py), once it ended
TRIAL_META_FILE = "trial.json"  # when it first started, how often it restarted
CHECKPOINT_DIR = "checkpoints"


def last_checkpoint(run_dir: str | Path) -> Path:
    """The full training state, written every epoch (what a resume continues from)."""
    return Path(run_dir) / CHECKPOINT_DIR / "last.pt"


def best_checkpoint(run_dir: str | Path) -> Path:
    """The model of the best epoch by the validation metric."""
    return Path(run_dir) / CHECKPOINT_DIR / "best.pt"


# <experiment>/retrievals/<trial_id>/: what the report draws a best-config reproduction's
# retrieval pictures from (its test neighbours and run config), copied out of the
# trial's Tune checkpoint when the trial ends, so a report needs no ``tune/`` folder.
RETRIEVALS_DIR = "retrievals"
RETRIEVALS_FILE = "retrievals.npz"  # harness.serving.retrieval_pictures.Neighbours
RETRIEVAL_FILES = (CONFIG_FILE, RETRIEVALS_FILE)  # written in this order: the .npz last

# Columns every table has; rows are upserted by these keys.
COL_SCHEMA_VERSION = "schema_version"
COL_EXPERIMENT = "experiment"
COL_TRIAL_ID = "trial_id"
COL_PHASE = "phase"
COL_METHOD = "method"
COL_STATUS = "status"
COL_EPOCH = "epoch"
COL_COMPARE_KEY = "compare_key"
COL_COMPARE_VALUE = "compare_value"
COL_SEED = "seed"
COL_ERROR = "error"
TRIAL_KEY = (COL_TRIAL_ID,)
EPOCH_KEY = (COL_TRIAL_ID, COL_EPOCH)
TRIAL_COLUMNS = (COL_SCHEMA_VERSION, COL_EXPERIMENT, COL_TRIAL_ID, COL_PHASE, COL_METHOD, COL_STATUS)
EPOCH_COLUMNS = (COL_SCHEMA_VERSION, COL_EXPERIMENT, COL_TRIAL_ID, COL_PHASE, COL_METHOD, COL_EPOCH)

# ---- phases and statuses --------------------------------------------------------------

Phase = Literal["search", "reproduction", "train"]
PHASE_SEARCH: Phase = "search"
PHASE_REPRODUCTION: Phase = "reproduction"
PHASE_TRAIN: Phase = "train"  # a `harness train` run (trackers only, never in the tables)

TrialStatus = Literal["completed", "diverged", "failed", "stopped"]
STATUS_COMPLETED: TrialStatus = "completed"
STATUS_DIVERGED: TrialStatus = "diverged"  # training hit a non-finite loss or weight
STATUS_FAILED: TrialStatus = "failed"  # the trial raised
STATUS_STOPPED: TrialStatus = "stopped"  # stopped early (ASHA) or interrupted

# ---- what a trial reports -------------------------------------------------------------

OBJECTIVE_KEY = "objective"  # the search metric, under one fixed name for Tune and Optuna
# Keys Ray Tune adds to every result (and a function trainable's reports carry), none of
# them a metric of the run.
TUNE_RESULT_KEYS = frozenset({
    "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
    "time_since_restore", "iterations_since_restore", "done", "node_ip", "hostname", "date",
    "trial_id", "experiment_tag", "checkpoint_dir_name", "should_checkpoint", "config",
    "timesteps_total", "episodes_total", "timesteps_since_restore",
})
DEFAULT_METRIC = "val.recall@1"  # the search metric of an experiment that names none
# The test metrics of the report's summary tables, in the AXBN paper's order (Tables 1
# and 2), with their display names; the ones a published reference may quote.
TEST_METRICS: dict[str, str] = {
    "test.recall@1": "Recall@1",
    "test.recall@10": "Recall@10",
    "test.map@r": "MAP@R",
    "test.r_precision": "R-Precision",
}
# A trial of several runs (search.objective folds x seeds) reports, each epoch, the mean
# over its runs of each run's best-so-far search metric under this key.
OBJECTIVE_SO_FAR_KEY = "objective_so_far"
# trials.parquet columns of such a trial: the mean and sample std of its runs' objective
# values and the values themselves (JSON: [{"fold": i, "seed": s, "value": v}, ...]).
COL_OBJECTIVE_MEAN = "objective.mean"
COL_OBJECTIVE_STD = "objective.std"
COL_OBJECTIVE_RUNS = "objective.runs"

# ---- methods --------------------------------------------------------------------------

MemoryKind = Literal["none", "xbm", "xbm+batch", "xbn", "axbn"]
# Also the row order of the AXBN paper's tables: no memory, XBM, XBM*, XBN, AXBN.
MEMORY_KINDS: tuple[str, ...] = get_args(MemoryKind)
ADAPTIVE_MEMORY_KINDS = ("xbn", "axbn")  # the memories that adapt stored embeddings
XML_SUFFIX = "+xml"  # a method is its memory kind, plus this when the XML loss is on


def method_name(memory_kind: str, xml_enabled: bool) -> str:
    """The results tables' ``method`` value: ``"axbn"``, ``"none+xml"``, ..."""
    return memory_kind + (XML_SUFFIX if xml_enabled else "")


def split_method(method: str) -> tuple[str, bool]:
    """Inverse of :func:`method_name`: ``"none+xml"`` -> ``("none", True)``."""
    return method.removesuffix(XML_SUFFIX), method.endswith(XML_SUFFIX)


# The run-config keys a method is made of, and the compare axes the ``method`` column
# already spells out (a report needs no extra "setting" for them).
METHOD_CONFIG_KEYS = ("memory.kind", "xml.enabled")
METHOD_COMPARE_KEYS = frozenset({COL_METHOD, *METHOD_CONFIG_KEYS})


def method_overrides(method: str) -> dict[str, object]:
    """The dotted config overrides that select ``method``: ``"none+xml"`` ->
    ``{"memory.kind": "none", "xml.enabled": True}``."""
    return dict(zip(METHOD_CONFIG_KEYS, split_method(method)))
