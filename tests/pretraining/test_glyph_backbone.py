"""The glyph-pretrained backbone (harness/pretraining/glyphs.py): deterministic, built
from characters that no benchmark split holds, and loaded by ``model.pretrained``.

Fonts: the small subsets in tests/fonts (SIL OFL 1.1), so the builds take seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from harness.config import ModelConfig
from harness.core.model import _REGISTRY, create_backbone, create_model
from harness.data import fonts as fontscan
from harness.data.glyphs import GlyphSettings, build_glyphs, read_manifest
from harness.errors import ConfigError
from harness.pretraining import glyphs as pretraining
from harness.pretraining.glyphs import GlyphPretraining, build_glyph_backbone

FONTS = Path(__file__).parents[1] / "fonts"
BENCH = GlyphSettings(size=16, characters=30, min_faces=4, min_face_ideographs=50)
PRE = GlyphPretraining(characters=12, min_faces=4, size=16, epochs=2, batch_size=16, min_face_ideographs=50)


def small_cnn():
    return _REGISTRY["tiny_cnn_small"](False).module


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "glyphs"
    build_glyphs(root, BENCH, font_dirs=[FONTS])
    return root


@pytest.fixture(scope="module")
def two_builds(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    return [build_glyph_backbone(out / name, small_cnn, PRE, benchmark_root=bench, font_dirs=[FONTS], log=lambda m: None)
            and out / name for name in ("a", "b")]


def test_built_twice_from_the_same_fonts_it_is_byte_identical(two_builds):
    a, b = two_builds
    bytes_a = (a / "backbone.pt").read_bytes()
    assert bytes_a == (b / "backbone.pt").read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(bytes_a).hexdigest()
    assert len(manifest["history"]) == PRE.epochs and manifest["images"] > 0
    # it trained: the weights are not the initialisation
    torch.manual_seed(PRE.seed)
    init = small_cnn().state_dict()
    trained = torch.load(a / "backbone.pt", weights_only=True)
    assert set(trained) == set(init)
    assert any(not torch.equal(trained[k], init[k]) for k in init if init[k].is_floating_point())


def test_pretraining_characters_are_disjoint_from_every_benchmark_split(bench, two_builds):
    bench_manifest = read_manifest(bench)
    pre_manifest = read_manifest(two_builds[0] / "data")
    splits = {c["split"] for c in bench_manifest["classes"]}
    assert splits == {"train", "test"}  # validation is carved from train: covered by it
    bench_chars = {c["codepoint"] for c in bench_manifest["classes"]}
    pre_chars = {c["codepoint"] for c in pre_manifest["classes"]}
    assert len(pre_chars) == PRE.characters and len(bench_chars) == BENCH.characters
    assert not pre_chars & bench_chars
    assert pre_manifest["excluded_characters"] == BENCH.characters


def test_model_pretrained_glyphs_loads_the_cached_backbone(tmp_path, monkeypatch, bench):
    """``model.pretrained: glyphs`` builds once into the cache, then loads those weights."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fontscan, "DEFAULT_FONT_DIRS", (str(FONTS),))
    monkeypatch.setattr(pretraining, "GlyphPretraining", lambda: PRE)
    monkeypatch.setattr(pretraining.glyph_data, "cached_build", lambda settings=None: bench)
    backbone = create_backbone("tiny_cnn_small", "glyphs").module
    built = list(tmp_path.glob("glyph-backbone-tiny_cnn_small-*/backbone.pt"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    saved = torch.load(built[0], weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in backbone.state_dict().items())
    create_model(ModelConfig(backbone="tiny_cnn_small", pretrained="glyphs", embedding_size=8), False)
    assert built[0].stat().st_mtime_ns == stamp  # not rebuilt


def test_glyphs_weights_exist_for_registry_backbones_only():
    with pytest.raises(ConfigError, match=r"model.pretrained=glyphs .*registry backbones.*not resnet18"):
        create_backbone("resnet18", "glyphs")
