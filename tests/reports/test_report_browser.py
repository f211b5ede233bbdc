"""report.html in a real headless chromium: tables and plots render, no console errors,
no network requests, the sorter sorts, the screenshot is not blank.

Needs Debian's ``chromium`` (the CI script installs it); without it this test fails with a
message saying how to install it, rather than skipping.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from fixtures.report_browser import HeadlessChromium, find_chromium
from fixtures.report_tables import write_experiment
from harness.reports import render_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVIL = "<script>window.__xss=1</script>"
SORT_BY = """(function (table, column) {
  table.tHead.rows[0].cells[column].click();
  return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[0].textContent; });
})(document.querySelector("table.summary-table"), %d)"""


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.fail("headless chromium not found: install it with `apt-get install -y chromium` "
                    "(the CI script does this) to run the browser tests")
    with HeadlessChromium(binary, width=1200, height=2000) as b:
        yield b


def test_report_html_renders_in_chromium(tmp_path, browser):
    # A memory-kind comparison with a hostile method name (3 completed search trials per
    # method: no search plots), a batch-size axis (8: all of them) and a memory-size axis
    # (4: no fitted ones): every kind of table and figure appears.
    compare = write_experiment(tmp_path, "sop-compare",
                               {"xbm": [0.70, 0.72, 0.74], EVIL: [0.60, 0.61, 0.62], "axbn": [0.80, 0.81, 0.82]},
                               drop_reproductions=1, failed_search=1)
    batch = write_experiment(tmp_path, "sop-batch", {"xbn": [0.78, 0.79, 0.80]}, batch_sizes=[32, 64, 128],
                             search_trials=8)
    memory = write_experiment(tmp_path, "sop-memory", {"xbn": [0.78, 0.79, 0.80]},
                              memory_fractions=[0.25, 0.5, 1.0])
    html = render_report([compare, batch, memory], tmp_path / "out", formats=("html",))["html"]

    browser.send("Network.enable", session=True)
    browser.open(html)

    assert browser.console_errors() == []
    assert browser.evaluate("typeof window.__xss") == "undefined"
    requests = [ev["params"]["request"]["url"] for ev in browser.events
                if ev.get("method") == "Network.requestWillBeSent"]
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests

    n_tables = browser.evaluate("document.querySelectorAll('table').length")
    n_summary = browser.evaluate("document.querySelectorAll('table.summary-table').length")
    assert n_summary == 7  # the method comparison + batch sizes 32, 64, 128 + 3 memory sizes
    assert n_tables >= 15
    assert EVIL in browser.evaluate("document.querySelector('table.summary-table').textContent")
    images = browser.evaluate(
        "Array.prototype.map.call(document.images, function (i) { return [i.complete, i.naturalWidth]; })")
    # val Recall@1 and drift per epoch, Recall@1 against batch size and against memory
    # size; the optimisation histories of the two axes; then Optuna's search plots:
    # parallel coordinates, slice, contour and importances for the 3 batch sizes,
    # parallel coordinates and slice for the 3 memory sizes.
    assert len(images) == 4 + 2 + 3 * 4 + 3 * 2
    assert all(done and width > 100 for done, width in images), images
    search = browser.evaluate("Array.prototype.map.call(document.querySelectorAll('figure[id^=\"fig-search-\"]'),"
                              " function (f) { return f.id; })")
    for kind in ("parallel", "slice", "contour", "importance"):
        for value in ("32", "64", "128"):
            assert f"fig-search-{kind}-sop-batch-{value}" in search
        for value in ("0-25", "0-5", "1-0"):  # slugged
            assert (f"fig-search-{kind}-sop-memory-{value}" in search) == (kind in ("parallel", "slice"))
    assert len(search) == 3 * 4 + 3 * 2
    omitted = browser.evaluate("Array.prototype.map.call(document.querySelectorAll('ul.search-omitted li'),"
                               " function (li) { return li.textContent; })")
    assert len(omitted) == 3 + 3  # the 3 methods: no plots; the 3 memory sizes: no fitted ones
    assert f"{EVIL}: 3 completed search trials, fewer than the 4 a search plot needs; search plots omitted" in omitted
    # Small figures side by side: one row of three, left to right; the wide slice plot below.
    boxes = browser.evaluate("['parallel', 'contour', 'importance', 'slice'].map(function (k) {"
                             " var r = document.getElementById('fig-search-' + k + '-sop-batch-32')"
                             ".getBoundingClientRect(); return [r.top, r.left, r.width]; })")
    (top, *_), row = boxes[0], boxes[:3]
    assert [b[0] for b in row] == [top] * 3 and row[0][1] < row[1][1] < row[2][1], boxes
    assert all(b[2] < 1200 / 2 for b in row) and boxes[3][0] > top and boxes[3][2] > 2 * row[0][2], boxes

    # The sorter: Recall@1 (column 1) ascending, then descending; rows start in paper order.
    first = browser.evaluate("Array.prototype.map.call(document.querySelector('table.summary-table')"
                             ".tBodies[0].rows, function (r) { return r.cells[0].textContent; })")
    assert first == ["xbm", "axbn", EVIL]  # paper order; unknown methods last
    assert browser.evaluate(SORT_BY % 1) == [EVIL, "xbm", "axbn"]
    assert browser.evaluate(SORT_BY % 1) == ["axbn", "xbm", EVIL]
    assert browser.evaluate(SORT_BY % 0) == [EVIL, "axbn", "xbm"]  # text column: "<" sorts before "a"
    assert browser.console_errors() == []

    shot = browser.screenshot(tmp_path / "report.png")
    keep = Path(__file__).parents[2] / ".pytest_cache" / "report_screenshot.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)  # for a look by eye after the run
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 2000)
    colours = img.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, tables and plots, not a flat page
    non_white = sum(img.histogram()[:200]) / (img.size[0] * img.size[1])
    assert non_white > 0.02, f"screenshot nearly blank ({non_white:.1%} dark pixels)"
