"""ResultsStore: Parquet tables readable by pandas, pyarrow and DuckDB; upsert once per trial."""

from __future__ import annotations

import os
import threading

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.errors import ResultsError
from harness.sweep.results import EPOCHS, TRIALS, ResultsStore


def row(trial_id, status="completed", r1=0.5, pretrained=False, **extra):
    return {"schema_version": 1, "experiment": "exp", "trial_id": trial_id, "phase": "search",
            "status": status, "val.recall@1": r1, "config.model.pretrained": pretrained,
            "config.eval.ks": "[1, 10]", "config.data.root": None, **extra}  # fmt: skip


def test_upsert_keeps_each_trial_once_and_all_readers_agree(tmp_path):
    store = ResultsStore(str(tmp_path), "exp")
    store.upsert_trials([row("a", r1=0.1), row("b")])
    # a trial written again (resume, reconciliation) replaces its row; mixed bool/str config
    store.upsert_trials([row("a", r1=0.9, pretrained="package"), row("c", status="failed", r1=None)])
    path = tmp_path / "exp" / TRIALS
    by_pandas = pd.read_parquet(path).set_index("trial_id")
    by_arrow = pq.read_table(path).to_pandas().set_index("trial_id")
    by_duck = duckdb.sql(f"SELECT trial_id, \"val.recall@1\" AS r1 FROM '{path}' ORDER BY trial_id").fetchall()
    assert sorted(by_pandas.index) == ["a", "b", "c"]
    assert by_pandas.loc["a", "val.recall@1"] == 0.9 and by_arrow.loc["a", "val.recall@1"] == 0.9
    # one type per column: a bool beside a string becomes its JSON text
    assert list(by_pandas["config.model.pretrained"]) == ["false", "package", "false"]
    assert by_duck[0] == ("a", 0.9) and by_duck[2][1] is None
    assert store.trials()["trial_id"].is_unique


def test_epochs_upsert_by_trial_and_epoch(tmp_path):
    store = ResultsStore(str(tmp_path), "exp")
    store.upsert_epochs([{"trial_id": "a", "epoch": e, "loss": 1.0 / e} for e in (1, 2)])
    store.upsert_epochs([{"trial_id": "a", "epoch": 2, "loss": 0.25}, {"trial_id": "b", "epoch": 1, "loss": 2.0}])
    df = pd.read_parquet(tmp_path / "exp" / EPOCHS)
    assert len(df) == 3 and df.set_index(["trial_id", "epoch"]).loc[("a", 2), "loss"] == 0.25


def test_writes_are_atomic_for_concurrent_readers(tmp_path):
    store = ResultsStore(str(tmp_path), "exp")
    store.upsert_trials([row("t0")])
    path = tmp_path / "exp" / TRIALS
    errors, stop = [], threading.Event()

    # Readers that open the file once: pandas on a handle, pyarrow's ParquetFile, DuckDB.
    # (pd.read_parquet(path) stats the path, then opens it: in the instant of a replace
    # it may see the new size with the old file; docs/architecture.md says so.)
    readers = [
        lambda: len(pd.read_parquet(open(path, "rb"))),
        lambda: pq.ParquetFile(path).read().num_rows,
        lambda: duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall()[0][0],
    ]

    def reader(read):
        while not stop.is_set():
            try:
                assert read() >= 1
            except Exception as e:  # a torn file would show up here
                errors.append(e)

    threads = [threading.Thread(target=reader, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for i in range(1, 40):
        store.upsert_trials([row(f"t{i}", payload="x" * 2000)])
    stop.set()
    for t in threads:
        t.join()
    assert not errors and len(store.trials()) == 40
    assert not [p for p in os.listdir(tmp_path / "exp") if p.endswith(".tmp")]  # no temp left


def test_damaged_table_is_a_results_error(tmp_path):
    store = ResultsStore(str(tmp_path), "exp")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / TRIALS).write_bytes(b"not parquet")
    with pytest.raises(ResultsError, match="not a readable Parquet file"):
        store.trials()


def test_json_documents_round_trip(tmp_path):
    store = ResultsStore(str(tmp_path), "exp")
    store.write_json("space.json", {"experiment": "exp", "params": {}})
    assert store.read_json("space.json")["experiment"] == "exp"
    with pytest.raises(ResultsError, match="does not exist"):
        store.read_json("missing.json")
