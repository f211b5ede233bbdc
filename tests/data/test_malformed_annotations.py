"""Malformed annotation files of every dataset reader: one DataError line naming the file and
the line (or field) and what was expected; a byte-order mark and CRLF line ends read as if
absent. Each case damages a valid tiny tree (tests/fixtures/layouts.py) in one way."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from harness.data import read_dataset
from harness.errors import DataError

from fixtures.layouts import (make_cars, make_cub, make_deepfashion2, make_fashion_mnist, make_glyphs, make_inshop,
                              make_sop, make_table_csv)

FM = "fm"  # the fashion-mnist files' folder under tmp_path


def set_line(path: Path, n: int, text: str) -> None:
    lines = path.read_text().split("\n")
    lines[n - 1] = text
    path.write_text("\n".join(lines))


def line(path: Path, n: int) -> str:
    return path.read_text().split("\n")[n - 1]


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def set_cars(root: Path, index: int, field: str, value) -> None:
    mat = scipy.io.loadmat(str(root / "cars_annos.mat"))
    annos = mat["annotations"]
    annos[field][0, index] = np.array([[value]]) if not isinstance(value, np.ndarray) else value
    scipy.io.savemat(str(root / "cars_annos.mat"), {"annotations": annos})


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def patch(path: Path, offset: int, data: bytes) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:offset] + data + raw[offset + len(data):])


SOP_TRAIN, SOP_TEST = "Ebay_train.txt", "Ebay_test.txt"


def npy_header(root: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in images.npy's header (same length: the header stays aligned)."""
    path = root / "images.npy"
    raw = path.read_bytes()
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end].decode("latin-1")
    assert old in header, header
    patched = header[:-1].rstrip(" ").replace(old, new, 1).ljust(len(header) - 1) + "\n"
    assert len(patched) == len(header), patched
    path.write_bytes(patched.encode("latin-1") + raw[header_end:])


INSHOP = "Eval/list_eval_partition.txt"
DF2 = "train/annos/000001.json"

