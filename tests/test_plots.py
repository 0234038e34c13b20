"""Tests of utils.evaluation.plots: what the figures show, read back from the drawn artists
(tests/evalrun.py run)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from tests.evalrun import all_figures
from utils.evaluation import evaluate as ev
from utils.evaluation import plots
from utils.figures import save_figure
from utils.measures import largest_slice
from utils.preprocessing.cache import load_cached


def test_figures_are_saved_and_show_something(evaluation: ev.Evaluation, eval_run: Path,
                                              tmp_path: Path):
    for index, fig in enumerate(all_figures(evaluation, eval_run)):
        written = save_figure(fig, f"fig04_test{index}", tmp_path, pdf=False)
        plt.close(fig)
        pixels = mpimg.imread(written[0])
        assert pixels.ndim == 3 and pixels[..., :3].std() > 0.01, written[0].name  # not blank


def test_roc_figure_draws_sklearns_roc_points_and_the_auc_in_its_legend(
        evaluation: ev.Evaluation):
    cohort = "internal_validation"
    fig = plots.plot_roc_curves(evaluation.scores, evaluation.auc, models=("full",),
                                cohorts=[cohort])
    ax = fig.axes[0]
    rows = evaluation.scores[(evaluation.scores["model"] == "full")
                             & (evaluation.scores["cohort"] == cohort)]
    y, s = rows["pcr"].to_numpy(), rows["score"].to_numpy()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    curve = ax.get_lines()[0]
    np.testing.assert_allclose(curve.get_xdata(), fpr)
    np.testing.assert_allclose(curve.get_ydata(), tpr)
    assert ax.get_xlabel() == "1 − specificity" and ax.get_ylabel() == "sensitivity"
    assert ax.get_title() == "internal validation"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[0].startswith(f"3D RP-Net (full): {roc_auc_score(y, s):.2f} (")
    plt.close(fig)


def test_roc_figure_marks_the_training_threshold_at_its_validation_rates(
        evaluation: ev.Evaluation):
    cohort = "external_validation"
    fig = plots.plot_roc_curves(evaluation.scores, evaluation.auc, models=("full",),
                                cohorts=[cohort], operating=evaluation.performance)
    marker = next(line for line in fig.axes[0].get_lines()
                  if line.get_label().startswith("training threshold"))
    chosen = evaluation.thresholds.set_index(["model", "method"]).loc[
        ("full", "closest_topleft"), "threshold"]
    rows = evaluation.scores[(evaluation.scores["model"] == "full")
                             & (evaluation.scores["cohort"] == cohort)]
    called, y = rows["score"].to_numpy() >= chosen, rows["pcr"].to_numpy() == 1
    assert marker.get_xdata()[0] == pytest.approx((called & ~y).sum() / (~y).sum())
    assert marker.get_ydata()[0] == pytest.approx((called & y).sum() / y.sum())
    plt.close(fig)


def test_overlays_show_the_largest_tumour_slice_with_both_contours(evaluation: ev.Evaluation,
                                                                   eval_run: Path):
    cases = plots.pick_overlay_cases(evaluation.segmentation)
    fig = plots.plot_overlays(cases, eval_run / "cache", eval_run / "masks",
                              evaluation.segmentation)
    ax = fig.axes[0]  # the best case, pre-treatment
    cached = load_cached(eval_run / "cache" / f"{cases.iloc[0]['patient_id']}.npz")
    z = largest_slice(cached["mask_pre"])
    np.testing.assert_array_equal(ax.images[0].get_array(), cached["image_pre"][z, ..., 0])
    colours = {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in ax.collections}
    assert colours == {(0.0, 1.0, 0.0), (1.0, 0.0, 1.0)}  # lime truth, magenta prediction
    assert ax.get_title().startswith(f"best: {cases.iloc[0]['patient_id']} pre, Dice ")
    plt.close(fig)


def test_overlay_cases_are_best_median_and_worst(evaluation: ev.Evaluation):
    cases = plots.pick_overlay_cases(evaluation.segmentation)
    assert list(cases["case"]) == ["best", "median", "worst"]
    assert cases["dice"].is_monotonic_decreasing
