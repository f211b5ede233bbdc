"""Comparison reports: numbers, winner, significance, progress, errors, escaping, CLI.

The tables come from tests/fixtures/report_tables.py, with known numbers: test Recall@1 in %
over seeds 0, 1, 2 is xbm 70/72/74, xbn 78/79/80, axbn 80/81/82.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from fixtures.report_tables import write_experiment
from harness.errors import ResultsError
from harness.reports import render_report
from harness.reports import plots
from harness.reports.load import load_experiment
from harness.reports.completeness import progress
from harness.reports.search_analysis import best_trials, param_importance
from harness.reports.statistics import summarize, welch
from harness.reports.tables import best_reproductions, reproductions


def table_row(md: str, label: str) -> list[str]:
    """The cells of the first summary-table row of ``label``."""
    for line in md.splitlines():
        if line.startswith(f"| {label} |"):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"no table row for {label}")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("results")
    exp = write_experiment(root, "sop-compare")
    return exp, render_report([exp], root / "out")


def test_markdown_has_means_stds_and_winner(full_report):
    _, written = full_report
    md = written["md"].read_text()
    assert table_row(md, "axbn")[1:] == ["**81.00 ± 1.00**", "**91.00 ± 1.00**", "**27.00 ± 0.33**",
                                         "**40.50 ± 0.50**"]
    assert table_row(md, "xbn")[1] == "<u>79.00 ± 1.00</u>"  # second best
    assert table_row(md, "xbm")[1] == "72.00 ± 2.00"
    # Rows in the paper's order: XBM, XBN, AXBN.
    assert md.index("| xbm |") < md.index("| xbn |") < md.index("| axbn |")
    assert "- Best Recall@1, Recall@10, MAP@R, R-Precision: **axbn**" in md
    # 95% t interval of 81 ± 1 over 3 seeds: 81 ± t(0.975, 2) / sqrt(3) = 81 ± 2.484.
    assert "| axbn | Recall@1 | 3 | 81.00 | 1.00 | 78.52 to 83.48 |" in md


def test_significance_sentences(full_report):
    _, written = full_report
    md = written["md"].read_text()
    # scipy.stats.ttest_ind([80,81,82], [70,72,74], equal_var=False).pvalue = 0.00646
    assert ("axbn vs xbm: +9.00 Recall@1, p = 0.006, significant at 5% "
            "(Welch's t-test, 3 vs 3 seeds)") in md
    # ... and against [78,79,80]: 0.0705, not significant.
    assert "axbn vs xbn: +2.00 Recall@1, p = 0.070, not significant at 5%" in md


def test_welch_not_testable_cases():
    one = welch("a", [0.8, 0.81], "b", [0.7], "Recall@1")
    assert one.p is None and "1 seed for b" in one.sentence and "not testable" in one.sentence
    flat = welch("a", [0.8, 0.8], "b", [0.7, 0.7], "Recall@1")
    assert flat.p is None and "zero variance" in flat.sentence
    # One side constant, the other not: Welch's test is still defined.
    assert welch("a", [0.8, 0.8], "b", [0.7, 0.72], "Recall@1").p is not None


def test_summarize_single_and_constant_seeds():
    s1 = summarize([0.5])
    assert (s1.n, s1.mean, s1.std, s1.ci_low) == (1, 0.5, None, None)
    s2 = summarize([2.0, 2.0, 2.0])
    assert (s2.std, s2.ci_low, s2.ci_high) == (0.0, 2.0, 2.0)


def test_best_hyperparameters_and_importance(full_report, tmp_path):
    exp_dir, written = full_report
    exp = load_experiment(exp_dir)
    best = {b.compare_value: b for b in best_trials(exp)}
    # The fixture's search trial k=2 (of 0..3) is best; its learning rate is 1e-5 * 10**(4/3).
    assert best["axbn"].value == pytest.approx(0.81)
    assert best["axbn"].params["optim.lr"] == pytest.approx(1e-5 * 10 ** (4 / 3))
    # fANOVA on 4 trials would be noise: the table says so instead
    assert param_importance(exp, "axbn").values is None
    md = written["md"].read_text()
    assert "Importance omitted for xbm, xbn, axbn: needs at least 8 completed search trials, has 4." in md
    imp = param_importance(load_experiment(write_experiment(tmp_path, "eight", {"axbn": [0.8, 0.81]}, seeds=[0, 1],
                                                            search_trials=8)), "axbn")
    assert imp.values is not None and set(imp.values) == {"optim.lr", "xml.weight", "train.samples_per_class"}
    assert sum(imp.values.values()) == pytest.approx(1.0)


def test_importance_omitted_with_one_trial(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, "tiny", {"xbn": [0.5, 0.6]}, search_trials=1))
    imp = param_importance(exp, "xbn")
    assert imp.values is None and "at least 8 completed search trials, has 1" in imp.reason
    md = render_report([exp.path], tmp_path / "out", formats=("md",))["md"].read_text()
    assert "Importance omitted for xbn: needs at least 8 completed search trials, has 1." in md


def test_environment_section(full_report):
    _, written = full_report
    md = written["md"].read_text()
    # 21 rows (3 methods × (4 search + 3 reproductions)) × 600 s × 1 GPU = 3.5 GPU-hours.
    assert "| GPU-hours | 3.50 |" in md
    assert "| First start | 2025-01-01 00:00:00 UTC |" in md
    assert "| Last finish | 2025-01-01 03:30:00 UTC |" in md
    assert "| torch | 2.14.1 |" in md and "| Git commits | b88e09e |" in md


def test_half_finished_sweep_lists_missing_trials(tmp_path):
    exp = write_experiment(tmp_path, "half", drop_reproductions=2, failed_search=1)
    md = render_report([exp], tmp_path / "out", formats=("md",))["md"].read_text()
    assert "**Incomplete sweep.**" in md
    assert "Completed reproductions: 7 of 9 planned" in md
    assert "reproduction memory.kind=axbn, seed 1; reproduction memory.kind=axbn, seed 2" in md
    assert "| half-s000 | search | failed | xbm | 0 |" in md
    # axbn now has a single seed: its comparisons are stated as not testable.
    assert table_row(md, "axbn")[1] == "**80.00 (1 seed)**"
    assert "axbn vs xbn: +1.00 Recall@1, not testable (1 seed for axbn;" in md


def test_compare_axis_batch_size_gives_figure_one(tmp_path):
    a = write_experiment(tmp_path, "bs-axbn", {"axbn": [0.80, 0.81, 0.82]}, batch_sizes=[32, 64, 128])
    b = write_experiment(tmp_path, "bs-xbm", {"xbm": [0.70, 0.72, 0.74]}, batch_sizes=[32, 64, 128])
    written = render_report([a, b], tmp_path / "out", formats=("md",))
    md = written["md"].read_text()
    assert "### train.batch\\_size=32" in md and "### train.batch\\_size=128" in md
    # Sections in numeric order of the batch size.
    assert md.index("batch\\_size=32") < md.index("batch\\_size=64") < md.index("batch\\_size=128")
    figures = re.findall(r"\]\(figures/([^)]+\.svg)\)", md)
    assert "recall-batch-size.svg" in figures
    assert "recall-memory-size.svg" not in figures  # the memory size does not vary
    for name in figures:
        svg = (tmp_path / "out" / "figures" / name).read_bytes()
        assert svg.startswith(b"<?xml") and b"<svg" in svg


def test_html_escapes_names_from_results(tmp_path):
    evil = "<script>window.__xss=1</script>"
    exp = write_experiment(tmp_path, "sop-" + evil.replace("/", "_"), {evil: [0.7, 0.71], "xbn": [0.8, 0.82]},
                           seeds=[0, 1])
    written = render_report([exp], tmp_path / "out")
    html = written["html"].read_text()
    assert evil not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert html.count("<script") == 1  # only the inline table sorter
    md = written["md"].read_text()
    assert evil not in md and "&lt;script&gt;" in md


def test_html_is_self_contained(full_report):
    _, written = full_report
    html = written["html"].read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no network URL
    # history, val curves, drift, and for each of the 3 methods (4 search trials each) the
    # parallel coordinates and slice plots
    assert html.count('src="data:image/svg+xml;base64,') == 3 + 3 * 2
    assert html.count('class="sortable') >= 3  # the summary, its seeds, the best hyperparameters


@pytest.mark.parametrize("case", ["missing_dir", "zero_bytes", "no_rows", "foreign", "schema_v2", "no_trials"])
def test_bad_results_are_one_line_errors(tmp_path, case, harness_cli):
    d = tmp_path / "exp"
    if case != "missing_dir":
        d.mkdir()
    cols = {"schema_version": [1], "experiment": ["e"], "trial_id": ["t"], "phase": ["search"],
            "method": ["xbn"], "status": ["completed"]}
    if case == "zero_bytes":
        (d / "trials.parquet").write_bytes(b"")
    elif case == "no_rows":
        pd.DataFrame({k: pd.Series([], dtype=object) for k in cols}).to_parquet(d / "trials.parquet")
    elif case == "foreign":
        pd.DataFrame({"a": [1], "b": [2]}).to_parquet(d / "trials.parquet")
    elif case == "schema_v2":
        pd.DataFrame({**cols, "schema_version": [2]}).to_parquet(d / "trials.parquet")
    expected = {"missing_dir": "experiment directory not found", "zero_bytes": "not a readable Parquet file",
                "no_rows": "has no rows", "foreign": "missing columns: schema_version",
                "schema_v2": "schema_version [2] is not supported", "no_trials": "no trials.parquet"}[case]
    with pytest.raises(ResultsError, match=re.escape(expected)):
        render_report([d], tmp_path / "out")
    code, out, err = harness_cli(["report", str(d), "--out", str(tmp_path / "out")])
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1 and out == ""


def test_cli_prints_written_paths_and_default_out(tmp_path, monkeypatch, harness_cli):
    exp = write_experiment(tmp_path, "one", {"xbm": [0.5, 0.6], "xbn": [0.6, 0.7]}, seeds=[0, 1])
    code, out, err = harness_cli(["report", str(exp)])
    assert code == 0, err
    assert out.split() == [str((exp / "report" / "report.md").resolve()),
                           str((exp / "report" / "report.html").resolve())]
    other = write_experiment(tmp_path, "two", {"axbn": [0.7, 0.8]}, seeds=[0, 1])
    monkeypatch.chdir(tmp_path)
    code, out, err = harness_cli(["report", str(exp), str(other), "--format", "html"])
    assert code == 0, err
    assert out.split() == [str((tmp_path / "report" / "report.html").resolve())]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "one" in html and "two" in html
    code, _, err = harness_cli(["report", str(exp), "--format", "pdf"])
    assert code == 2 and "unknown report format 'pdf'" in err


def test_space_json_contract_fields_are_used(tmp_path):
    exp = write_experiment(tmp_path, "planned", {"xbn": [0.5, 0.6, 0.7], "axbn": [0.6, 0.7, 0.8]})
    space = json.loads((exp / "space.json").read_text())
    space.update(trials_planned=10, trials_per_value={"xbn": 6, "axbn": 4}, reproduction_seeds=[0, 1, 2, 3],
                 reproductions_planned=8)
    (exp / "space.json").write_text(json.dumps(space))
    p = progress(load_experiment(exp))
    assert (p.search_done, p.search_planned, p.repro_done, p.repro_planned) == (8, 10, 6, 8)
    assert p.missing == ["2 of 6 search trials for memory.kind=xbn", "reproduction memory.kind=xbn, seed 3",
                         "reproduction memory.kind=axbn, seed 3"]
    # Without trials_per_value the total is shared equally between the compare values.
    del space["trials_per_value"]
    space["trials_planned"] = 12
    (exp / "space.json").write_text(json.dumps(space))
    p = progress(load_experiment(exp))
    assert p.missing[:2] == ["2 of 6 search trials for memory.kind=xbn", "2 of 6 search trials for memory.kind=axbn"]


def test_sampled_params_column_wins_over_config_columns(tmp_path):
    # The sweep also writes a "params" JSON column: only the values the sampler drew.
    exp_dir = write_experiment(tmp_path, "sampled", {"xbn": [0.5, 0.6]}, seeds=[0, 1], search_trials=8)
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    trials["params"] = [json.dumps({"optim.lr": lr}) for lr in trials["config.optim.lr"]]
    trials.to_parquet(exp_dir / "trials.parquet")
    exp = load_experiment(exp_dir)
    (best,) = best_trials(exp)
    assert set(best.params) == {"optim.lr"}
    imp = param_importance(exp, "xbn")
    assert imp.values == {"optim.lr": pytest.approx(1.0)}


def test_reproduce_all_grid_summary_uses_best_and_figure_one_slices_at_base(tmp_path):
    """A batch x memory grid reproduced at every point (search.reproduce: all): the
    summary compares only each method's best configuration, and Figure 1's curves are
    the slices at the base config's value of the other axis."""
    exp = write_experiment(tmp_path, "grid", {"xbm": [0.70, 0.72, 0.74], "axbn": [0.80, 0.81, 0.82]})
    trials = pd.read_parquet(exp / "trials.parquet")
    best = trials[trials.phase == "reproduction"].assign(best_config=True)
    extra = []
    for _, row in best.iterrows():
        for bs, frac in ((32, 0.5), (128, 0.5), (64, 1.0), (32, 1.0)):
            # other grid points score far lower: they must stay out of the summary, and
            # (32, 1.0), off both slices, must stay out of the curves
            r = row.copy()
            r["trial_id"] = f"{row.trial_id}-{bs}-{frac}"
            r["best_config"] = False
            r["config.train.batch_size"], r["config.memory.fraction"] = bs, frac
            r["test.recall@1"] = 0.10 if (bs, frac) == (32, 1.0) else row["test.recall@1"] - 0.2
            extra.append(r)
    search = trials[trials.phase == "search"].assign(best_config=None)
    pd.concat([search, best, pd.DataFrame(extra)]).to_parquet(exp / "trials.parquet", index=False)
    space = json.loads((exp / "space.json").read_text())
    space.update(reproduce="all", base_values={"train.batch_size": 64, "memory.fraction": 0.5},
                 reproductions_planned=len(best) + len(extra))
    (exp / "space.json").write_text(json.dumps(space))
    written = render_report([exp], tmp_path / "out", formats=("md",))
    md = written["md"].read_text()
    assert "| axbn | **81.00 ± 1.00**" in md and "| xbm | 72.00 ± 2.00" in md
    assert "recall-batch-size.svg" in md and "recall-memory-size.svg" in md
    assert "At memory.fraction = 0.5 (the base config)" in md
    assert "At train.batch\\_size = 64 (the base config)" in md  # Markdown-escaped
    rows = reproductions([load_experiment(exp)])
    fixed = {"config.train.batch_size": 64, "config.memory.fraction": 0.5}
    by_batch, _ = plots.recall_points(rows, "config.train.batch_size", 100.0, fixed)
    by_memory, _ = plots.recall_points(rows, "config.memory.fraction", 100.0, fixed)
    assert sorted(by_batch["config.train.batch_size"].unique()) == [32, 64, 128]
    assert sorted(by_memory["config.memory.fraction"].unique()) == [0.5, 1.0]
    # the off-slice point (32, 1.0) is in neither curve
    assert (by_batch["test.recall@1"] > 20).all() and (by_memory["test.recall@1"] > 20).all()
    rows = reproductions([load_experiment(exp)])
    assert len(best_reproductions(rows)) == len(best)


