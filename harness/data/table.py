"""``table``: your own images listed in a CSV or Parquet file (``data.root`` names the file).

One row per image: ``path`` (relative to the table's folder, or absolute), ``label``,
and optionally ``split`` (train / test / val) and ``role`` (query / gallery). Other
columns are ignored. Bad rows are one-line errors with their line number (CSV: the
file's line, header = line 1; Parquet: the row number from 1).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.annotations import read_text
from harness.data.labeled_files import ROLES, SPLITS, LabeledFiles, build_parts
from harness.data.datasets import DatasetParts, register_dataset
from harness.errors import DataError

LAYOUT = (
    "a .csv or .parquet file with columns path (relative to the file), label "
    "[, split: train|test|val] [, role: query|gallery]"
)
REQUIRED = ("path", "label")
OPTIONAL = ("split", "role")


def read_table_file(path: Path) -> tuple[pd.DataFrame, int]:
    """-> (all columns as stripped strings, line number of the first row)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            read_text(path, "table", LAYOUT)  # UTF-8 (a BOM is fine), not empty: else one line naming the line
            # Blank lines kept (then dropped below) so row i is line i + 2.
            with warnings.catch_warnings():
                # index_col=False: a row with an extra field is an error, not an index column
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False,
                                 sep="\t" if suffix == ".tsv" else ",", index_col=False)
            first_line = 2
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            df = df.astype(object).where(df.notna(), "").astype(str)
            first_line = 1
        else:
            raise DataError(f"table: {path}: not a .csv or .parquet file; expected: {LAYOUT}")
    except DataError:
        raise
    except pd.errors.ParserWarning:
        raise DataError(f"table: {path}: a row has more fields than the header line; expected: {LAYOUT}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"table: {path}: unreadable ({first}); expected: {LAYOUT}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(
            f"table: {path}: no '{missing[0]}' column (found: {', '.join(df.columns) or 'none'}); "
            f"expected: {LAYOUT}"
        )
    for c in OPTIONAL:
        if c not in df.columns:
            df[c] = ""
    df = df[list(REQUIRED + OPTIONAL)].apply(lambda col: col.str.strip())
    return df, first_line


@register_dataset("table", layout=LAYOUT, root_is_file=True, user_data=True)
def read_table(root: Path) -> DatasetParts:
    df, first_line = read_table_file(root)
    blank = (df == "").all(axis=1)  # blank CSV lines
    split, role = df["split"].str.lower(), df["role"].str.lower()
    checks = (
        (df["path"] == "", lambda r: "empty path"),
        (df["label"] == "", lambda r: "empty label"),
        (~split.isin(SPLITS + ("",)), lambda r: f"split '{r['split']}' is not one of {', '.join(SPLITS)} (or empty)"),
        (~role.isin(ROLES + ("",)), lambda r: f"role '{r['role']}' is not one of {', '.join(ROLES)} (or empty)"),
    )
    bad = [(int(np.flatnonzero(mask & ~blank)[0]), message) for mask, message in checks if (mask & ~blank).any()]
    if bad:
        i, message = min(bad, key=lambda b: b[0])
        at = f"{root}:{i + first_line}" if first_line == 2 else f"{root}: row {i + first_line}"
        n_bad = int(np.logical_or.reduce([m & ~blank for m, _ in checks]).sum())
        more = f" ({n_bad} bad rows in all)" if n_bad > 1 else ""
        raise DataError(f"table: {at}: {message(df.iloc[i])}{more}")
    base = root.parent
    resolved = [os.path.normpath(p if os.path.isabs(p) else base / p) if not b else ""
                for p, b in zip(df["path"], blank)]
    first: dict[str, int] = {}
    for i, p in enumerate(resolved):
        if p and p in first:
            at = (f"{root}:{i + first_line}" if first_line == 2 else f"{root}: row {i + first_line}")
            was = f"line {first[p] + first_line}" if first_line == 2 else f"row {first[p] + first_line}"
            raise DataError(f"table: {at}: image '{df['path'].iloc[i]}' is listed twice (first on {was}); "
                            "expected each image once (one label, one split)")
        first.setdefault(p, i)
    df = df[~blank]
    files = LabeledFiles(
        paths=[Path(p) if Path(p).is_absolute() else base / p for p in df["path"]],
        labels=df["label"].tolist(),
        splits=df["split"].str.lower().tolist(),
        roles=df["role"].str.lower().tolist(),
        source=str(root),
    )
    return build_parts("table", files)
