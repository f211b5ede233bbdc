"""harness/sweep/recover.py without Ray: which tables are damaged and how they are set
aside (the rebuild from Tune's state: tests/end_to_end/test_faults.py)."""

from __future__ import annotations

import pandas as pd

from harness.sweep.recover import damaged_tables, set_aside
from harness.sweep.results import ResultsStore


def test_a_damaged_table_is_named_and_set_aside_and_the_others_are_kept(tmp_path):
    store = ResultsStore(str(tmp_path), "exp")
    store.upsert_trials([{"trial_id": "a", "phase": "search", "value": 1.0}])
    assert damaged_tables(store) == {}  # epochs.parquet absent: nothing to repair
    (tmp_path / "exp" / "epochs.parquet").write_bytes(b"PAR1 not really")

    damaged = damaged_tables(store)
    assert list(damaged) == ["epochs.parquet"]
    assert "epochs.parquet is not a readable Parquet file" in damaged["epochs.parquet"]
    assert "--resume" in damaged["epochs.parquet"] and "\n" not in damaged["epochs.parquet"]

    new = set_aside(store, "epochs.parquet")
    assert new.startswith("epochs.parquet.damaged-")
    assert (tmp_path / "exp" / new).read_bytes() == b"PAR1 not really"  # kept for inspection
    assert not (tmp_path / "exp" / "epochs.parquet").exists() and damaged_tables(store) == {}
    assert list(pd.read_parquet(tmp_path / "exp" / "trials.parquet").trial_id) == ["a"]