def _with_reference(exp_dir: Path, values: dict) -> Path:
    space = json.loads((exp_dir / "space.json").read_text())
    space["reference"] = {"source": "AXBN paper, Table 2", "note": "batch 64, memory 50%", "values": values}
    (exp_dir / "space.json").write_text(json.dumps(space))
    return exp_dir


def test_reference_numbers_beside_ours(tmp_path):
    # Ours (fixture): xbm 72 ± 2, xbn 79 ± 1, axbn 81 ± 1 over 3 seeds; 95% t interval
    # half-widths 4.97 (xbm) and 2.48 (xbn, axbn).
    exp = _with_reference(write_experiment(tmp_path, "sop-axbn"), {
        "test.recall@1": {"none": {"mean": 75.94, "std": 0.03}, "xbm": {"mean": 76.80, "std": 2.65},
                          "xbn": {"mean": 85.00, "std": 0.17}, "axbn": {"mean": 80.73, "std": 0.30}},
        "test.recall@10": {"axbn": {"mean": 91.98}},
    })
    written = render_report([exp], tmp_path / "out")
    md = written["md"].read_text()
    assert "## Reference numbers" in md and "Source: AXBN paper, Table 2. batch 64, memory 50%" in md
    assert "| axbn | Recall@1 | 80.73 ± 0.30 | 81.00 ± 1.00 | 78.52 to 83.48 | +0.27 | yes |" in md
    assert "| xbm | Recall@1 | 76.80 ± 2.65 | 72.00 ± 2.00 | 67.03 to 76.97 | -4.80 | yes |" in md
    assert "| xbn | Recall@1 | 85.00 ± 0.17 | 79.00 ± 1.00 | 76.52 to 81.48 | -6.00 | no |" in md
    assert "| none | Recall@1 | 75.94 ± 0.03 | not run | – | – | – |" in md
    assert "| axbn | Recall@10 | 91.98 | 91.00 ± 1.00 | 88.52 to 93.48 | -0.98 | yes |" in md
    assert "inside our interval in 3 of 4 comparable cells" in md
    html = written["html"].read_text()
    assert 'id="references"' in html and "80.73 ± 0.30" in html and "not run" in html


