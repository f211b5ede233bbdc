"""``harness train``: one-line config errors (exit 2), JSON summary, digits learns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cli.train_cmd import default_out_dir, format_epoch_line

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "configs" / "digits.yaml"


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.samples_per_clas=4"], "train.samples_per_clas"),  # unknown key
        (["train.epochs=three"], "train.epochs"),  # wrong type
        (["train.samples_per_class=0"], "train.samples_per_class"),
        (["memory.size=-1"], "memory.size"),
        (["train.batch_size=30"], "train.batch_size"),  # 30 is not divisible by 8
        (["data.name=cub", "data.root=/nonexistent/cub"], "/nonexistent/cub"),  # missing root
        (["data.name=no_such_set"], "no_such_set"),
    ],
)
def test_bad_input_is_one_line_exit_2(overrides, key, tmp_path, harness_cli):
    args = ["train", str(DIGITS), "--out", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    code, out, err = harness_cli(args)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert key in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in err and not out.strip()


def test_missing_config_file(tmp_path, harness_cli):
    code, _, err = harness_cli(["train", str(tmp_path / "nope.yaml")])
    assert code == 2 and "nope.yaml" in err and len(err.strip().splitlines()) == 1


def test_train_prints_epochs_and_a_json_summary(tmp_path, harness_cli):
    out_dir = tmp_path / "run"
    args = ["train", str(DIGITS), "--out", str(out_dir), "--set", "train.epochs=2",
            "--set", "train.iters_per_epoch=2", "--set", "train.probe_size=8"]  # fmt: skip
    code, out, err = harness_cli(args)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary == json.loads((out_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert "test.recall@1" in summary and "test_untrained.recall@1" in summary
    assert "epoch 1/2" in err and "epoch 2/2" in err and "val.recall@1=" in err
    # the run directory resumes: nothing left to train, same best checkpoint
    code, out, _ = harness_cli(args)
    again = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and again["best_epoch"] == summary["best_epoch"]
    assert again["test.recall@1"] == summary["test.recall@1"]


def test_default_out_dir_is_unique(tmp_path):
    first = default_out_dir(Path("configs/digits.yaml"), root=tmp_path)
    assert first.parent == tmp_path and first.name.startswith("digits-")
    # UTC, as every other timestamp the harness writes (harness.utils.clock)
    assert re.fullmatch(r"digits-\d{8}T\d{6}Z", first.name)
    first.mkdir()
    second = default_out_dir(Path("configs/digits.yaml"), root=tmp_path)
    assert second != first and not second.exists()


def test_epoch_line():
    line = format_epoch_line(3, 10, {"loss": 0.51234, "val.recall@1": 0.9, "lr": 1e-4, "other": 1.0})
    assert line.startswith("epoch 3/10") and "loss=0.5123" in line and "val.recall@1=0.9000" in line
    assert "other" not in line


VARIANTS = [
    ["memory.kind=none"],
    ["memory.kind=xbm"],
    ["memory.kind=xbm+batch"],
    ["memory.kind=xbn"],
    ["memory.kind=axbn"],
    ["memory.kind=none", "xml.enabled=true"],
]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(x.split("=")[1] for x in v).replace("true", "xml"))
def test_digits_training_beats_the_untrained_network(variant, tmp_path, harness_cli):
    args = ["train", str(DIGITS), "--out", str(tmp_path / "run")]
    for o in variant:
        args += ["--set", o]
    code, out, err = harness_cli(args)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["status"] == "completed"
    assert s["test.recall@1"] > s["test_untrained.recall@1"], s
