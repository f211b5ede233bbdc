"""Fuzzing every annotation reader (Hypothesis, derandomized; tests/fixtures/fuzzing.py):
mutations of a valid file and random bytes. Property: the reader returns its parts or
raises one DataError line, never another exception."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.data import read_dataset

from fixtures.fuzzing import file_contents, fuzz_settings, one_line_or_success
from fixtures.layouts import (make_cars, make_cub, make_deepfashion2, make_fashion_mnist, make_glyphs, make_inshop,
                              make_sop, make_table_csv)

pytestmark = pytest.mark.fuzz

EXAMPLES = 60  # per target in `make test`

# (dataset, maker, the file fuzzed relative to the tree, the root given to the reader)
TARGETS = [
    ("sop", make_sop, "Ebay_train.txt", "."),
    ("cub", make_cub, "images.txt", "."),
    ("cub", make_cub, "image_class_labels.txt", "."),
    ("cars196", make_cars, "cars_annos.mat", "."),
    ("inshop", make_inshop, "Eval/list_eval_partition.txt", "."),
    ("deepfashion2", make_deepfashion2, "train/annos/000001.json", "."),
    ("fashion-mnist", lambda r: make_fashion_mnist(r / "fm", gz=False), "fm/train-labels-idx1-ubyte", "fm"),
    ("fashion-mnist", lambda r: make_fashion_mnist(r / "fm", gz=False), "fm/t10k-images-idx3-ubyte", "fm"),
    ("glyphs", make_glyphs, "manifest.json", "."),
    ("glyphs", make_glyphs, "images.npy", "."),
    ("table", make_table_csv, "images.csv", "images.csv"),
]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """One valid tree per target, built once; each example rewrites only the fuzzed file."""
    out = {}
    for i, (dataset, maker, rel, root) in enumerate(TARGETS):
        base = tmp_path_factory.mktemp(f"tree{i}")
        maker(base)
        read_dataset(dataset, base / root)  # valid before fuzzing
        out[(dataset, rel)] = base
    return out


@pytest.mark.parametrize("dataset, maker, rel, root", TARGETS, ids=[f"{t[0]}:{t[2]}" for t in TARGETS])
def test_reader_on_mutated_and_random_files_reads_or_says_one_line(trees, dataset, maker, rel, root):
    base = trees[(dataset, rel)]
    path = base / rel
    original = path.read_bytes()

    @fuzz_settings(EXAMPLES)
    @given(content=file_contents(original))
    def run(content):
        path.write_bytes(content)
        try:
            one_line_or_success(read_dataset, dataset, base / root)
        finally:
            path.write_bytes(original)

    run()


# Folder names a user may give classes: any text a file system takes as a name.
names = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
                max_size=12).filter(lambda s: s not in (".", "..") and len(s.encode()) < 200)


@fuzz_settings(EXAMPLES // 2)
@given(layout=st.dictionaries(
    st.one_of(names, st.sampled_from(["train", "test", "val", "query", "gallery"])),
    st.one_of(st.lists(names, max_size=4), st.dictionaries(names, st.lists(names, max_size=3), max_size=3)),
    max_size=6),
    ext=st.sampled_from([".png", ".jpg", ".txt", ""]))
def test_folder_reader_on_random_trees_reads_or_says_one_line(tmp_path_factory, layout, ext):
    root = tmp_path_factory.mktemp("folder")
    for top, inner in layout.items():
        items = inner.items() if isinstance(inner, dict) else [("", inner)]
        for sub, files in items:
            d = root / top / sub
            d.mkdir(parents=True, exist_ok=True)
            for f in files:
                (d / (f + ext)).write_bytes(b"")
    one_line_or_success(read_dataset, "folder", root)
    shutil.rmtree(root)
