"""The run config schema: typed sections, one-line errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from harness.config import (
    RunConfig,
    build_config,
    load_config,
    parse_overrides,
)
from harness.errors import ConfigError, HarnessError


def test_defaults_validate_and_flatten():
    cfg = build_config({})
    assert isinstance(cfg, RunConfig)
    flat = cfg.flat()
    assert flat["train.samples_per_class"] == 4
    assert flat["memory.kalman.r"] == 0.01
    assert flat["loss.params"] == {"temperature": 0.1}  # params stay one value


def test_overrides_are_yaml_values():
    cfg = build_config({}, parse_overrides(["train.epochs=3", "memory.kind=xbn", "xml.enabled=true"]))
    assert cfg.train.epochs == 3 and cfg.memory.kind == "xbn" and cfg.xml.enabled is True


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.samples_per_clas=4"], "train.samples_per_clas"),  # unknown key
        (["bogus.section=1"], "bogus"),  # unknown section
        (["train.epochs=many"], "train.epochs"),  # wrong type
        (["train.samples_per_class=0"], "train.samples_per_class"),  # impossible value
        (["memory.size=-5"], "memory.size"),
        (["train.batch_size=30", "train.samples_per_class=4"], "train.batch_size"),  # not divisible
        (["memory.kind=xbnn"], "memory.kind"),
        (["train.select_metric=recall@5"], "train.select_metric"),  # not in eval.ks
        (["memory.size=10", "memory.fraction=0.5"], "memory.size"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        build_config({}, parse_overrides(overrides), source="cfg.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    assert key in msg
    assert isinstance(e.value, HarnessError) and e.value.exit_code == 2


def test_select_metric_accepts_every_computed_metric():
    for m in ("recall@1", "recall@10", "map@r", "r_precision"):
        assert build_config({"train": {"select_metric": m}}).train.select_metric == m


def test_memory_capacity():
    assert build_config({"memory": {"kind": "xbm", "fraction": 0.5}}).memory.capacity(1000) == 500
    assert build_config({"memory": {"kind": "xbm", "size": 64}}).memory.capacity(1000) == 64
    assert build_config({"memory": {"kind": "none", "size": 64}}).memory.capacity(1000) == 0


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"train": {"epochs": 2}}))
    assert load_config(good, ["train.epochs=5"]).train.epochs == 5
    with pytest.raises(ConfigError, match="key=value"):
        load_config(good, ["train.epochs"])


def test_shipped_digits_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert any(p.name == "digits.yaml" for p in configs)
    for p in configs:
        load_config(p)


# Found by `make fuzz` (40x): a key or value holding a line break was echoed raw, so the
# "one-line" error spanned two lines. Each is now escaped as repr() writes it (\n, \r).
@pytest.mark.parametrize("yaml_text, overrides, shown", [
    ("train: {epochs: 2}\n", ["train.ep\nochs=3"], r"--set: train.ep\nochs: unknown key"),
    ("train: {epochs: 2}\n", ["train.epochs\r"], r"--set 'train.epochs\r': expected key=value"),
    ("train: {epochs: 2}\n", ["train.epochs=[1,\n"], r"--set 'train.epochs=[1,\n': value is not valid YAML"),
    ("train: {epochs: 2}\n", ["train.epochs.x\ny=1"], r"config key 'train.epochs.x\ny': 'epochs' is not a section"),
    ("train: {epochs: 2}\n", ["train.select_metric=\"a\\nb\""], r"train.select_metric 'a\nb' is not computed"),
    ('train: {"ep\\nochs": 2}\n', None, r"train.ep\nochs: unknown key"),
    ('"da\\rta": {name: digits}\n', None, r"da\rta: unknown key"),
], ids=["set-key-newline", "set-no-equals-cr", "set-bad-yaml-newline", "set-not-a-section", "set-value-newline",
        "yaml-key-newline", "yaml-key-cr"])
def test_line_breaks_in_user_text_are_escaped_in_the_one_line_error(tmp_path, yaml_text, overrides, shown):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message, repr(message)
    assert shown in message, message


def test_a_set_key_with_a_line_break_is_one_line_exit_2(tmp_path, harness_cli):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {epochs: 2}\n")
    code, out, err = harness_cli(["train", str(path), "--set", "train.ep\nochs=3"])
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert r"train.ep\nochs: unknown key" in err, err
