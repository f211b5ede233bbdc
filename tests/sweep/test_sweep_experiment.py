"""Experiment files: validation into typed objects, the define-by-run space, the shipped set."""

from __future__ import annotations

import optuna
import pytest
import yaml

from harness.errors import ConfigError
from harness.sweep.experiment import builtin_names, find_experiment, load_experiment
from harness.sweep.space import corner_overrides, define_by_run, space_description

SHIPPED = {
    "demo", "demo-digits", "glyphs-memory", "glyphs-memory-grid", "glyphs-memory-scratch", "glyphs-drift", "sop-axbn", "sop-xbn", "sop-xbm", "sop-memory-grid", "inshop-axbn", "deepfashion2-axbn",
    "cub-xml", "cars196-xml", "sop-xml", "inshop-xml",
}  # fmt: skip


def write(tmp_path, doc, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc) if isinstance(doc, dict) else doc)
    return str(p)


def minimal(**search):
    return {
        "base": {"data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"}},
        "search": {"trials": 4, "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2,
                                                      "log": True}}, **search},
    }  # fmt: skip


def test_every_shipped_experiment_validates():
    assert SHIPPED <= set(builtin_names())
    for name in builtin_names():
        exp = load_experiment(name)
        assert exp.name == name and exp.description
        assert sum(exp.trial_budget().values()) >= len(exp.compare_labels)


def test_protocol_experiments_follow_methods_section_4():
    for name in SHIPPED - {"demo", "demo-digits", "glyphs-memory", "glyphs-memory-grid", "glyphs-memory-scratch",
                           "glyphs-drift"}:
        cfg = load_experiment(name).run_config()
        assert cfg.model.backbone == "resnet50" and cfg.model.embedding_size == 512, name
        assert cfg.loss.name == "SupConLoss" and cfg.loss.miner == "PairMarginMiner", name
        assert cfg.loss.miner_params == {"pos_margin": 0.2, "neg_margin": 0.8}, name
        assert (cfg.optim.lr, cfg.optim.lr_decay, cfg.optim.lr_decay_every) == (1e-4, 0.33, 15), name
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.samples_per_class) == (50, 64, 4), name
        assert (cfg.optim.warmup_epochs, cfg.optim.warmup_lr) == (2, 1e-3), name
        assert cfg.train.select_metric == "recall@1", name


def test_memory_grid_compares_batch_and_memory_size():
    exp = load_experiment("sop-memory-grid")
    assert exp.search.algorithm == "grid"
    grid = exp.trial_budget()
    assert len(grid) == 3 and all(n >= 4 for n in grid.values())  # xbm / xbn / axbn
    assert {"train.batch_size", "memory.fraction"} <= set(exp.search.space)


def test_find_by_name_or_path_and_unknown_name_lists_known(tmp_path):
    assert find_experiment("demo").name == "demo.yaml"
    assert find_experiment(write(tmp_path, minimal())).name == "exp.yaml"
    with pytest.raises(ConfigError, match=r"unknown experiment 'nope'; known: .*demo"):
        find_experiment("nope")


