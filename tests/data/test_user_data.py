"""`data.name: table` (CSV / Parquet) and `data.name: folder`: readers, errors, `harness data check`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fixtures.user_data import make_folder, make_table, table_rows, write_png
from harness.config import DataConfig
from harness.data import create_datasets, read_dataset
from harness.data.labeled_files import class_disjoint_test_classes
from harness.errors import DataError

MEAN = STD = (0.5, 0.5, 0.5)


def _names(ds) -> set[str]:
    return {str(ds.class_names[c]) for c in np.unique(ds.labels)}


def test_folder_without_splits_is_a_seeded_class_disjoint_split(tmp_path):
    make_folder(tmp_path, classes=8, per_class=3)
    parts = read_dataset("folder", tmp_path)
    train, test = _names(parts.train), _names(parts.test.query)
    assert len(train) == len(test) == 4 and not train & test
    assert test == class_disjoint_test_classes([f"class{c:02d}" for c in range(8)])
    assert parts.test.gallery is None and parts.val is None
    assert len(parts.train) == 12 and all(p.endswith(".png") for p in parts.train.paths)
    # the same split every time (it does not depend on the run seed)
    assert _names(read_dataset("folder", tmp_path).test.query) == test


def test_folder_train_test_and_query_gallery(tmp_path):
    make_folder(tmp_path, classes=6, per_class=3, splits=True)
    parts = read_dataset("folder", tmp_path)
    assert _names(parts.train) == {"class00", "class01", "class02"}
    assert _names(parts.test.query) == {"class03", "class04", "class05"}
    # test/query + test/gallery: a query/gallery protocol
    for c in (3, 4, 5):
        for i, role in enumerate(("query", "gallery", "gallery")):
            write_png(tmp_path / "qg" / "test" / role / f"c{c}" / f"{i}.png", c, seed=i)
    for c in (0, 1):
        write_png(tmp_path / "qg" / "train" / f"c{c}" / "0.png", c, seed=c)
        write_png(tmp_path / "qg" / "train" / f"c{c}" / "1.png", c, seed=c + 1)
    qg = read_dataset("folder", tmp_path / "qg")
    assert len(qg.test.query) == 3 and len(qg.test.gallery) == 6


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        read_dataset("folder", tmp_path / "empty")
    make_folder(tmp_path / "half", classes=4, splits=True)
    import shutil
    shutil.rmtree(tmp_path / "half" / "test")
    with pytest.raises(DataError, match="has train/ but no test/"):
        read_dataset("folder", tmp_path / "half")
    make_folder(tmp_path / "shared", classes=4, splits=True)
    write_png(tmp_path / "shared" / "test" / "class00" / "x.png", 0, seed=1)
    with pytest.raises(DataError, match=r"1 label\(s\) appear in both train and test \(e.g. 'class00'\)"):
        read_dataset("folder", tmp_path / "shared")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_predefined_splits_and_roles(tmp_path, fmt):
    path = make_table(tmp_path, fmt, classes=8, per_class=4, protocol="query-gallery")
    parts = read_dataset("table", path)
    assert _names(parts.train) == {f"item-{c}" for c in range(4)}
    assert _names(parts.val.query) == {"item-4", "item-5"} and parts.val.gallery is None
    assert len(parts.test.query) == 4 and len(parts.test.gallery) == 4
    assert all(str(tmp_path / "images") in p for p in parts.train.paths)
    # the predefined validation classes are used as they are (no carving)
    bundle = create_datasets(DataConfig(name="table", root=str(path), image_size=16), 3, MEAN, STD)
    assert _names(bundle.val.query) == {"item-4", "item-5"} and len(bundle.train) == 16
    image, label = bundle.train[0]
    assert tuple(image.shape) == (3, 16, 16)


def test_table_without_split_column_matches_folder_rule(tmp_path):
    path = make_table(tmp_path, "csv", classes=8, per_class=2)
    parts = read_dataset("table", path)
    assert _names(parts.test.query) == class_disjoint_test_classes([f"item-{c}" for c in range(8)])
    bundle = create_datasets(DataConfig(name="table", root=str(path), val_fraction=0.5), 0, MEAN, STD)
    assert len(np.unique(bundle.val.query.labels)) == 2  # carved from the training classes


def _csv(tmp_path, text: str):
    p = tmp_path / "t.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("path,label\na.png,1\n,2\n", r"t.csv:3: empty path"),
    ("path,label\na.png,1\n\nb.png,\n", r"t.csv:4: empty label"),
    ("path,label,split\na.png,1,train\nb.png,2,tset\n", r"t.csv:3: split 'tset' is not one of train, test, val"),
    ("path,label,split,role\na.png,1,test,q\n", r"t.csv:2: role 'q' is not one of query, gallery"),
    ("file,label\na.png,1\n", r"no 'path' column \(found: file, label\)"),
    ("path,label\na.png,1,extra\n", r"a row has more fields than the header"),
    ("path,label\na.png,1\nb.png,2,extra\n", r"Expected 2 fields in line 3, saw 3"),
    ("path,label,split\na.png,1,train\nb.png,1,test\nc.png,2,train\nd.png,3,test\n",
     r"label\(s\) appear in both train and test \(e.g. '1'\)"),
    ("path,label,split\na.png,1,train\nb.png,2,\n", r"have no split while others do"),
    ("path,label,split,role\na.png,1,train,query\n", r"train images have a role"),
])
def test_table_bad_rows_are_one_line_errors_with_line_numbers(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as err:
        read_dataset("table", _csv(tmp_path, text))
    assert "\n" not in str(err.value)


def test_parquet_bad_row_names_its_row(tmp_path):
    df = table_rows(tmp_path, classes=4, per_class=2, protocol="split")
    df.loc[5, "split"] = "holdout"
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: row 6: split 'holdout'"):
        read_dataset("table", tmp_path / "t.parquet")


def test_table_root_must_be_a_file(tmp_path):
    with pytest.raises(DataError, match="is not a file"):
        read_dataset("table", tmp_path)


def test_data_check_table_counts_and_flags_single_image_classes(tmp_path, harness_cli):
    path = make_table(tmp_path, "parquet", classes=8, per_class=4, protocol="query-gallery")
    code, out, err = harness_cli(["data", "check", "table", "--root", str(path)])
    assert code == 0, out + err
    assert "layout ok" in out and "val" in out and "gallery" in out
    df = pd.read_parquet(path)
    df = df.drop(df.index[(df.label == "item-1") & (df.path != "images/1/0.png")])  # item-1: one image
    df = df.drop(df.index[(df.label == "item-7") & (df.role == "query")])
    df.loc[len(df)] = {"path": "images/missing.png", "label": "item-2", "split": "train", "role": ""}
    df.to_parquet(path)
    code, out, err = harness_cli(["data", "check", "table", "--root", str(path)])
    assert code == 1
    assert "1 missing" in out and "missing.png" in out
    assert "1 class(es) with a single image" in out and "train: item-1" in out
    assert "query label(s) without a gallery image" not in out  # item-7 lost its query only
    df = df.drop(df.index[(df.label == "item-6") & (df.role == "gallery")])
    df.to_parquet(path)
    code, out, err = harness_cli(["data", "check", "table", "--root", str(path)])
    assert "1 query label(s) without a gallery image" in out and "test: item-6" in out


def test_data_check_folder_bad_layout_exit_2_one_line(tmp_path, harness_cli):
    make_folder(tmp_path, classes=4, splits=True)
    write_png(tmp_path / "test" / "class01" / "x.png", 1, seed=3)
    code, out, err = harness_cli(["data", "check", "folder", "--root", str(tmp_path)])
    assert code == 2
    assert "appear in both train and test" in err and len(err.strip().splitlines()) == 1