# (id, dataset, maker, damage(root), message regex)
CASES = [
    # ---- sop
    ("sop-non-numeric-class", "sop", make_sop, lambda r: set_line(r / SOP_TRAIN, 2, "1 x1 1 bicycle_final/1_0.JPG"),
     r"Ebay_train.txt:2: class_id 'x1' is not an integer"),
    ("sop-non-numeric-image-id", "sop", make_sop, lambda r: set_line(r / SOP_TEST, 3, "a7 11319 1 bicycle_final/11319_1.JPG"),
     r"Ebay_test.txt:3: image_id 'a7' is not an integer"),
    ("sop-class-beyond-int64", "sop", make_sop, lambda r: set_line(r / SOP_TRAIN, 2, "1 99999999999999999999 1 bicycle_final/1_0.JPG"),
     r"Ebay_train.txt:2: class_id '99999999999999999999' is not an integer"),
    ("sop-column-count", "sop", make_sop, lambda r: set_line(r / SOP_TRAIN, 3, "2 1 1"),
     r"Ebay_train.txt:3: expected 4 fields \(image_id class_id super_class_id path\), got 3"),
    ("sop-empty-file", "sop", make_sop, lambda r: (r / SOP_TEST).write_text(""), r"Ebay_test.txt is empty"),
    ("sop-header-only", "sop", make_sop, lambda r: (r / SOP_TEST).write_text("image_id class_id super_class_id path\n"),
     r"Ebay_test.txt lists no images after its header"),
    ("sop-duplicate-image-id", "sop", make_sop, lambda r: set_line(r / SOP_TRAIN, 3, "1 1 1 bicycle_final/1_1.JPG"),
     r"Ebay_train.txt:3: image_id '1' is listed twice \(first on line 2\)"),
    ("sop-duplicate-path", "sop", make_sop, lambda r: set_line(r / SOP_TRAIN, 3, "2 1 1 bicycle_final/1_0.JPG"),
     r"Ebay_train.txt:3: path 'bicycle_final/1_0.JPG' is listed twice \(first on line 2\)"),
    ("sop-class-in-both-splits", "sop", make_sop, lambda r: set_line(r / SOP_TEST, 4, "15 1 1 bicycle_final/11319_2.JPG"),
     r"class_id 1 is in both .*Ebay_train.txt \(line 2\) and .*Ebay_test.txt \(line 4\)"),
    ("sop-path-outside-root", "sop", make_sop, lambda r: set_line(r / SOP_TRAIN, 2, "1 1 1 ../outside.JPG"),
     r"Ebay_train.txt:2: image path '../outside.JPG' leaves the dataset root"),
    ("sop-absolute-path", "sop", make_sop, lambda r: set_line(r / SOP_TRAIN, 2, "1 1 1 /etc/passwd"),
     r"Ebay_train.txt:2: image path '/etc/passwd' leaves the dataset root"),
    ("sop-not-utf8", "sop", make_sop,
     lambda r: (r / SOP_TRAIN).write_bytes((r / SOP_TRAIN).read_bytes().replace(b"1_2.JPG", b"1_\xe9.JPG")),
     r"Ebay_train.txt:4: not UTF-8 text \(byte 0xe9\)"),
    ("sop-binary", "sop", make_sop, lambda r: (r / SOP_TRAIN).write_bytes(b"image_id class_id super_class_id path\n\x00\x01"),
     r"Ebay_train.txt:2: a NUL byte"),
    # ---- cub
    ("cub-non-numeric-image-id", "cub", make_cub, lambda r: set_line(r / "images.txt", 2, "x2 001.Bird_1/Bird_1_1.jpg"),
     r"images.txt:2: image_id 'x2' is not an integer"),
    ("cub-non-numeric-class", "cub", make_cub, lambda r: set_line(r / "image_class_labels.txt", 1, "1 abc"),
     r"image_class_labels.txt:1: class_id 'abc' is not an integer"),
    ("cub-class-out-of-range", "cub", make_cub, lambda r: set_line(r / "image_class_labels.txt", 1, "1 300"),
     r"image_class_labels.txt:1: class_id 300 is outside 1-200"),
    ("cub-column-count", "cub", make_cub, lambda r: set_line(r / "image_class_labels.txt", 5, "5 1 1"),
     r"image_class_labels.txt:5: expected 2 fields '<image_id> <class_id>', got 3"),
    ("cub-duplicate-image-id", "cub", make_cub, lambda r: set_line(r / "images.txt", 2, "1 001.Bird_1/Bird_1_1.jpg"),
     r"images.txt:2: image_id '1' is listed twice \(first on line 1\)"),
    ("cub-path-outside-root", "cub", make_cub, lambda r: set_line(r / "images.txt", 3, "3 ../../secret.jpg"),
     r"images.txt:3: image path '../../secret.jpg' leaves the dataset root"),
    ("cub-empty-file", "cub", make_cub, lambda r: (r / "image_class_labels.txt").write_text("\n\n"),
     r"image_class_labels.txt is empty"),
    ("cub-missing-label", "cub", make_cub, lambda r: set_line(r / "image_class_labels.txt", 4, ""),
     r"image id 4 \(images.txt line 4\) has no line in .*image_class_labels.txt"),
    # ---- cars196
    ("cars-class-text", "cars196", make_cars, lambda r: set_cars(r, 2, "class", "x"),
     r"cars_annos.mat: annotations\[2\].class: 'x' is not a class id; expected an integer 1-196"),
    ("cars-class-zero", "cars196", make_cars, lambda r: set_cars(r, 4, "class", 0),
     r"annotations\[4\].class: .*0.* is not a class id"),
    ("cars-class-empty", "cars196", make_cars, lambda r: set_cars(r, 1, "class", np.zeros((0, 0))),
     r"annotations\[1\].class: holds 0 values; expected one"),
    ("cars-path-number", "cars196", make_cars, lambda r: set_cars(r, 0, "relative_im_path", 5),
     r"annotations\[0\].relative_im_path: .*5.* is not a path"),
    ("cars-duplicate-path", "cars196", make_cars, lambda r: set_cars(r, 3, "relative_im_path", "car_ims/000001.jpg"),
     r"annotations\[3\]: relative_im_path 'car_ims/000001.jpg' is listed twice \(first at \[0\]\)"),
    ("cars-path-outside-root", "cars196", make_cars, lambda r: set_cars(r, 2, "relative_im_path", "../x.jpg"),
     r"annotations\[2\].relative_im_path: image path '../x.jpg' leaves the dataset root"),
    ("cars-truncated", "cars196", make_cars, lambda r: truncate(r / "cars_annos.mat", 300),
     r"cannot read .*cars_annos.mat as a MATLAB file"),
    ("cars-empty-file", "cars196", make_cars, lambda r: truncate(r / "cars_annos.mat", 0),
     r"cannot read .*cars_annos.mat as a MATLAB file"),
    # The MAT-file header and element tags are checked before scipy.io.loadmat reads the file
    # (harness/data/matfile.py); the two inputs that crashed loadmat are in test_cars_mat_...
    ("cars-not-a-mat-file", "cars196", make_cars, lambda r: (r / "cars_annos.mat").write_bytes(b"x" * 400),
     r"cannot read .*cars_annos.mat as a MATLAB file \(the header does not start with 'MATLAB 5.0 MAT-file'"),
    ("cars-header-short", "cars196", make_cars, lambda r: truncate(r / "cars_annos.mat", 100),
     r"cannot read .*cars_annos.mat as a MATLAB file \(100 bytes, shorter than the 128-byte MAT-file header"),
    ("cars-bad-endian", "cars196", make_cars, lambda r: patch(r / "cars_annos.mat", 126, b"XY"),
     r"header bytes 126-127 are b'XY'; expected the endian indicator 'IM' or 'MI'"),
    ("cars-bad-version", "cars196", make_cars, lambda r: patch(r / "cars_annos.mat", 124, b"\x00\x02"),
     r"header bytes 124-125 give version 0x0200; expected 0x0100"),
    ("cars-tag-past-end", "cars196", make_cars, lambda r: truncate(r / "cars_annos.mat", 300),
     r"cannot read .*cars_annos.mat as a MATLAB file \(byte 128: a data element of \d+ bytes runs past the end"),
    # ---- inshop
    ("inshop-count-not-a-number", "inshop", make_inshop, lambda r: set_line(r / INSHOP, 1, "many"),
     r"list_eval_partition.txt:1: 'many' is not the image count"),
    # Found by `make fuzz`: str.strip() drops \x1c and isdigit() takes '²', int() reads neither.
    ("inshop-count-control-character", "inshop", make_inshop, lambda r: set_line(r / INSHOP, 1, "\x1c21"),
     r"list_eval_partition.txt:1: '\\x1c21' is not the image count; expected line 1 to be a whole number"),
    ("inshop-count-superscript", "inshop", make_inshop, lambda r: set_line(r / INSHOP, 1, "2\u00b9"),
     r"list_eval_partition.txt:1: '2\u00b9' is not the image count"),
    ("inshop-count-mismatch", "inshop", make_inshop, lambda r: set_line(r / INSHOP, 1, "20"),
     r"list_eval_partition.txt:1: says 20 images but 21 are listed"),
    ("inshop-bad-status", "inshop", make_inshop,
     lambda r: set_line(r / INSHOP, 3, line(r / INSHOP, 3).replace("train", "tset")),
     r"list_eval_partition.txt:3: evaluation_status 'tset'; expected train, query or gallery"),
    ("inshop-column-count", "inshop", make_inshop, lambda r: set_line(r / INSHOP, 4, "img/a.jpg id_00000001"),
     r"list_eval_partition.txt:4: expected 3 fields"),
    ("inshop-duplicate-image", "inshop", make_inshop, lambda r: set_line(r / INSHOP, 4, line(r / INSHOP, 3)),
     r"list_eval_partition.txt:4: image_name 'img/WOMEN/Dresses/id_00000001/00_1_front.jpg' is listed twice "
     r"\(first on line 3\)"),
    ("inshop-item-in-train-and-test", "inshop", make_inshop,
     lambda r: set_line(r / INSHOP, 15, line(r / INSHOP, 15).replace("id_00000004 query", "id_00000001 query")),
     r"list_eval_partition.txt:15: item_id 'id_00000001' is a test item here but a train item on line 3"),
    ("inshop-path-outside-root", "inshop", make_inshop,
     lambda r: set_line(r / INSHOP, 5, "../../x.jpg id_00000002 train"),
     r"list_eval_partition.txt:5: image path '../../x.jpg' leaves the dataset root"),
    ("inshop-empty-file", "inshop", make_inshop, lambda r: (r / INSHOP).write_text(""),
     r"list_eval_partition.txt is empty"),
    # ---- deepfashion2
    ("df2-not-json", "deepfashion2", make_deepfashion2, lambda r: (r / DF2).write_text("{not json"),
     r"000001.json:1: not valid JSON"),
    ("df2-json-list", "deepfashion2", make_deepfashion2, lambda r: (r / DF2).write_text("[1, 2]"),
     r"000001.json: a JSON list; expected an object"),
    ("df2-pair-id-text", "deepfashion2", make_deepfashion2, lambda r: edit_json(r / DF2, lambda d: d.update(pair_id="x")),
     r"000001.json: pair_id 'x' is not an integer"),
    ("df2-style-text", "deepfashion2", make_deepfashion2,
     lambda r: edit_json(r / DF2, lambda d: d["item1"].update(style="a")),
     r"000001.json: item1.style 'a' is not an integer"),
    ("df2-box-three-numbers", "deepfashion2", make_deepfashion2,
     lambda r: edit_json(r / DF2, lambda d: d["item1"].update(bounding_box=[1, 2, 3])),
     r"000001.json: item1.bounding_box: \[1, 2, 3\] is not a box; expected \[x1, y1, x2, y2\]"),
    ("df2-no-category", "deepfashion2", make_deepfashion2,
     lambda r: edit_json(r / DF2, lambda d: d["item1"].pop("category_id")),
     r"000001.json: item1 lacks category_id"),
    ("df2-bad-source", "deepfashion2", make_deepfashion2, lambda r: edit_json(r / DF2, lambda d: d.update(source="buyer")),
     r"000001.json: source: 'buyer'; expected 'user' or 'shop'"),
    ("df2-item-not-object", "deepfashion2", make_deepfashion2, lambda r: edit_json(r / DF2, lambda d: d.update(item1=[1])),
     r"000001.json: item1: a JSON list; expected an object"),
    ("df2-empty-file", "deepfashion2", make_deepfashion2, lambda r: (r / DF2).write_text(" "), r"000001.json is empty"),
    # ---- fashion-mnist (IDX)
    ("fm-header-truncated", "fashion-mnist", lambda r: make_fashion_mnist(r / FM, gz=False),
     lambda r: truncate(r / FM / "train-images-idx3-ubyte", 6), r"train-images-idx3-ubyte is truncated inside its header"),
    ("fm-data-truncated", "fashion-mnist", lambda r: make_fashion_mnist(r / FM, gz=False),
     lambda r: truncate(r / FM / "t10k-labels-idx1-ubyte", 20),
     r"t10k-labels-idx1-ubyte is truncated or too long \(header says \(30,\), 30 bytes of data; the file has 12\)"),
    ("fm-wrong-dimensions", "fashion-mnist", lambda r: make_fashion_mnist(r / FM, gz=False),
     lambda r: (r / FM / "train-labels-idx1-ubyte").write_bytes((r / FM / "train-images-idx3-ubyte").read_bytes()),
     r"train-labels-idx1-ubyte: byte 3 says 3 dimensions; expected 1"),
    ("fm-bad-magic", "fashion-mnist", lambda r: make_fashion_mnist(r / FM, gz=False),
     lambda r: (r / FM / "train-images-idx3-ubyte").write_bytes(b"\x89PNG" + b"\x00" * 40),
     r"train-images-idx3-ubyte: bytes 0-3 are not a uint8 IDX magic number"),
    ("fm-gz-garbage", "fashion-mnist", lambda r: make_fashion_mnist(r / FM, gz=True),
     lambda r: (r / FM / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all"),
     r"cannot read .*train-labels-idx1-ubyte.gz"),
    ("fm-gz-truncated", "fashion-mnist", lambda r: make_fashion_mnist(r / FM, gz=True),
     lambda r: truncate(r / FM / "train-images-idx3-ubyte.gz", 200), r"cannot read .*train-images-idx3-ubyte.gz"),
    ("fm-gz-corrupt-body", "fashion-mnist", lambda r: make_fashion_mnist(r / FM, gz=True),
     lambda r: (r / FM / "t10k-images-idx3-ubyte.gz").write_bytes(
         (r / FM / "t10k-images-idx3-ubyte.gz").read_bytes()[:30] + b"\xff" * 64
         + (r / FM / "t10k-images-idx3-ubyte.gz").read_bytes()[94:]),
     r"cannot read .*t10k-images-idx3-ubyte.gz"),
    # ---- glyphs (manifest.json + images.npy)
    ("glyphs-npy-truncated", "glyphs", make_glyphs, lambda r: truncate(r / "images.npy", 500),
     r"images.npy is missing, truncated or not a NPY file"),
    ("glyphs-npy-header-truncated", "glyphs", make_glyphs, lambda r: truncate(r / "images.npy", 20),
     r"images.npy is missing, truncated or not a NPY file"),
    # Found by `make fuzz`: numpy's header parser raises more than ValueError on a mutated header.
    ("glyphs-npy-header-syntax", "glyphs", make_glyphs, lambda r: npy_header(r, "'|u1'", "'|,1'"),
     r"images.npy is missing, truncated or not a NPY file \(SyntaxError: .*\); expected the uint8 NPY array"),
    ("glyphs-npy-header-token", "glyphs", make_glyphs, lambda r: npy_header(r, "8), }", "8), 0"),
     r"images.npy is missing, truncated or not a NPY file \(TokenError: .*\)"),
    ("glyphs-npy-header-bytes-key", "glyphs", make_glyphs, lambda r: npy_header(r, ", 'fortran", ",b'fortran"),
     r"images.npy is missing, truncated or not a NPY file \(TypeError: .*\)"),
    ("glyphs-npy-header-huge-dimension", "glyphs", make_glyphs, lambda r: npy_header(r, "(18,", "(99999999999999999999,"),
     r"images.npy is missing, truncated or not a NPY file \(OverflowError: .*\)"),
    ("glyphs-npy-wrong-dtype", "glyphs", make_glyphs, lambda r: np.save(r / "images.npy", np.zeros((18, 8, 8))),
     r"images.npy holds an array of shape \(18, 8, 8\) and dtype float64; expected uint8"),
    ("glyphs-codepoint-text", "glyphs", make_glyphs,
     lambda r: edit_json(r / "manifest.json", lambda d: d["classes"][1].update(codepoint="x")),
     r"manifest.json: classes\[1\].codepoint: 'x' is not a code point"),
    ("glyphs-character-in-both-splits", "glyphs", make_glyphs,
     lambda r: edit_json(r / "manifest.json", lambda d: d["classes"][3].update(codepoint=0x4E00)),
     r"manifest.json: classes\[3\].codepoint: 19968 is listed twice \(first at classes\[0\]\)"),
    ("glyphs-bad-split", "glyphs", make_glyphs,
     lambda r: edit_json(r / "manifest.json", lambda d: d["classes"][2].update(split="dev")),
     r"manifest.json: classes\[2\].split: 'dev'; expected 'train' or 'test'"),
    ("glyphs-faces-not-a-list", "glyphs", make_glyphs,
     lambda r: edit_json(r / "manifest.json", lambda d: d["classes"][0].update(faces=3)),
     r"manifest.json: classes\[0\].faces: 3; expected a list of face ids"),
    ("glyphs-not-json", "glyphs", make_glyphs, lambda r: (r / "manifest.json").write_text('{"format": 1,\n oops'),
     r"manifest.json:2: not valid JSON"),
    ("glyphs-empty-manifest", "glyphs", make_glyphs, lambda r: (r / "manifest.json").write_text(""),
     r"manifest.json is empty"),
    # ---- table
    ("table-duplicate-image", "table", make_table_csv,
     lambda r: set_line(r, 4, line(r, 2).replace("item-0", "item-0")),
     r"images.csv:4: image 'images/0/0.jpg' is listed twice \(first on line 2\)"),
    ("table-not-utf8", "table", make_table_csv,
     lambda r: r.write_bytes(r.read_bytes().replace(b"images/0/1.jpg", b"images/0/\xff.jpg")),
     r"images.csv:3: not UTF-8 text \(byte 0xff\)"),
    ("table-empty-file", "table", make_table_csv, lambda r: r.write_text(""), r"images.csv is empty"),
]


@pytest.mark.parametrize("dataset, maker, damage, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_file_is_one_line_naming_file_and_line(tmp_path, dataset, maker, damage, message):
    made = maker(tmp_path)
    root = made if dataset == "table" else tmp_path / FM if dataset == "fashion-mnist" else tmp_path
    read_dataset(dataset, root)  # the undamaged tree reads
    damage(made if dataset == "table" else tmp_path)
    with pytest.raises(DataError, match=message) as err:
        read_dataset(dataset, root)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{dataset}: "), text
    assert "expected" in text or "re-download" in text or "rebuild" in text, text


def _bom_crlf(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


@pytest.mark.parametrize("dataset, maker, files", [
    ("sop", make_sop, [SOP_TRAIN, SOP_TEST]),
    ("cub", make_cub, ["images.txt", "image_class_labels.txt"]),
    ("inshop", make_inshop, [INSHOP]),
    ("deepfashion2", make_deepfashion2, [DF2, "validation/annos/000013.json"]),
    ("glyphs", make_glyphs, ["manifest.json"]),
    ("table", make_table_csv, ["images.csv"]),
])
def test_byte_order_mark_and_crlf_read_as_if_absent(tmp_path, dataset, maker, files):
    made = maker(tmp_path)
    root = made if dataset == "table" else tmp_path
    clean = read_dataset(dataset, root)
    for f in files:
        _bom_crlf(tmp_path / f)
    again = read_dataset(dataset, root)
    for a, b in ((clean.train, again.train), (clean.test.query, again.test.query)):
        assert a.labels.tolist() == b.labels.tolist()
        if hasattr(a, "paths"):
            assert a.paths.tolist() == b.paths.tolist()


def test_data_check_of_a_non_numeric_class_id_is_one_line_exit_2(tmp_path, harness_cli):
    # The issue's own case: 51 lines ending in int()'s ValueError before.
    make_sop(tmp_path)
    set_line(tmp_path / SOP_TRAIN, 2, "1 x1 1 bicycle_final/1_0.JPG")
    code, out, err = harness_cli(["data", "check", "sop", "--root", str(tmp_path)])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "Ebay_train.txt:2: class_id 'x1' is not an integer" in " ".join(err.split())


@pytest.mark.parametrize("dataset, maker, damage, says", [
    ("inshop", make_inshop, lambda r: set_line(r / INSHOP, 1, "\x1c21"), r"'\x1c21' is not the image count"),
    ("glyphs", make_glyphs, lambda r: npy_header(r, "'|u1'", "'|,1'"), "not a NPY file (SyntaxError:"),
], ids=["inshop-control-character", "glyphs-npy-header-syntax"])
def test_data_check_of_fuzz_found_inputs_is_one_line_exit_2(tmp_path, harness_cli, dataset, maker, damage, says):
    # `make fuzz` found these ending in a ValueError / SyntaxError traceback.
    maker(tmp_path)
    damage(tmp_path)
    code, out, err = harness_cli(["data", "check", dataset, "--root", str(tmp_path)])
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert says in " ".join(err.split()), err


# Found by `make fuzz` (40x): scipy.io.loadmat dies with SIGSEGV on these one-byte mutations
# of cars_annos.mat (scipy 1.17.1; it indexes a fixed table by a tag's data type unchecked).
# Run in a child process: on the code before, the reader kills the process, not the test run.
CARS_CRASHES = {
    # the miUTF8 (16) tag of the first relative_im_path, given data type 96
    "tag-data-type-out-of-range": (b"\x10\x00\x00\x00\x12\x00\x00\x00car_ims/000001.jpg", 0, b"\x60",
                                   r"byte \d+: data type 96 in a data element tag; expected one of 1-7, 9, 12-18"),
    # the array flags of the first uint8 field (class 9) with the complex flag (0x800) set
    "complex-flag-on-a-real-array": (b"\x06\x00\x00\x00\x08\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00"
                                     b"\x05\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00", 9, b"\x08",
                                     r"an array of class 9 \(complex\) with 1 data elements; expected 2"),
}


@pytest.mark.parametrize("case", sorted(CARS_CRASHES))
def test_cars_mat_that_crashed_loadmat_is_one_line(tmp_path, case):
    find, at, byte, message = CARS_CRASHES[case]
    make_cars(tmp_path)
    path = tmp_path / "cars_annos.mat"
    raw = path.read_bytes()
    offset = raw.index(find) + at
    path.write_bytes(raw[:offset] + byte + raw[offset + 1:])
    code = ("import sys; from harness.data import read_dataset; from harness.errors import DataError\n"
            "try:\n    read_dataset('cars196', sys.argv[1])\nexcept DataError as e:\n    print(e)\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, f"exit {done.returncode} (negative: killed by that signal); {done.stderr[-500:]}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "cannot read" in lines[0] and "cars_annos.mat as a MATLAB file" in lines[0], done.stdout
    assert re.search(message, lines[0]), lines[0]
