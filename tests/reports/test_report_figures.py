"""What the report's figures show and how they sit: search plots only where the completed
search trials carry information (else one line per method says why), one colour per
method in every figure, small figures side by side (an HTML grid, one Markdown line)."""

from __future__ import annotations

from html.parser import HTMLParser

import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import Collection
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fixtures.report_tables import write_experiment
from harness.reports import render_report
from harness.reports.colours import METHOD_COLOURS, method_colours

KINDS = ("parallel", "slice", "contour", "importance")
# Compared on memory.kind (values axbn, xbm; XML on for xbm), in the order the sweep lists
# them, which is not the papers' (xbm before axbn): a colour taken from either order alone,
# or from the compared value instead of the method, differs between the figures.
METHODS = {"axbn": [0.80, 0.81], "xbm+xml": [0.70, 0.72]}
VALUES = ("axbn", "xbm")


class FigureParents(HTMLParser):
    """Each <figure id>'s enclosing <div> classes, and each figure's own class."""

    def __init__(self):
        super().__init__()
        self.divs: list[str] = []
        self.parents: dict[str, list[str]] = {}
        self.classes: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self.divs.append(attrs.get("class") or "")
        elif tag == "figure" and attrs.get("id"):
            self.parents[attrs["id"]] = list(self.divs)
            self.classes[attrs["id"]] = attrs.get("class") or ""

    def handle_endtag(self, tag):
        if tag == "div":
            self.divs.pop()


def legend_colours(fig: Figure) -> dict[str, str]:
    """Legend label -> the colour its series is drawn in, over all axes of a figure."""
    out = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if isinstance(handle, ErrorbarContainer):
                handle = handle.lines[0]
            if isinstance(handle, Line2D):
                out[label] = to_hex(handle.get_color())
            elif isinstance(handle, Collection):
                out[label] = to_hex(handle.get_facecolor()[0])
    return out


@pytest.fixture(scope="module")
def enough(tmp_path_factory):
    """8 search trials per method, rendered with every closed figure's legend colours kept."""
    root = tmp_path_factory.mktemp("enough")
    exp = write_experiment(root, "eight", METHODS, seeds=[0, 1], search_trials=8)
    drawn: list[dict[str, str]] = []
    close = plt.close

    def keep_colours(fig=None):
        if isinstance(fig, Figure):
            drawn.append(legend_colours(fig))
        close(fig)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "close", keep_colours)
        written = render_report([exp], root / "out")
    return root / "out", written["md"].read_text(), written["html"].read_text(), drawn


def test_two_search_trials_per_method_draw_no_search_plot_and_say_why(tmp_path):
    exp = write_experiment(tmp_path, "two", METHODS, seeds=[0, 1], search_trials=2)
    written = render_report([exp], tmp_path / "out")
    md, html = written["md"].read_text(), written["html"].read_text()
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert figures == ["drift-epoch.svg", "val-recall-epoch.svg"]  # no history, no search plot
    assert "figures/search-" not in md and "figures/history-" not in md
    assert 'id="fig-search-' not in html and 'id="fig-history-' not in html
    for text in (md, html):
        for value in VALUES:
            line = f"{value}: 2 completed search trials, fewer than the 4 a search plot needs; search plots omitted"
            assert text.count(line) == 1
        assert text.count("search plots omitted") == len(VALUES)  # one line per method
        assert "Importance omitted for axbn, xbm: needs at least 8 completed search trials, has 2." in text
        assert "Hyperparameter importance (fANOVA" not in text


def test_enough_search_trials_draw_every_search_plot_and_the_importances(enough):
    out, md, html, _ = enough
    for value in VALUES:
        for kind in KINDS:
            name = f"search-{kind}-eight-{value}"
            assert (out / "figures" / f"{name}.svg").is_file()
            assert f"](figures/{name}.svg)" in md and f'id="fig-{name}"' in html
    assert "history-eight.svg" in md and 'id="fig-history-eight"' in html
    for text in (md, html):
        assert "Hyperparameter importance (fANOVA" in text
        assert "omitted" not in text


def test_small_figures_sit_side_by_side(enough):
    _, md, html, _ = enough
    parser = FigureParents()
    parser.feed(html)
    figures = parser.parents
    grids = {name: divs for name, divs in figures.items() if name.startswith(("fig-search-", "fig-val-", "fig-drift-"))}
    assert len(grids) == 2 * len(KINDS) + 2
    for name, divs in grids.items():
        assert divs and divs[-1] == "figure-grid", name
    # the slice plot of three parameters is wide: a row of its own; the others share one
    assert parser.classes["fig-search-slice-eight-xbm"] == "wide"
    assert parser.classes["fig-search-contour-eight-xbm"] == parser.classes["fig-val-recall-epoch"] == ""
    # Markdown: each method's search plots on one line, the comparison figures on another
    for value in VALUES:
        (line,) = [ln for ln in md.splitlines() if f"search-parallel-eight-{value}.svg" in ln]
        assert all(f"figures/search-{kind}-eight-{value}.svg" in line for kind in KINDS)
    (line,) = [ln for ln in md.splitlines() if "figures/val-recall-epoch.svg" in ln]
    assert "figures/drift-epoch.svg" in line


def test_each_method_has_one_colour_in_every_figure(enough):
    *_, drawn = enough
    seen: dict[str, set[str]] = {}
    for legend in drawn:
        for label, colour in legend.items():
            if label in METHODS:
                seen.setdefault(label, set()).add(colour)
    # history, validation Recall@1 and drift against epoch each draw both methods, by the
    # same names
    assert sum(set(METHODS) <= set(legend) for legend in drawn) == 3
    assert seen == {m: {METHOD_COLOURS[m]} for m in METHODS}
    assert seen["axbn"] != seen["xbm+xml"]


def test_method_colours_are_fixed_for_known_methods_and_distinct_for_others():
    alone = method_colours(["axbn"])
    many = method_colours(["none", "xbm", "xbn", "axbn", "none+xml", "128", "32", "64"])
    assert alone["axbn"] == many["axbn"] == METHOD_COLOURS["axbn"]  # the same in every report
    assert len(set(many.values())) == len(many)  # distinct within a report
    assert method_colours(["64", "32", "128"]) == {k: many[k] for k in ("32", "64", "128")}
    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS) == 10  # 5 memories, with and without XML
