"""What `pip install` puts into site-packages: one top-level package, ``harness``.

reports/, trainables/ and search_spaces/ are folders of the repository but install as
harness.reports, harness.trainables and harness.search_spaces (pyproject.toml's
package-dir), so they cannot collide with another distribution's ``reports``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_AS = {"harness": "harness", "reports": "harness/reports", "trainables": "harness/trainables",
                "search_spaces": "harness/search_spaces"}
FORMER_TOP_LEVEL = ("reports", "trainables", "search_spaces")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    # Built from a copy of what the wheel is made of: an in-tree build would leave a build/
    # folder whose stale modules later wheels would still carry.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in INSTALLED_AS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(source)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = out.glob("metric_harness-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package_with_every_module_and_data_file(wheel_names):
    top = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"harness"}
    expected = set()
    for folder, target in INSTALLED_AS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".yaml", ".html", ".md", ".css", ".j2"} \
                    and "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    assert any(name.startswith("harness/reports/templates/") for name in expected)
    assert any(name.startswith("harness/search_spaces/") and name.endswith(".yaml") for name in expected)
    assert expected - wheel_names == set()


def _top_level_imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.lineno, node.module


def test_no_code_imports_the_folders_by_their_repository_names():
    # With the repository root on sys.path (pytest's pythonpath) `import reports` would
    # still work here and then fail for everyone who installed the package.
    found = []
    for folder in ("harness", *FORMER_TOP_LEVEL, "tests", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            for line, name in _top_level_imports(path):
                if name.split(".")[0] in FORMER_TOP_LEVEL:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert found == []
