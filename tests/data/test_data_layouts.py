"""Tiny trees in each official layout, read through the real readers and `harness data check`."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from harness.config import DataConfig
from harness.data import create_datasets, read_dataset
from harness.errors import DataError

MEAN = STD = (0.5, 0.5, 0.5)


def _jpeg(path: Path, seed: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG")


def make_sop(root: Path, train_classes=(1, 2, 3, 4), test_classes=(11319, 11320, 11321), per_class=3) -> Path:
    n = 0
    for fname, classes in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for j in range(per_class):
                n += 1
                rel = f"bicycle_final/{c}_{j}.JPG"
                _jpeg(root / rel, n)
                lines.append(f"{n} {c} 1 {rel}")
        (root / fname).write_text("\n".join(lines) + "\n")
    return root


def make_cub(root: Path, per_class=3) -> Path:
    images, labels, n = [], [], 0
    for c in (1, 2, 3, 4, 101, 102, 103):
        for j in range(per_class):
            n += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            _jpeg(root / "images" / rel, n)
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def make_cars(root: Path, per_class=3) -> Path:
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    rows, n = [], 0
    for c in (1, 2, 3, 4, 99, 100, 101):
        for j in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            _jpeg(root / rel, n)
            # loadmat gives 1x1 arrays per field, as in the real cars_annos.mat.
            rows.append((rel, np.array([[1]], np.uint8), np.array([[1]], np.uint8), np.array([[9]], np.uint8),
                         np.array([[8]], np.uint8), np.array([[c]], np.uint8), np.array([[j % 2]], np.uint8)))
    annos = np.array(rows, dtype=dtype).reshape(1, -1)
    class_names = np.array([f"Car {c}" for c in range(1, 197)], dtype=object).reshape(1, -1)
    scipy.io.savemat(str(root / "cars_annos.mat"), {"annotations": annos, "class_names": class_names})
    return root


def make_inshop(root: Path) -> Path:
    rows = []
    spec = {"train": ["id_00000001", "id_00000002", "id_00000003", "id_00000007"], "test": ["id_00000004", "id_00000005", "id_00000006"]}
    n = 0
    for item in spec["train"]:
        for j in range(3):
            rows.append((f"img/WOMEN/Dresses/{item}/0{j}_1_front.jpg", item, "train"))
    for item in spec["test"]:
        rows.append((f"img/MEN/Denim/{item}/01_1_front.jpg", item, "query"))
        rows.append((f"img/MEN/Denim/{item}/01_2_side.jpg", item, "gallery"))
        rows.append((f"img/MEN/Denim/{item}/01_3_back.jpg", item, "gallery"))
    for rel, _, _ in rows:
        n += 1
        _jpeg(root / "Img" / rel, n)
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    text = [str(len(rows)), "image_name item_id evaluation_status"] + [f"{a} {b} {c}" for a, b, c in rows]
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(text) + "\n")
    return root


def _df2_item(category: int, style: int, box) -> dict:
    return {"segmentation": [[0, 0, 1, 1, 2, 2]], "scale": 1, "viewpoint": 2, "zoom_in": 1,
            "landmarks": [0, 0, 0], "style": style, "bounding_box": box, "category_id": category,
            "occlusion": 1, "category_name": "short sleeve top"}


def make_deepfashion2(root: Path) -> Path:
    """train: pairs 1-4; validation: pairs 10-12, user + shop; plus style-0 items to drop."""
    n = 0
    for split, pairs in (("train", (1, 2, 3, 4)), ("validation", (10, 11, 12))):
        for pair in pairs:
            for source in ("user", "shop", "shop"):
                n += 1
                _jpeg(root / split / "image" / f"{n:06d}.jpg", n, size=(20, 16))
                anno = {"source": source, "pair_id": pair,
                        "item1": _df2_item(1, 1, [2, 3, 12, 15]),
                        "item2": _df2_item(8, 0, [0, 0, 5, 5])}  # style 0: no shop match, dropped
                if pair == pairs[0]:
                    anno["item3"] = _df2_item(7, 2, [4, 4, 18, 10])
                (root / split / "annos").mkdir(parents=True, exist_ok=True)
                (root / split / "annos" / f"{n:06d}.json").write_text(json.dumps(anno))
    return root


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fashion_mnist(root: Path, gz: bool) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 40), ("t10k", 30)):
        _idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), gz)
        _idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return root


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
