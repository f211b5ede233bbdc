"""Fuzzing the config and experiment loaders (Hypothesis, derandomized;
tests/fixtures/fuzzing.py): random YAML trees, random bytes, mutated valid configs and
mutated shipped experiments, and random ``--set`` overrides. Property: a RunConfig /
Experiment, or one ConfigError line, never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
import harness.search_spaces
import yaml
from hypothesis import given
from hypothesis import strategies as st

from harness.config import load_config, load_yaml
from harness.sweep.experiment import load_experiment

from fixtures.configs import tiny_config
from fixtures.fuzzing import NASTY_TOKENS, file_contents, fuzz_settings, one_line_or_success, scalars, token, trees

pytestmark = pytest.mark.fuzz

EXAMPLES = 100  # per target in `make test`
ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(Path(harness.search_spaces.__file__).parent.glob("*.yaml"))


def dotted_keys(d, prefix=""):
    for k, v in d.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from dotted_keys(v, f"{prefix}{k}.")


def mutate(raw: dict, key: str, action: str, value) -> dict:
    """``raw`` with ``key`` (dotted) set to ``value``, deleted, or given an unknown sibling."""
    parts = key.split(".")
    cur = raw
    for p in parts[:-1]:
        if not isinstance(cur.get(p), dict):
            return raw
        cur = cur[p]
    if action == "set":
        cur[parts[-1]] = value
    elif action == "delete":
        cur.pop(parts[-1], None)
    else:
        cur[f"{parts[-1]}_typo"] = value
    return raw


def dump(tree) -> str:
    try:
        return yaml.safe_dump(tree, allow_unicode=True)
    except (yaml.YAMLError, ValueError):  # e.g. a surrogate: not representable, not an input
        return "x: 1\n"


actions = st.sampled_from(["set", "set", "delete", "unknown"])
CONFIG_KEYS = sorted(set(dotted_keys(tiny_config())) | set(dotted_keys(yaml.safe_load(
    (ROOT / "configs" / "digits.yaml").read_text()))) | {"memory.size", "model.prototypes.count", "xml.enabled",
                                                         "train.workers", "data.val_folds", "eval.ks"})


@fuzz_settings(EXAMPLES)
@given(tree=st.one_of(trees, st.dictionaries(st.sampled_from(["data", "model", "loss", "memory", "xml", "optim",
                                                               "train", "eval", "seed"]), trees, max_size=5)))
def test_config_loader_on_random_yaml_trees(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_text(dump(tree), encoding="utf-8")
    one_line_or_success(load_config, path)


@fuzz_settings(EXAMPLES)
@given(content=file_contents((ROOT / "configs" / "digits.yaml").read_bytes()))
def test_config_loader_on_mutated_and_random_bytes(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_bytes(content)
    one_line_or_success(load_config, path)


@fuzz_settings(EXAMPLES)
@given(edits=st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), actions, st.one_of(scalars, trees)), min_size=1,
                      max_size=3),
       overrides=st.lists(st.tuples(st.sampled_from(CONFIG_KEYS + ["", "a..b", "data.name.x"]),
                                    st.one_of(token, st.sampled_from(NASTY_TOKENS))), max_size=2))
def test_config_loader_on_mutated_valid_configs_and_overrides(tmp_path_factory, edits, overrides):
    raw = tiny_config()
    for key, action, value in edits:
        raw = mutate(raw, key, action, value)
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_text(dump(raw), encoding="utf-8")
    one_line_or_success(load_config, path, [f"{k}={v}" for k, v in overrides])


@fuzz_settings(EXAMPLES)
@given(experiment=st.sampled_from(EXPERIMENTS),
       edits=st.lists(st.tuples(st.text(max_size=0), actions, st.one_of(scalars, trees)), min_size=1, max_size=3),
       picks=st.lists(st.integers(0, 10**6), min_size=3, max_size=3))
def test_experiment_loader_on_mutated_shipped_experiments(tmp_path_factory, experiment, edits, picks):
    raw = load_yaml(experiment)
    keys = sorted(dotted_keys(raw))
    for (_, action, value), pick in zip(edits, picks):
        raw = mutate(raw, keys[pick % len(keys)], action, value)
    path = tmp_path_factory.mktemp("exp") / experiment.name
    path.write_text(dump(raw), encoding="utf-8")
    one_line_or_success(load_experiment, str(path))


@fuzz_settings(EXAMPLES // 2)
@given(content=file_contents((EXPERIMENTS[0]).read_bytes()))
def test_experiment_loader_on_mutated_and_random_bytes(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("exp") / "exp.yaml"
    path.write_bytes(content)
    one_line_or_success(load_experiment, str(path))
