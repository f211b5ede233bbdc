"""README, "Your own images: a sweep in three commands", run as a new user runs it.

A folder of 10 classes x 40 real product photos (Fashion-MNIST written as 64 px JPEGs,
tests/fixtures/photos.py), then the README's commands as `harness` processes in the
folder that holds `photos/`: `harness data check folder --root photos/`, `harness sweep
demo --set data.name=folder --set data.root=photos --set data.image_size=64 --storage
results`, and the report the third command opens. The case that once lost XBN: the shipped `demo`
draws memory.fraction 0.25, which this data makes 30 embeddings, less than one batch.

The demo fine-tunes the glyph-pretrained backbone (`model.pretrained: glyphs`), which the
first trial builds into the cache (glyphs dataset and backbone, about 100 s, needs the
CJK fonts `make demo` installs). This is the flow the README tells the user to run, so the
test keeps it: it builds into the tests' own ``HARNESS_CACHE_DIR`` (conftest's
``harness_cache``: kept between `make test` runs, so on a machine's first run), never
reading the user's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fixtures.photos import make_photos

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
HARNESS = [sys.executable, "-c", "from harness.cli import main; main()"]
METHODS = ["none", "xbm", "xbm+batch", "xbn", "axbn", "none+xml"]


def harness(args: list[str], cwd: Path, cache: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "HARNESS_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*HARNESS, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def test_readme_own_images_flow_compares_every_method(tmp_path, harness_cache):
    make_photos(tmp_path / "photos", classes=10, per_class=40, size=64)

    check = harness(["data", "check", "folder", "--root", "photos/"], tmp_path, harness_cache, 300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "layout ok" in check.stdout
    assert [ln.split("│")[3:5] for ln in check.stdout.splitlines() if ln.startswith("│ t")] == [
        ["       5 ", "    200 "], ["       5 ", "    200 "]]  # train, test: classes, images

    sweep = harness(["sweep", "demo", "--set", "data.name=folder", "--set", "data.root=photos",
                     "--set", "data.image_size=64", "--storage", "results"], tmp_path, harness_cache, 3000)
    assert sweep.returncode == 0, sweep.stderr[-4000:]
    warnings = [ln for ln in sweep.stderr.splitlines() if ln.startswith("warning:")]
    assert ("warning: memory.fraction 0.25 of the 120 training images of 'folder' is 30 embeddings, less than "
            "one batch: those trials use a memory of one batch (32) (method=xbm, xbm+batch, xbn, axbn)") in warnings
    assert "NaN or Inf" not in sweep.stderr and "error:" not in sweep.stderr

    trials = pd.read_parquet(tmp_path / "results" / "demo" / "trials.parquet")
    assert set(trials.status) == {"completed"}, trials[["trial_id", "status", "error"]]
    repro = trials[trials.phase == "reproduction"]
    assert repro.groupby("compare_value").size().to_dict() == {m: 3 for m in METHODS}
    for method in METHODS:  # every method's row in the CLI's closing table
        assert any(ln.split("│")[1].strip() == method for ln in sweep.stdout.splitlines() if ln.count("│") > 3)

    report = tmp_path / "results" / "demo" / "report"
    assert (report / "report.html").is_file()  # what `xdg-open` opens
    md = (report / "report.md").read_text()
    assert "Incomplete sweep" not in md and "Missing from the comparison" not in md
