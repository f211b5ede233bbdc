"""Fixtures shared by the whole suite (tests/ mirrors the package; see docs/architecture.md, "Tests").

- ``tiny_config``: factory of the smallest real training run (tests/fixtures/configs.py).
- ``ray_session``: one local Ray (2 CPUs, no dashboard) per test module, shut down after it,
  for tests that only need *a* Ray; tests of clusters or CLI processes start their own.
- ``cli_runner``: invoke the Typer app in-process -> ``click.testing.Result``.
- ``results_storage``: where a sweep keeps its results (``--storage``), under the test's
  tmp_path and not yet created.
Helper modules the tests import by name live in tests/fixtures/ (on the path, pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.configs import tiny_config as _tiny_config


@pytest.fixture(scope="session")
def tiny_config():
    return _tiny_config


@pytest.fixture(scope="module")
def ray_session():
    import ray

    # Ray gives its raylet 30 s to register; on a machine loaded by other jobs that can
    # run out, which is no fault of the code under test: start again (3 tries).
    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
            break
        except Exception as e:  # noqa: BLE001 - ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
    yield
    ray.shutdown()


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
def results_storage(tmp_path) -> Path:
    # Not created: the harness creates it, and tests check what it writes there and when.
    return tmp_path / "results"
