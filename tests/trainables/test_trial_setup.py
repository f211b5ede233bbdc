"""trainables/trial_setup.py: the per-trial set-up shared by the one- and N-worker trainables."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.trainables.trial_setup import run_folder, trial_run_config


class FolderCheckpoint:
    """The one method of a Tune / Ray Train checkpoint the set-up uses."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def to_directory(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        for name, text in self.files.items():
            (Path(path) / name).write_text(text)


def test_run_config_has_the_spec_overrides_seed_and_extra_keys():
    spec = {"phase": "search", "seed": 7, "overrides": {"train.epochs": 3, "optim.lr": 0.5}}
    cfg = trial_run_config({"train": {"epochs": 1}}, spec, **{"train.workers": 2})
    assert (cfg.seed, cfg.train.epochs, cfg.optim.lr, cfg.train.workers) == (7, 3, 0.5, 2)


def test_a_bad_override_names_the_trial_phase():
    with pytest.raises(ConfigError, match="trial reproduction"):
        trial_run_config({}, {"phase": "reproduction", "seed": 0, "overrides": {"train.nope": 1}})


def test_run_folder_holds_the_checkpoint_and_is_removed_even_on_error():
    with pytest.raises(RuntimeError):
        with run_folder("restart-test", FolderCheckpoint({"last.pt": "epoch 3"})) as out_dir:
            assert (out_dir / "last.pt").read_text() == "epoch 3"
            raise RuntimeError("the trial died")
    assert not out_dir.exists()


def test_a_fresh_run_folder_is_empty_even_if_a_stale_one_was_left():
    with run_folder("stale-test", None) as out_dir:
        (out_dir / "leftover").write_text("x")
        stale = out_dir
    stale.mkdir(parents=True)
    (stale / "leftover").write_text("x")  # a killed process of the same pid left it
    with run_folder("stale-test", None) as out_dir:
        assert out_dir == stale and list(out_dir.iterdir()) == []
