"""The glyphs dataset: font scan and duplicate merging, rendering, deterministic builds,
the reader, `harness data build/check glyphs`, the auto-built cache, and a short
training run that beats the untrained network.

Fonts: the small subsets in tests/fonts (SIL OFL 1.1, see tests/fonts/README.md):
a two-face collection (rule 1: one design per collection and weight), a Kai face and
its Mono twin (rule 2: identical outlines), a Bold and a Serif face: 6 faces, 4 designs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from harness.data import fonts as fontscan
from harness.data.glyphs import (
    GlyphSettings,
    build_glyphs,
    cached_build,
    load_font,
    read_build,
    render_glyph,
)
from harness.data.registry import read_dataset
from harness.errors import DataError

FONTS = Path(__file__).parents[1] / "fonts"
# The test fonts map ~120 ideographs each: lower the supplement threshold for them.
SMALL = dict(min_face_ideographs=50)
SETTINGS = GlyphSettings(size=24, characters=40, min_faces=4, **SMALL)


@pytest.fixture(scope="module")
def faces():
    return fontscan.scan_faces([FONTS], min_ideographs=50)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("glyphs") / "g"
    manifest = build_glyphs(out, SETTINGS, font_dirs=[FONTS])
    return out, manifest


def test_scan_reads_every_face_and_its_cmap(faces):
    assert len(faces) == 6  # the .ttc holds two faces
    ttc = [f for f in faces if f.path.endswith(".ttc")]
    assert sorted(f.index for f in ttc) == [0, 1]
    for f in faces:
        assert len(f.characters) >= 100 and all(0x4E00 <= c <= 0x9FFF for c in f.characters)
        assert f.sha256 == hashlib.sha256(Path(f.path).read_bytes()).hexdigest()
    # A character the subsets do not map is nobody's (no fallback glyph).
    assert not any(ord("龘") in f.characters for f in faces)


def test_scan_skips_faces_below_the_supplement_threshold():
    assert fontscan.scan_faces([FONTS], min_ideographs=1000) == []


def test_duplicates_merge_by_collection_and_by_identical_outlines(faces):
    distinct = fontscan.distinct_faces(faces)
    assert len(distinct) == 4
    by_name = {f.name: f for f in distinct}
    # Rule 1: the KR face of the same collection and weight merged into the JP one.
    sans = by_name["Harness Test Sans JP Regular"]
    assert sans.duplicates == [f"{(FONTS / 'test-sans-regular.ttc').resolve()}:1"]
    # Rule 2: Kai Mono draws the same outlines as Kai (different files); the shorter
    # family name is kept on equal coverage.
    kai = by_name["Harness Test Kai Regular"]
    assert kai.duplicates == [f"{(FONTS / 'test-kai-mono-regular.ttf').resolve()}:0"]
    # Different designs and weights stay apart.
    assert {"Harness Test Sans JP Bold", "Harness Test Serif JP Regular"} <= set(by_name)


def test_renderer_centres_the_ink(faces):
    face = next(f for f in faces if f.family == "Harness Test Sans JP" and f.weight == 400)
    image = np.asarray(render_glyph(load_font(face, 32), "田", 32))
    assert image.shape == (32, 32) and image.dtype == np.uint8
    ys, xs = np.nonzero(image < 128)
    assert len(xs) > 50  # ink, not a blank canvas
    assert abs((xs.min() + xs.max()) / 2 - 15.5) <= 1.0 and abs((ys.min() + ys.max()) / 2 - 15.5) <= 1.0
    assert image[0].min() == 255 and image[-1].min() == 255  # a margin all round


def test_build_is_deterministic_and_manifest_complete(built, tmp_path):
    out, manifest = built
    again = build_glyphs(tmp_path / "again", SETTINGS, font_dirs=[FONTS])
    assert (out / "images.npy").read_bytes() == (tmp_path / "again" / "images.npy").read_bytes()
    assert (out / "manifest.json").read_bytes() == (tmp_path / "again" / "manifest.json").read_bytes()
    assert again == manifest
    assert len(manifest["faces"]) == 4
    for face in manifest["faces"]:
        assert face["sha256"] == hashlib.sha256(Path(face["path"]).read_bytes()).hexdigest()
        assert {"path", "face_index", "family", "style", "weight", "duplicates"} <= set(face)
    classes = manifest["classes"]
    assert len(classes) == 40 and all(len(c["faces"]) >= 4 for c in classes)
    assert {c["split"] for c in classes} == {"train", "test"}
    assert sum(c["split"] == "test" for c in classes) == 20
    assert all(c["char"] == chr(c["codepoint"]) for c in classes)
    assert manifest["settings"]["size"] == 24


def test_different_seed_gives_a_different_split(built, tmp_path):
    _, manifest = built
    other = build_glyphs(tmp_path / "s1", GlyphSettings(size=24, characters=40, min_faces=4, seed=1, **SMALL),
                         font_dirs=[FONTS])
    split = lambda m: {c["codepoint"]: c["split"] for c in m["classes"]}  # noqa: E731
    assert split(other) != split(manifest)


def test_reader_gives_class_disjoint_splits_of_the_build(built):
    out, manifest = built
    parts = read_dataset("glyphs", out)
    _, images, labels, _ = read_build(out)
    assert len(parts.train) + len(parts.test.query) == len(images) == manifest["images"]
    train, test = set(parts.train.labels.tolist()), set(parts.test.query.labels.tolist())
    assert not train & test and len(train) == len(test) == 20
    assert parts.test.gallery is None  # one-set retrieval, like SOP
    image, label = parts.train.with_transform(None)[0]
    assert image.size == (24, 24) and label in train


def test_registered_without_root_and_without_centre_crop():
    from harness.data.registry import get_dataset_info, list_datasets
    from harness.data.transforms import eval_transform

    info = get_dataset_info("glyphs")
    assert "glyphs" in list_datasets() and not info.needs_root
    # The photo datasets' 0.875 centre crop would cut ~2 px of strokes off each side.
    assert info.crop_pct == 1.0
    from PIL import Image

    edge = Image.new("L", (32, 32), 255)
    edge.putpixel((0, 16), 0)
    x = eval_transform(32, (0.5,) * 3, (0.5,) * 3, info.crop_pct)(edge.convert("RGB"))
    assert x.shape == (3, 32, 32) and x[0, 16, 0] < 0  # the edge pixel survives (dark)


def test_too_few_faces_names_packages_and_fonts_option(tmp_path):
    with pytest.raises(DataError, match=r"4 distinct CJK font face.*need at least 12.*fonts-noto-cjk.*--fonts DIR"):
        build_glyphs(tmp_path / "x", GlyphSettings(min_faces=12, **SMALL), font_dirs=[FONTS])
    with pytest.raises(DataError, match=r"0 distinct CJK font face"):
        build_glyphs(tmp_path / "y", GlyphSettings(min_faces=4, **SMALL), font_dirs=[tmp_path])


def test_damaged_build_is_a_one_line_error(built, tmp_path):
    out, _ = built
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text((out / "manifest.json").read_text())
    np.save(bad / "images.npy", np.zeros((3, 24, 24), dtype=np.uint8))
    with pytest.raises(DataError, match=r"holds 3 images, the manifest lists \d+; rebuild"):
        read_dataset("glyphs", bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"not valid JSON"):
        read_dataset("glyphs", bad)


def test_cached_build_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fontscan, "DEFAULT_FONT_DIRS", (str(FONTS),))
    first = cached_build(SETTINGS)
    stamp = (first / "images.npy").stat().st_mtime_ns
    assert cached_build(SETTINGS) == first and (first / "images.npy").stat().st_mtime_ns == stamp
    assert first.parent == tmp_path and first.name.startswith("glyphs-")
    # Other settings are another cache entry.
    assert cached_build(GlyphSettings(size=16, characters=20, min_faces=4, **SMALL)) != first


def test_cli_build_and_check(tmp_path, harness_cli):
    out = tmp_path / "g"
    code, _, err = harness_cli(["data", "build", "glyphs", "--out", str(out), "--fonts", str(FONTS),
                                "--size", "20", "--characters", "30", "--min-faces", "4",
                                "--min-face-ideographs", "50"])
    assert code == 0, err
    assert "30 characters (15 train, 15 test)" in err and "from 4 distinct faces" in err
    assert np.load(out / "images.npy").shape[1:] == (20, 20)
    code, stdout, err = harness_cli(["data", "check", "glyphs", "--root", str(out)])
    assert code == 0, err
    assert "4 distinct font faces" in stdout and "layout ok" in stdout
    # 15 classes per split, 4 faces for every character (per class: min / median / max).
    assert stdout.count("│      15 │") == 2 and stdout.count("4 / 4 / 4") == 2


def test_cli_build_too_few_faces_is_one_red_line(tmp_path, harness_cli):
    code, stdout, err = harness_cli(["data", "build", "glyphs", "--out", str(tmp_path / "g"),
                                     "--fonts", str(tmp_path)])
    assert code == 2 and not (tmp_path / "g").exists()
    assert "apt-get install fonts-noto-cjk" in err and "--fonts DIR" in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


@pytest.mark.slow
def test_training_on_glyphs_beats_the_untrained_network(built, tmp_path, harness_cli):
    out, _ = built
    code, _, err = harness_cli([
        "train", str(Path(__file__).parents[2] / "configs" / "digits.yaml"),
        "--set", "data.name=glyphs", "--set", f"data.root={out}", "--set", "data.image_size=24",
        "--set", "data.val_fraction=0.25", "--set", "model.backbone=tiny_cnn_small",
        "--set", "train.epochs=4", "--set", "train.batch_size=16", "--set", "train.samples_per_class=4",
        "--set", "train.iters_per_epoch=15", "--set", "optim.lr=0.003", "--set", "memory.kind=xbn",
        "--set", "train.device=cpu", "--out", str(tmp_path / "run"),
    ])
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["test.map@r"] > summary["test_untrained.map@r"] + 0.02
