"""Tests of utils.evaluation.report: README's results table from metrics.json, and its command
line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.config import ROOT
from utils.evaluation import evaluate as ev
from utils.evaluation import report

STALE = f"intro\n{report.README_MARKERS[0]}\nold\n{report.README_MARKERS[1]}\nrest\n"


def test_readme_results_table_labels_paper_and_phantom(evaluation: ev.Evaluation):
    table = report.readme_results_table(evaluation.metrics)
    assert "0.95 (0.91–0.98)" in table and "0.92 (0.87–0.96)" in table
    assert "0.97 (0.93–0.99)" in table
    assert "phantom (synthetic), demo profile" in table
    assert "3 seeds: mean" in table
    replaced = report.replace_readme_section(STALE, table)
    assert report.readme_section(replaced) == table and replaced.endswith("rest\n")


def test_readme_results_table_matches_metrics_json():
    metrics_path = ROOT / "results" / "metrics.json"
    if not metrics_path.exists():
        pytest.skip("results/metrics.json does not exist yet: run notebooks/04_evaluation.ipynb "
                    "on the demo profile (make reproduce)")
    section = report.readme_section((ROOT / "README.md").read_text(encoding="utf-8"))
    assert section is not None, "README.md lacks the <!-- results:start/end --> markers"
    assert section == report.readme_results_table(json.loads(metrics_path.read_text())), (
        "README.md's results table is out of date: run make readme")


def test_figure_table_lists_every_fig04_file():
    table = report.figure_table()
    for stem in report.FIGURES:
        assert f"`figures/{stem}.png`" in table
    assert all(line.count("|") == 5 for line in table.strip().splitlines())


# ----------------------------------------------------------------------------- command line
@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty results folder that every profile's paths point at."""
    folder = tmp_path / "results"
    folder.mkdir()
    monkeypatch.setattr(report.config, "get_paths",
                        lambda profile=None: SimpleNamespace(results_dir=folder))
    return folder


def _write(results: Path, metrics: dict, **meta) -> None:
    metrics = {**metrics, "meta": {**metrics["meta"], **meta}}
    (results / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def test_report_rewrites_the_demo_table_and_check_finds_it_stale(
        evaluation: ev.Evaluation, results: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(STALE, encoding="utf-8")
    _write(results, evaluation.metrics, profile="demo", data=report.PHANTOM_DATA)
    assert report.report("demo", readme, check=True) == 1
    assert readme.read_text(encoding="utf-8") == STALE
    assert report.report("demo", readme) == 0
    table = report.readme_results_table(json.loads((results / "metrics.json").read_text()))
    assert report.readme_section(readme.read_text(encoding="utf-8")) == table
    assert report.report("demo", readme, check=True) == 0


@pytest.mark.parametrize("meta", [{"profile": "smoke"}, {"data": "user cohort"}])
def test_report_leaves_readme_alone_for_other_runs(evaluation: ev.Evaluation, results: Path,
                                                   tmp_path: Path, meta: dict,
                                                   capsys: pytest.CaptureFixture):
    readme = tmp_path / "README.md"
    readme.write_text(STALE, encoding="utf-8")
    _write(results, evaluation.metrics, **meta)
    assert report.main(["--profile", "smoke"]) == 0 and report.report("demo", readme) == 0
    assert readme.read_text(encoding="utf-8") == STALE
    assert "README.md not changed" in capsys.readouterr().out


def test_missing_metrics_fails_only_for_the_demo_profile(results: Path):
    assert report.report("smoke") == 0
    assert report.report("demo") == 1


def test_skip_reason_names_the_run():
    assert report.readme_skip_reason({"meta": {"profile": "demo",
                                               "data": report.PHANTOM_DATA}}) == ""
    assert "'paper'" in report.readme_skip_reason({"meta": {"profile": "paper",
                                                            "data": report.PHANTOM_DATA}})
