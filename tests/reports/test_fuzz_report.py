"""Fuzzing `harness report` on mutated results tables (Hypothesis, derandomized;
tests/fixtures/fuzzing.py): trials.parquet, epochs.parquet and space.json with columns
dropped or renamed, a column's type changed, NaN/None values, rows emptied or duplicated,
a key's value replaced, or the bytes themselves mutated. Property: the report renders,
or one ResultsError line (exit 2 from the CLI), never another exception.

Each example renders the whole report (plots included) of a small experiment, a few
seconds on the 2-core test machine: the count is kept small (``make fuzz`` multiplies it).
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from harness.errors import ResultsError
from harness.reports import render_report

from fixtures.fuzzing import NASTY_TOKENS, file_contents, fuzz_settings, one_line_or_success, scalars
from fixtures.report_tables import write_experiment

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

EXAMPLES = 6  # per file in `make test`

ODD_VALUES = [np.nan, None, "", "x", -1, 0, 1e309, True, "nan", "[]", "{not json"]


@st.composite
def mutated_table(draw, original: pd.DataFrame) -> bytes:
    """``original`` with 1-3 edits of its columns or rows, as Parquet bytes; or its
    Parquet bytes mutated."""
    df = original.copy()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "rename", "retype", "odd_values", "all_null", "no_rows",
                                   "dup_rows", "shuffle"]))
        if not len(df.columns):
            break
        col = draw(st.sampled_from(list(df.columns)))
        if op == "drop":
            df = df.drop(columns=[col])
        elif op == "rename":
            df = df.rename(columns={col: draw(st.sampled_from([col.upper(), col + " ", "x", "trial_id",
                                                               "status", "phase"]))})
        elif op == "retype":
            kind = draw(st.sampled_from(["str", "float", "int", "bool"]))
            try:
                df[col] = {"str": lambda s: s.astype(str), "float": lambda s: pd.to_numeric(s, errors="coerce"),
                           "int": lambda s: pd.Series(np.arange(len(s)), index=s.index),
                           "bool": lambda s: s.notna()}[kind](df[col])
            except (TypeError, ValueError):
                continue
        elif op == "odd_values":
            value = draw(st.sampled_from(ODD_VALUES))
            rows = draw(st.lists(st.integers(0, max(0, len(df) - 1)), min_size=1, max_size=4))
            df[col] = df[col].astype(object)
            for r in rows:
                if r < len(df):
                    df.iloc[r, df.columns.get_loc(col)] = value
        elif op == "all_null":
            df[col] = None
        elif op == "no_rows":
            df = df.iloc[:0]
        elif op == "dup_rows":
            df = pd.concat([df, df.iloc[: draw(st.integers(1, 3))]])
        else:
            df = df.sample(frac=1.0, random_state=draw(st.integers(0, 9)))
    buf = io.BytesIO()
    try:
        df.loc[:, ~df.columns.duplicated()].to_parquet(buf, index=False)
    except Exception:  # noqa: BLE001 - a mix pyarrow cannot store: not an input a sweep writes
        assume(False)
    return buf.getvalue()


@st.composite
def mutated_space(draw, original: dict) -> bytes:
    doc = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        node, keys = doc, []
        while isinstance(node, dict) and node and draw(st.booleans()):  # a nested key now and then
            key = draw(st.sampled_from(sorted(node)))
            keys.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if not isinstance(node, dict) or not node:
            continue
        key = draw(st.sampled_from(sorted(node)))
        if draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(st.one_of(scalars, st.sampled_from(NASTY_TOKENS), st.lists(scalars, max_size=3)))
    return json.dumps(doc, allow_nan=True).encode()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A small valid experiment (2 methods, 2 seeds, 2 search trials each) that renders."""
    root = tmp_path_factory.mktemp("fuzz-report")
    exp = write_experiment(root, methods={"xbm": [0.70, 0.72], "xbn": [0.78, 0.80]}, seeds=[0, 1],
                           search_trials=2)
    render_report([exp], root / "out", formats=("md",))  # valid before fuzzing
    return exp


def strategy_for(name: str, path) -> st.SearchStrategy[bytes]:
    original = path.read_bytes()
    if name == "space.json":
        return st.one_of(mutated_space(json.loads(original)), file_contents(original))
    return st.one_of(mutated_table(pd.read_parquet(path)), mutated_table(pd.read_parquet(path)),
                     file_contents(original))


@pytest.mark.parametrize("name", ["trials.parquet", "epochs.parquet", "space.json"])
def test_report_on_mutated_tables_renders_or_says_one_line(experiment, tmp_path, name):
    path = experiment / name
    original = path.read_bytes()
    outcomes = []

    @fuzz_settings(EXAMPLES)
    @given(content=strategy_for(name, path))
    def run(content):
        path.write_bytes(content)
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        outcomes.append(one_line_or_success(render_report, [experiment], out, formats=("md",)))

    try:
        run()
    finally:
        path.write_bytes(original)
    assert outcomes  # the examples ran (both outcomes are allowed)


@pytest.mark.parametrize("epoch", [[None, None], ["1", "x"], [1.5, 2.0]])
def test_epochs_whose_epoch_column_is_not_whole_numbers_is_one_line(experiment, tmp_path, epoch):
    # Found by the fuzz above: an all-null `epoch` column rendered up to the epoch curves,
    # then "TypeError: ufunc 'isfinite' not supported" from matplotlib.
    path = experiment / "epochs.parquet"
    original = path.read_bytes()
    try:
        epochs = pd.read_parquet(path).iloc[:2].copy()
        epochs["epoch"] = pd.Series(epoch, dtype=object, index=epochs.index)
        epochs.to_parquet(path, index=False)
        with pytest.raises(ResultsError, match=r"epochs\.parquet: column epoch holds \d value\(s\) that are not "
                                               r"whole numbers \(row \d: .*\); "):
            render_report([experiment], tmp_path / "out", formats=("md",))
    finally:
        path.write_bytes(original)
