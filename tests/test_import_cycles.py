"""No import cycles among harness, reports and trainables (tools/import_cycles.py)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "import_cycles.py"


def test_no_import_cycles():
    run = subprocess.run([sys.executable, str(TOOL), str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_tool_finds_a_cycle_hidden_in_a_function_and_ignores_type_checking(tmp_path):
    _write(tmp_path, {
        "harness/__init__.py": "",
        "harness/a.py": "from harness.b import f\n",
        "harness/b.py": "def f():\n    from harness import a\n",
        "harness/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from harness.d import D\n",
        "harness/d.py": "from harness.c import *\n",
        "reports/__init__.py": "",
        "trainables/__init__.py": "",
    })
    run = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "harness.a <-> harness.b" in run.stdout
    assert "harness.c" not in run.stdout  # the type-only import is not an edge
    # Only module-level imports: the function-local one is not an edge.
    run = subprocess.run([sys.executable, str(TOOL), "--module-level-only", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
