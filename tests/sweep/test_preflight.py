"""The sweep's pre-flight check (harness/sweep/preflight.py): every compared value's search
space against the data it trains on, before any trial starts.

Real folders of Fashion-MNIST JPEGs (tests/fixtures/photos.py) and the shipped
experiments; errors through the real `harness sweep` entry point (one line, exit 2,
nothing written); the adaptation through the training core's own memory.
"""

from __future__ import annotations

import pytest
import yaml

from fixtures.configs import tiny_config
from fixtures.photos import make_photos
from harness.config import build_config
from harness.core.components import build_losses
from harness.errors import HarnessError
from harness.sweep.experiment import builtin_names
from harness.sweep.plan import prepare_sweep

FOLDER = ["--set", "data.name=folder", "--set", "data.image_size=64"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """classes x images -> a folder of that many Fashion-MNIST photos (made once)."""
    made = {}

    def get(classes: int, per_class: int):
        if (classes, per_class) not in made:
            root = tmp_path_factory.mktemp(f"photos-{classes}x{per_class}")
            made[(classes, per_class)] = make_photos(root, classes, per_class)
        return made[(classes, per_class)]

    return get


def overrides(root) -> list[str]:
    return ["data.name=folder", f"data.root={root}", "data.image_size=64"]


def test_a_memory_fraction_below_one_batch_becomes_one_batch(caplog):
    cfg = build_config({"memory": {"kind": "xbn", "fraction": 0.25}, "train": {"batch_size": 32}})
    assert cfg.memory.fraction_capacity(120) == 30
    assert cfg.memory.capacity(120, 32) == 32  # adapted
    assert cfg.memory.capacity(1000, 32) == 250  # not touched when it holds a batch
    explicit = build_config({"memory": {"kind": "xbm", "size": 30}})
    assert explicit.memory.capacity(120, 32) == 30  # an explicit size is the user's (pre-flight refuses it)
    # the training core's memory follows: the 10 x 40 photos case trains instead of failing
    with caplog.at_level("WARNING"):
        memory, _ = build_losses(cfg, n_train=120, num_classes=3)
    assert memory.memory_size == 32
    # and `harness train` (no pre-flight) says so in one line
    assert [r.getMessage() for r in caplog.records] == [
        "memory.fraction 0.25 of 120 training images is 30 embeddings, less than one batch of 32: "
        "the memory holds one batch (32)"]


def test_demo_on_ten_classes_of_forty_photos_plans_with_one_warning(photos, tmp_path):
    """10 classes x 40 photos: 0.25 of 120 training images is 30, less than a batch of 32."""
    storage = tmp_path / "results"
    plan = prepare_sweep("demo", overrides(photos(10, 40)), storage=str(storage))
    memory = [w for w in plan.warnings if w.startswith("memory.fraction")]
    assert memory == ["memory.fraction 0.25 of the 120 training images of 'folder' is 30 embeddings, less "
                      "than one batch: those trials use a memory of one batch (32) "
                      "(method=xbm, xbm+batch, xbn, axbn)"]
    classes = [w for w in plan.warnings if w.startswith("train.batch_size")]
    assert len(classes) == 1 and "8 classes per batch but 'folder' trains on 3 classes" in classes[0]
    assert len(plan.warnings) == 2
    assert not storage.exists()  # planning writes nothing


def custom_experiment(tmp_path, name: str, base: dict, search: dict) -> str:
    doc = {"base": base, "search": {"trials": 2, "metric": "val.recall@1", "mode": "max",
                                    "reproduction_seeds": [1], **search}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def assert_refused(harness_cli, args, storage, *fragments):
    code, out, err = harness_cli(["sweep", *args, "--storage", str(storage)])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, out + err
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not storage.exists()


def test_an_explicit_memory_size_below_a_batch_is_refused_in_any_categorical_choice(harness_cli, tmp_path):
    """The middle choice (neither corner of the list) is the one that cannot work."""
    path = custom_experiment(tmp_path, "memsize", tiny_config(memory={"kind": "xbm"}), {
        "compare": {"key": "memory.kind", "values": ["xbm", "xbn"]},
        "space": {"memory.size": {"type": "categorical", "choices": [64, 8, 128]}}})
    assert_refused(harness_cli, [path], tmp_path / "results", "(memory.kind=xbm)",
                   "memory.size 8 holds less than one batch (train.batch_size 16); set memory.size to at least 16")


def test_samples_per_class_above_the_images_per_class_is_refused(harness_cli, photos, tmp_path):
    root = photos(10, 3)
    assert_refused(harness_cli, ["demo", "--set", f"data.root={root}", *FOLDER], tmp_path / "results",
                   "(method=none)", "train.samples_per_class 4 exceeds the images of most training classes of "
                   "'folder' (median 3 per class, 3 classes)", "set train.samples_per_class to 3")


def test_a_validation_metric_without_validation_classes_is_refused(harness_cli, tmp_path):
    path = custom_experiment(tmp_path, "noval", tiny_config(data={"val_fraction": 0.0}), {
        "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})
    assert_refused(harness_cli, [path], tmp_path / "results",
                   "data.val_fraction 0 leaves no validation classes in 'digits', but search.metric "
                   "val.recall@1 is measured on them", "set data.val_fraction to 0.1 or more")


def test_too_few_classes_for_the_validation_carve_is_refused(harness_cli, photos, tmp_path):
    root = photos(7, 4)  # 4 test classes, 3 training classes, of which validation takes 2
    assert_refused(harness_cli, ["demo", "--set", f"data.root={root}", *FOLDER], tmp_path / "results",
                   "data.val_fraction=0.1 carves 2 validation classes from the 3 training classes, leaving 1",
                   "give the data at least 4 training classes")


@pytest.mark.parametrize("name", builtin_names())
def test_the_smallest_folder_every_shipped_experiment_accepts(name, photos, tmp_path):
    """README, "Your own images": 8 classes of 4 images (4 of them train, 2 of those
    validate); one class or one image per class fewer is refused."""
    storage = str(tmp_path / "results")
    prepare_sweep(name, overrides(photos(8, 4)), storage=storage)
    with pytest.raises(HarnessError, match=r"leaving 1 \(training needs 2\)"):
        prepare_sweep(name, overrides(photos(7, 4)), storage=storage)
    with pytest.raises(HarnessError, match=r"train.samples_per_class 4 exceeds .*median 3 per class"):
        prepare_sweep(name, overrides(photos(8, 3)), storage=storage)