def test_no_reference_section_without_references(full_report):
    _, written = full_report
    assert "Reference numbers" not in written["md"].read_text()
    assert 'id="references"' not in written["html"].read_text()


def test_shipped_paper_experiments_carry_table_references():
    from harness.sweep.experiment import load_experiment
    from harness.sweep.space import space_description

    sop = load_experiment("sop-axbn").reference
    assert sop is not None and "Table 2" in sop.source
    assert sop.values["test.recall@1"]["axbn"].mean == 80.73 and sop.values["test.recall@1"]["axbn"].std == 0.30
    assert sop.values["test.recall@10"]["xbm"].mean == 89.34
    inshop = load_experiment("inshop-axbn").reference
    assert inshop.values["test.recall@1"]["xbn"].mean == 91.49
    df2 = load_experiment("deepfashion2-axbn").reference
    assert "Table 1" in df2.source and df2.values["test.recall@1"]["none"].mean == 36.45
    assert space_description(load_experiment("sop-axbn"))["reference"]["values"]["test.recall@1"]["none"] == {
        "mean": 75.94, "std": 0.03}


def test_report_files_are_written_atomically_with_the_usual_permissions(tmp_path):
    """harness.utils.atomic's temp file + fsync + rename, not a second copy of it: no temp file
    left behind, and the files readable like any file the user writes (not mkstemp's 0600)."""
    import os
    import stat

    from fixtures.report_tables import write_experiment
    from harness.reports.render import render_report

    exp = write_experiment(tmp_path / "results")
    written = render_report([exp], tmp_path / "out", formats=("md", "html"))
    umask = os.umask(0)
    os.umask(umask)
    for path in written.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*.tmp"))