@pytest.mark.parametrize(
    "doc, match",
    [
        (minimal(algorithm="bayes"), r"search\.algorithm"),
        ({**minimal(), "serach": {}}, r"serach: unknown key"),
        (minimal(space={"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}), r"empty or inverted range"),
        (minimal(space={"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-3}}), r"empty or inverted range"),
        (minimal(space={"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}}), r"log: true needs low > 0"),
        (minimal(space={"optim.lr": {"type": "float", "low": 0, "hi": 1}}), r"search\.space\.optim\.lr\.hi: unknown key"),
        (minimal(space={"model.widht": {"type": "int", "low": 1, "high": 4}}), r"search\.space\.model\.widht: the run config has no key"),
        (minimal(space={"xml.weight": {"type": "float", "low": 0.1, "high": 1, "when": {"xml.on": True}}}), r"unknown config key 'xml\.on'"),
        (minimal(space={"memory.kind": {"type": "categorical", "choices": []}}), r"non-empty 'choices'"),
        (minimal(compare={"key": "memory.kinds", "values": ["xbm"]}), r"compare\.key: 'memory\.kinds' is not a config key"),
        (minimal(space={"train.batch_size": {"type": "int", "low": 6, "high": 30}}), r"train\.batch_size \(6\) must be divisible"),
    ],
)  # fmt: skip
def test_bad_experiments_name_the_key(tmp_path, doc, match):
    with pytest.raises(ConfigError, match=match):
        load_experiment(write(tmp_path, doc))


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "base:\n  data: {name: digits\nsearch:\n  trials: 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at .*exp\.yaml:\d+"):
        load_experiment(path)


def test_overrides_and_trials_apply_to_base_and_budget(tmp_path):
    exp = load_experiment(write(tmp_path, minimal()), overrides=["train.epochs=2"], trials=6)
    assert exp.run_config().train.epochs == 2 and exp.trial_budget() == {None: 6}
    with pytest.raises(ConfigError, match="train.epocs: unknown key"):
        load_experiment(write(tmp_path, minimal()), overrides=["train.epocs=2"])


def test_compare_method_axis_sets_memory_and_xml_and_splits_budget():
    exp = load_experiment("demo-digits")
    assert exp.compare_overrides("none+xml") == {"memory.kind": "none", "xml.enabled": True}
    assert exp.compare_overrides("xbm+batch") == {"memory.kind": "xbm+batch", "xml.enabled": False}
    budget = exp.trial_budget()
    assert sum(budget.values()) == exp.search.trials and len(set(budget.values())) == 1


def test_define_by_run_suggests_conditional_params_only_when_active():
    exp = load_experiment("demo-digits")
    seen = {}
    for label in ("none", "axbn", "none+xml"):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        fn = define_by_run(exp, label)
        for _ in range(5):
            trial = study.ask()
            fn(trial)
            study.tell(trial, 0.5)
        seen[label] = set().union(*(t.params for t in study.trials))
    assert seen["none"] == {"optim.lr"}
    assert {"memory.kalman.r", "memory.size", "optim.lr"} == seen["axbn"]
    assert {"model.prototypes.count", "xml.weight", "optim.lr"} == seen["none+xml"]
    for p in (optuna.trial.FixedTrial({"optim.lr": 1e-3, "memory.size": 300, "memory.kalman.r": 0.01}),):
        define_by_run(exp, "axbn")(p)  # a fixed trial answers every suggestion: no KeyError


def test_corners_and_space_json_document():
    exp = load_experiment("demo-digits")
    low = corner_overrides(exp, "axbn", "low")
    assert low["memory.kalman.r"] == 0.001 and low["memory.size"] == 128 and "xml.weight" not in low
    doc = space_description(exp)
    assert doc["trials_planned"] == 18 and doc["compare_key"] == "method"
    assert doc["params"]["optim.lr"] == {
        "type": "float", "low": 0.0003, "high": 0.003, "log": True, "step": None, "choices": None, "when": None,
    }  # fmt: skip
    assert doc["params"]["memory.kalman.r"]["when"] == {"memory.kind": "axbn"}


def test_demo_and_glyphs_benchmarks_run_on_glyphs_with_an_unsaturated_objective():
    for name in ("demo", "glyphs-memory", "glyphs-memory-grid", "glyphs-memory-scratch", "glyphs-drift"):
        exp = load_experiment(name)
        cfg = exp.run_config()
        assert cfg.data.name == "glyphs" and cfg.data.root is None, name  # the auto-built cache
        assert cfg.data.augment == "none", name  # a flipped or cropped glyph is another shape
        assert exp.search.metric == "val.map@r" and cfg.train.select_metric == "map@r", name
        assert cfg.loss.miner == "PairMarginMiner" and cfg.train.samples_per_class == 4, name
    memory = load_experiment("glyphs-memory")
    assert memory.compare_labels == ["none", "xbm", "xbm+batch", "xbn", "axbn", "none+xml"]
    assert memory.run_config().memory.fraction == 0.5
    # Every method gets the same search budget.
    assert set(memory.trial_budget().values()) == {4} and memory.search.reproduction_seeds == [1, 2, 3]
    # its search chooses each method's setting by the mean over 3 class-disjoint folds
    assert (memory.search.objective.folds, memory.search.objective.seeds) == (3, 1)
    grid = load_experiment("glyphs-memory-grid")
    assert grid.search.reproduce == "all" and grid.compare_labels == ["xbm", "xbn"]
    assert space_description(grid)["base_values"] == {"train.batch_size": 32, "memory.fraction": 0.5}
    assert sum(grid.trial_budget().values()) == 12 and len(grid.search.reproduction_seeds) == 3


def test_glyph_benchmarks_run_in_the_papers_regime_and_scratch_stays_named():
    """Pretrained backbone + pre-warm-up (docs/METHODS.md §4), except the one experiment
    named for the from-scratch regime."""
    for name in ("demo", "glyphs-memory", "glyphs-memory-grid", "glyphs-drift"):
        cfg = load_experiment(name).run_config()
        assert cfg.model.pretrained == "glyphs" and cfg.optim.warmup_epochs >= 1, name
        assert cfg.train.epochs > cfg.optim.warmup_epochs, name
    scratch = load_experiment("glyphs-memory-scratch")
    cfg = scratch.run_config()
    assert cfg.model.pretrained is False and cfg.optim.warmup_epochs == 0
    assert "FROM SCRATCH" in scratch.description
    drift = load_experiment("glyphs-drift")
    assert drift.compare_labels == ["none", "xbm", "xbm+batch", "xbn", "axbn"] and drift.search.reproduce == "all"
    lrs = drift.search.space["optim.lr"].choices
    assert max(lrs) / min(lrs) >= 30 and drift.search.reproduction_seeds == [1, 2, 3]


def test_reference_section_is_validated(tmp_path):
    doc = minimal()
    doc["reference"] = {"source": "paper", "values": {"test.recall@1": {"axbn": {"mean": 80.7, "std": 0.3}}}}
    assert load_experiment(write(tmp_path, doc)).reference.values["test.recall@1"]["axbn"].mean == 80.7
    doc["reference"]["values"] = {"test.recal@1": {"axbn": {"mean": 1}}}
    with pytest.raises(ConfigError, match=r"reference: values: unknown metric 'test\.recal@1'"):
        load_experiment(write(tmp_path, doc))
    doc["reference"]["values"] = {"test.recall@1": {"xbnn": {"mean": 1}}}
    with pytest.raises(ConfigError, match=r"unknown method 'xbnn'"):
        load_experiment(write(tmp_path, doc))
    doc["reference"]["values"] = {"test.recall@1": {"xbn": {"mean": 1, "sd": 2}}}
    with pytest.raises(ConfigError, match=r"reference\.values\.test\.recall@1\.xbn\.sd: unknown key"):
        load_experiment(write(tmp_path, doc))


# Found by `make fuzz` (40x): a base section that parses to null ended in
# AttributeError: 'NoneType' object has no attribute 'get'.
@pytest.mark.parametrize("section", ["train", "data", "model", "memory"])
def test_a_null_base_section_loads_or_is_one_line(tmp_path, section):
    doc = minimal()
    doc["base"][section] = None
    try:
        exp = load_experiment(write(tmp_path, doc))
    except ConfigError as e:
        assert "\n" not in str(e), str(e)
    else:
        exp.dataset(), exp.methods()


# Found by `make fuzz` (40x): user text with a line break was echoed raw (two lines).
@pytest.mark.parametrize("doc, shown", [
    (minimal(space={"model.wi\ndth": {"type": "int", "low": 1, "high": 4}}),
     r"search.space.model.wi\ndth: the run config has no key 'model.wi\ndth'"),
    (minimal(space={"xml.weight": {"type": "float", "low": 0.1, "high": 1, "when": {"xml.o\rn": True}}}),
     r"unknown config key 'xml.o\rn'"),
    (minimal(compare={"key": "memory.ki\nnds", "values": ["xbm"]}), r"compare.key: 'memory.ki\nnds' is not a config key"),
    ({**minimal(), "sea\nrch": {}}, r"sea\nrch: unknown key"),
], ids=["space-key", "when-key", "compare-key", "top-level-key"])
def test_line_breaks_in_experiment_keys_are_escaped(tmp_path, doc, shown):
    with pytest.raises(ConfigError) as err:
        load_experiment(write(tmp_path, doc))
    message = str(err.value)
    assert "\n" not in message and "\r" not in message, repr(message)
    assert shown in message, message


def test_an_unknown_experiment_name_with_a_line_break_is_one_line():
    with pytest.raises(ConfigError) as err:
        find_experiment("no\npe")
    assert "\n" not in str(err.value) and r"unknown experiment 'no\npe'" in str(err.value), str(err.value)
