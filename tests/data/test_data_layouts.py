"""Tiny trees in each official layout, read through the real readers and `harness data check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.config import DataConfig
from harness.data import create_datasets, read_dataset
from harness.errors import DataError

from fixtures.layouts import make_cars, make_cub, make_deepfashion2, make_fashion_mnist, make_inshop, make_sop

MEAN = STD = (0.5, 0.5, 0.5)


def _classes(ds) -> set[int]:
    return set(np.unique(ds.labels).tolist())


# ------------------------------------------------------------------ readers


def test_sop_reader(tmp_path):
    parts = read_dataset("sop", make_sop(tmp_path))
    assert _classes(parts.train) == {1, 2, 3, 4}
    assert _classes(parts.test.query) == {11319, 11320, 11321}
    assert parts.test.gallery is None and len(parts.train) == 12
    image = parts.train.load_image(0)
    assert image.mode == "RGB" and image.size == (12, 10)


def test_cub_reader_standard_split(tmp_path):
    parts = read_dataset("cub", make_cub(tmp_path))
    assert _classes(parts.train) == {1, 2, 3, 4}
    assert _classes(parts.test.query) == {101, 102, 103}
    assert Path(parts.test.query.paths[0]).is_file()


def test_cars196_reader_reads_savemat_file(tmp_path):
    parts = read_dataset("cars196", make_cars(tmp_path))
    assert _classes(parts.train) == {1, 2, 3, 4}
    assert _classes(parts.test.query) == {99, 100, 101}
    assert len(parts.train) == 12 and len(parts.test.query) == 9
    assert parts.train.paths[0].endswith("car_ims/000001.jpg")
    assert parts.train.load_image(0).size == (12, 10)  # whole image, boxes ignored


def test_inshop_reader_query_gallery(tmp_path):
    parts = read_dataset("inshop", make_inshop(tmp_path))
    q, g = parts.test.query, parts.test.gallery
    assert len(parts.train) == 12 and len(q) == 3 and len(g) == 6
    assert _classes(q) == _classes(g)
    assert not _classes(parts.train) & _classes(q)
    assert Path(q.paths[0]).is_file()  # resolved under root/Img/


def test_deepfashion2_reader_crops_boxes_and_pairs_sources(tmp_path):
    parts = read_dataset("deepfashion2", make_deepfashion2(tmp_path))
    q, g = parts.test.query, parts.test.gallery
    # Per pair: 1 user + 2 shop images with item1, the first pair adds item3 (style 2);
    # style-0 items are dropped.
    assert len(q) == 3 + 1 and len(g) == 6 + 2
    assert len(parts.train) == 12 + 3
    assert _classes(q) == _classes(g) and len(_classes(q)) == 4
    assert not _classes(parts.train) & _classes(q)
    # A triple is one label: item1 and item3 of the same pair differ (category, style).
    assert len(_classes(parts.train)) == 5
    assert q.load_image(0).size in {(10, 12), (14, 6)}


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_generated_idx(tmp_path, gz):
    parts = read_dataset("fashion-mnist", make_fashion_mnist(tmp_path / "fm", gz))
    assert _classes(parts.train) == {0, 1, 2, 3, 4} and len(parts.train) == 20
    assert _classes(parts.test.query) == {5, 6, 7, 8, 9} and len(parts.test.query) == 15
    assert parts.train.images.shape[1:] == (28, 28)


def test_fashion_mnist_truncated_file_is_data_error(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm", gz=False)
    p = root / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_dataset("fashion-mnist", root)


REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_real_files():
    # Not skipped when missing: `make test` installs the package (tools/system-deps.sh).
    assert REAL_FMNIST.is_dir(), (
        f"{REAL_FMNIST} missing: apt-get install dataset-fashion-mnist (make test installs it as root)")
    parts = read_dataset("fashion-mnist", None)  # found at the Debian default root
    assert len(parts.train) == 30000 and len(parts.test.query) == 5000
    assert _classes(parts.train) == {0, 1, 2, 3, 4}
    assert parts.train.images.shape[1:] == (28, 28) and parts.train.images.max() > 200


@pytest.mark.parametrize(
    "name, maker",
    [("sop", make_sop), ("cub", make_cub), ("cars196", make_cars), ("inshop", make_inshop),
     ("deepfashion2", make_deepfashion2)],
)
def test_create_datasets_on_each_layout(tmp_path, name, maker):
    maker(tmp_path)
    cfg = DataConfig(name=name, root=str(tmp_path), image_size=16, val_fraction=0.5)
    bundle = create_datasets(cfg, seed=0, mean=MEAN, std=STD)
    image, label = bundle.train[0]
    assert tuple(image.shape) == (3, 16, 16)
    assert not _classes(bundle.train) & _classes(bundle.val.query)
    assert bundle.val.gallery is None
    test_image, _ = bundle.test.query[0]
    assert tuple(test_image.shape) == (3, 16, 16)


@pytest.mark.parametrize("name", ["sop", "cub", "cars196", "inshop", "deepfashion2"])
def test_wrong_root_names_expected_layout(tmp_path, name):
    with pytest.raises(DataError, match="expected layout") as e:
        read_dataset(name, tmp_path)
    assert "\n" not in str(e.value)


def test_missing_root_is_data_error(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        read_dataset("sop", tmp_path / "nope")
    with pytest.raises(DataError, match="needs data.root"):
        read_dataset("cub", None)


def test_bad_sop_header_is_data_error(tmp_path):
    make_sop(tmp_path)
    p = tmp_path / "Ebay_train.txt"
    p.write_text(p.read_text().replace("image_id class_id", "id class", 1))
    with pytest.raises(DataError, match="first line should be"):
        read_dataset("sop", tmp_path)


# ------------------------------------------------------------------ harness data check


@pytest.mark.parametrize(
    "name, maker, rows",
    [
        ("sop", make_sop, [("train", "all", 4, 12), ("test", "all", 3, 9)]),
        ("cub", make_cub, [("train", "all", 4, 12), ("test", "all", 3, 9)]),
        ("cars196", make_cars, [("train", "all", 4, 12), ("test", "all", 3, 9)]),
        ("inshop", make_inshop, [("train", "all", 4, 12), ("test", "query", 3, 3), ("test", "gallery", 3, 6)]),
        ("deepfashion2", make_deepfashion2, [("train", "all", 5, 15), ("test", "query", 4, 4), ("test", "gallery", 4, 8)]),
    ],
)
def test_data_check_counts(tmp_path, cli_runner, name, maker, rows):
    maker(tmp_path)
    result = cli_runner.invoke(["data", "check", name, "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for split, role, n_classes, n_images in rows:
        assert any(
            line.split("│")[1:5] and [c.strip() for c in line.split("│")[1:5]] == [split, role, str(n_classes), str(n_images)]
            for line in lines
        ), (split, role, result.output)
    assert "layout ok" in result.output


def test_data_check_lists_missing_and_unreadable(tmp_path, cli_runner):
    make_sop(tmp_path)
    (tmp_path / "bicycle_final/1_0.JPG").unlink()
    (tmp_path / "bicycle_final/2_1.JPG").write_bytes(b"not a jpeg")
    result = cli_runner.invoke(["data", "check", "sop", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "1 missing" in result.output and "1_0.JPG" in result.output
    assert "1 unreadable" in result.output and "2_1.JPG" in result.output


def test_data_check_bad_layout_is_one_line_data_error(tmp_path, cli_runner):
    result = cli_runner.invoke(["data", "check", "cub", "--root", str(tmp_path)])
    assert isinstance(result.exception, DataError)
    assert "expected layout" in str(result.exception) and "\n" not in str(result.exception)
