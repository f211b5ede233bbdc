"""Fixtures shared by the whole suite (tests/ mirrors the package; see docs/architecture.md, "Tests").

- ``tiny_config``: factory of the smallest real training run (tests/fixtures/configs.py).
- ``ray_session``: one local Ray (2 CPUs, no dashboard) per test module, shut down after it,
  for tests that only need *a* Ray; tests of clusters or CLI processes start their own.
- ``cli_runner``: invoke the Typer app in-process -> ``click.testing.Result``.
- ``results_storage``: where a sweep keeps its results (``--storage``), under the test's
  tmp_path and not yet created.
- ``harness_cache``: a ``HARNESS_CACHE_DIR`` for the tests (glyphs build, glyph backbone):
  ``$HARNESS_TEST_CACHE`` (kept between `make test` runs), else empty for the session.
Helper modules the tests import by name live in tests/fixtures/ (on the path, pyproject.toml).

`make test` runs the suite on two pytest-xdist workers, a test module to a worker
(``--dist loadscope``: a module's fixtures, such as one interrupted sweep, are built once)
in the order below (``--no-loadscope-reorder``), the longest modules first so that the
workers end together.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two xdist workers share the machine's cores: one OpenMP thread a process (torch in the
# workers, the harness processes and Ray workers they start), or the idle threads of one
# spin on the cores the other needs. Before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from fixtures.configs import tiny_config as _tiny_config
from fixtures.harness_cli import run_cli
from fixtures.local_ray import local_ray


def pytest_collection_modifyitems(config, items):
    """The whole-sweep modules (tests/end_to_end/, the longest) first, then the other
    modules with a ``slow`` test, then the rest; each module's tests in their order."""
    def module(item):
        return item.nodeid.split("::")[0]

    slow_modules = {module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (not module(item).startswith("tests/end_to_end/"),
                                 module(item) not in slow_modules))


@pytest.fixture(scope="session")
def tiny_config():
    return _tiny_config


@pytest.fixture(scope="module")
def ray_session():
    with local_ray():
        yield


class CliRunner:
    """``cli_runner.invoke(["eval", ...])``: the ``harness`` Typer app, in-process."""

    def __init__(self):
        from typer.testing import CliRunner as TyperRunner

        import harness.cli

        harness.cli._register()  # every command group, as `harness` itself does
        self._runner, self.app = TyperRunner(), harness.cli.app

    def invoke(self, args, **kwargs):
        return self._runner.invoke(self.app, [str(a) for a in args], **kwargs)


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def harness_cli(monkeypatch, capsys):
    """``harness_cli(["train", ...]) -> (exit code, stdout, stderr)`` of the real entry point."""
    return lambda args: run_cli(args, monkeypatch, capsys)


@pytest.fixture
def results_storage(tmp_path) -> Path:
    # Not created: the harness creates it, and tests check what it writes there and when.
    return tmp_path / "results"


@pytest.fixture(scope="session")
def harness_cache(tmp_path_factory) -> Path:
    """A ``HARNESS_CACHE_DIR`` for the tests, never the user's cache: what the harness
    builds there on first use (the glyphs dataset, the glyph-pretrained backbone of
    ``model.pretrained: glyphs``; keyed by fonts, settings and versions) is built once.
    ``$HARNESS_TEST_CACHE`` when set (`make test` sets it: kept between runs like the
    venv, so a machine builds them once, about 100 s), else an empty folder of the session."""
    kept = os.environ.get("HARNESS_TEST_CACHE")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("harness-cache")
