"""Tests of utils.evaluation.plots: every evaluation figure is drawn and saved (tests/evalrun.py run)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from tests.evalrun import all_figures
from utils.evaluation import evaluate as ev
from utils.evaluation import plots
from utils.figures import save_figure


def test_figures_are_saved(evaluation: ev.Evaluation, eval_run: Path, tmp_path: Path):
    for index, fig in enumerate(all_figures(evaluation, eval_run)):
        written = save_figure(fig, f"fig04_test{index}", tmp_path, pdf=False)
        plt.close(fig)
        assert written[0].stat().st_size > 1000


def test_overlay_cases_are_best_median_and_worst(evaluation: ev.Evaluation):
    cases = plots.pick_overlay_cases(evaluation.segmentation)
    assert list(cases["case"]) == ["best", "median", "worst"]
    assert cases["dice"].is_monotonic_decreasing
