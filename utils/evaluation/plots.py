"""Figures of the evaluation notebook (04): ROC and precision-recall curves, the ablation
forest plot, imaging vs integrated model, segmentation box plots and overlays, calibration
and decision curves. Each function takes tables of an
:class:`utils.evaluation.evaluate.Evaluation` and returns a Figure (saved by
:func:`utils.figures.save_figure`); every image with masks is drawn by
:func:`utils.figures.show_slice`. Cohorts where a curve is undefined (one class) get a panel
that says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from utils.config import COHORTS, TIMEPOINTS, cache_files, predicted_masks_file
from utils.evaluation import curves
from utils.evaluation.checks import undefined_reason
from utils.evaluation.labels import (
    ABLATIONS,
    COHORT_LABELS,
    HANDCRAFTED,
    HANDCRAFTED_GT,
    HANDCRAFTED_PRED,
    IMAGE_ORACLE,
    INTEGRATED,
    MAIN_MODEL,
    ORACLE,
    ORACLES,
    VALIDATION_COHORTS,
    VOLUME_GT,
    VOLUME_PRED,
    cohorts_in,
    fmt_ci,
    model_label,
)
from utils.evaluation.predictions import labels_scores
from utils.evaluation.rates import PRIMARY_METHOD
from utils.figures import show_slice
from utils.inference.batch import load_predicted_masks
from utils.measures import largest_slice
from utils.preprocessing.cache import load_cached

COLORS = {MAIN_MODEL: "#1f77b4", INTEGRATED: "#d62728", VOLUME_GT: "#7f7f7f",
          VOLUME_PRED: "#bcbd22", ORACLE: "#2ca02c", IMAGE_ORACLE: "#98df8a",
          HANDCRAFTED_PRED: "#ff7f0e", HANDCRAFTED_GT: "#ffbb78"}


def _cohort_title(cohort: str) -> str:
    return COHORT_LABELS.get(cohort, cohort)


def _auc_legend(auc: pd.DataFrame, cohort: str, model: str) -> str:
    row = auc[(auc["cohort"] == cohort) & (auc["model"] == model)]
    if row.empty:
        return model_label(model)
    r = row.iloc[0]
    return f"{model_label(model)}: {fmt_ci(r['auc'], r['auc_ci_low'], r['auc_ci_high'])}"


def empty_panel(ax, title: str, reason: str) -> None:
    """A panel that says why there is nothing to draw."""
    ax.set_title(title)
    ax.text(0.5, 0.5, reason.replace(": ", ":\n", 1), ha="center", va="center", fontsize=8,
            transform=ax.transAxes)
    ax.set_axis_off()


def _panel_data(scores: pd.DataFrame, cohort: str, model: str):
    y, s, _ = labels_scores(scores[(scores["cohort"] == cohort) & (scores["model"] == model)])
    return y, s, undefined_reason(y)


# ----------------------------------------------------------------------------- ROC, PR
def plot_roc_curves(scores: pd.DataFrame, auc: pd.DataFrame,
                    models: Sequence[str] = (MAIN_MODEL, HANDCRAFTED_PRED, VOLUME_GT,
                                             IMAGE_ORACLE, ORACLE),
                    cohorts: Sequence[str] | None = None,
                    operating: pd.DataFrame | None = None, title: str = "") -> plt.Figure:
    """ROC curve per cohort (one panel each) for ``models``; the legend gives the AUC with
    its DeLong 95% CI; ``operating`` (rows of
    :func:`utils.evaluation.cohorttables.performance_table` for the main model) marks the
    training-chosen operating point."""
    cohorts = list(cohorts or cohorts_in(scores))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.6 * len(cohorts), 3.6), squeeze=False)
    for ax, cohort in zip(axes[0], cohorts, strict=True):
        _roc_panel(ax, scores, auc, models, cohort, operating)
    fig.suptitle(title or "ROC curves (AUC, DeLong 95% CI)")
    fig.tight_layout()
    return fig


def _roc_panel(ax, scores, auc, models, cohort, operating) -> None:
    drawn = False
    for model in models:
        y, s, reason = _panel_data(scores, cohort, model)
        if reason or not s.size:
            continue
        curve = curves.roc_curve_points(y, s)
        style = "--" if model in ORACLES else "-"
        ax.plot(curve["fpr"], curve["tpr"], style, color=COLORS.get(model), lw=1.5,
                label=_auc_legend(auc, cohort, model))
        drawn = True
    if not drawn:
        empty_panel(ax, _cohort_title(cohort), "AUC undefined: " + (
            _panel_data(scores, cohort, models[0])[2] or "no scores"))
        return
    _mark_operating_point(ax, operating, cohort)
    ax.plot([0, 1], [0, 1], ":", color="0.7", lw=0.8)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(-0.02, 1.02),
           ylim=(-0.02, 1.02), title=_cohort_title(cohort), aspect="equal")
    ax.legend(loc="lower right", fontsize=6.5, frameon=False)


def _mark_operating_point(ax, operating: pd.DataFrame | None, cohort: str) -> None:
    if operating is None:
        return
    row = operating[(operating["cohort"] == cohort) & (operating["method"] == PRIMARY_METHOD)
                    & (operating["model"] == MAIN_MODEL)]
    if row.empty or not np.isfinite(row.iloc[0].get("sensitivity", np.nan)):
        return
    r = row.iloc[0]
    ax.plot(1 - r["specificity"], r["sensitivity"], "o", ms=6, mfc="none", color="k",
            label=f"training threshold {r['threshold']:.2f}")


def plot_pr_curves(scores: pd.DataFrame, models: Sequence[str] = (MAIN_MODEL, VOLUME_GT),
                   cohorts: Sequence[str] | None = None) -> plt.Figure:
    """Precision-recall curve per cohort with average precision in the legend and the pCR
    prevalence (a random classifier's precision) as a dotted line."""
    cohorts = list(cohorts or cohorts_in(scores))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.6 * len(cohorts), 3.4), squeeze=False)
    for ax, cohort in zip(axes[0], cohorts, strict=True):
        reason = _panel_data(scores, cohort, models[0])[2]
        if reason:
            empty_panel(ax, _cohort_title(cohort), "undefined: " + reason)
            continue
        _pr_panel(ax, scores, models, cohort)
    fig.tight_layout()
    return fig


def _pr_panel(ax, scores: pd.DataFrame, models: Sequence[str], cohort: str) -> None:
    for model in models:
        y, s, why = _panel_data(scores, cohort, model)
        if why or not s.size:
            continue
        curve = curves.pr_curve(y, s)
        ax.step(curve["recall"], curve["precision"], where="post", color=COLORS.get(model),
                label=f"{model_label(model)}: AP {curve['average_precision']:.2f}")
    prevalence = _panel_data(scores, cohort, models[0])[0].mean()
    ax.axhline(prevalence, ls=":", color="0.6", lw=0.8, label=f"prevalence {prevalence:.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", ylim=(0, 1.03),
           title=_cohort_title(cohort))
    ax.legend(loc="lower left", fontsize=6.5, frameon=False)


# ----------------------------------------------------------------------------- ablations
def plot_ablation_aucs(auc: pd.DataFrame, tests: pd.DataFrame,
                       cohorts: Sequence[str] = VALIDATION_COHORTS,
                       seed_aucs: pd.DataFrame | None = None) -> plt.Figure:
    """Forest plot: AUC with DeLong 95% CI of the main model, ablations and baselines per
    cohort (seed-averaged scores; each seed's own AUC as a small cross when ``seed_aucs`` is
    given), with the one-sided paired DeLong p (H1: full > model, unadjusted) at the right."""
    models = [m for m in (MAIN_MODEL, *ABLATIONS, *HANDCRAFTED, VOLUME_GT, VOLUME_PRED)
              if m in set(auc["model"])]
    fig, axes = plt.subplots(1, len(cohorts), figsize=(4.6 * len(cohorts), 0.4 * len(models)
                                                        + 1.4), squeeze=False, sharey=True)
    y = np.arange(len(models))[::-1]
    for ax, cohort in zip(axes[0], cohorts, strict=True):
        rows = auc[auc["cohort"] == cohort].set_index("model").reindex(models)
        for yi, model in zip(y, models, strict=True):
            _forest_row(ax, rows.loc[model], yi, cohort, model, tests, seed_aucs)
        ax.axvline(0.5, ls=":", color="0.6", lw=0.8)
        ax.set_yticks(y, [model_label(m) for m in models], fontsize=7.5)
        ax.set(xlim=(0, 1.02), xlabel="AUC (DeLong 95% CI)", title=_cohort_title(cohort))
    fig.suptitle("Ablations and baselines (x: single seeds); p: one-sided paired DeLong, "
                 "full > model")
    fig.tight_layout()
    return fig


def _forest_row(ax, r: pd.Series, yi: float, cohort: str, model: str, tests: pd.DataFrame,
                seed_aucs: pd.DataFrame | None) -> None:
    """One model's AUC with CI, its single-seed AUCs and the paired-test p."""
    color = COLORS.get(model, "#6baed6")
    ax.errorbar(r["auc"], yi, xerr=[[r["auc"] - r["auc_ci_low"]],
                                    [r["auc_ci_high"] - r["auc"]]],
                fmt="o", color=color, ms=5, capsize=3)
    if seed_aucs is not None:
        seeds = seed_aucs[(seed_aucs["cohort"] == cohort) & (seed_aucs["model"] == model)]
        if len(seeds) > 1:
            ax.plot(seeds["auc"], np.full(len(seeds), yi + 0.25), "x", color=color,
                    ms=4, alpha=0.8)
    ax.text(1.04, yi, _p_label(tests, cohort, model), va="center", fontsize=7,
            transform=ax.get_yaxis_transform())


def _p_label(tests: pd.DataFrame, cohort: str, model: str) -> str:
    if model == MAIN_MODEL or tests.empty:
        return ""
    row = tests[(tests["cohort"] == cohort) & (tests["model_a"] == MAIN_MODEL)
                & (tests["model_b"] == model)]
    if row.empty or not np.isfinite(row.iloc[0]["p_greater"]):
        return "p n/a"
    p = row.iloc[0]["p_greater"]
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def plot_imaging_vs_integrated(scores: pd.DataFrame, auc: pd.DataFrame, tests: pd.DataFrame,
                               cohorts: Sequence[str] = VALIDATION_COHORTS) -> plt.Figure:
    """ROC of the imaging (full) and integrated models per validation cohort; the title
    gives the paired DeLong p (two-sided) of the difference."""
    fig = plot_roc_curves(scores, auc, (MAIN_MODEL, INTEGRATED), cohorts,
                          title="Imaging vs integrated model (AUC, DeLong 95% CI)")
    for ax, cohort in zip(fig.axes, cohorts, strict=True):
        row = tests[(tests["cohort"] == cohort) & (tests["model_a"] == INTEGRATED)] if len(
            tests) else tests
        if len(row) and np.isfinite(row.iloc[0]["p_two_sided"]):
            ax.set_title(f"{_cohort_title(cohort)}\npaired DeLong p = "
                         f"{row.iloc[0]['p_two_sided']:.3f} (two-sided)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- segmentation
def plot_segmentation(seg: pd.DataFrame, model: str = MAIN_MODEL) -> plt.Figure:
    """Box plots of Dice (top) and HD95 in mm (bottom, defined values only) per cohort and
    time point for ``model``; points are patients."""
    rows = seg[seg["model"] == model]
    fig, axes = plt.subplots(2, 1, figsize=(6.5, 5.5), sharex=True)
    if rows.empty:
        empty_panel(axes[0], "segmentation", f"no predicted masks for {model}")
        return fig
    groups = [(c, t) for c in COHORTS for t in TIMEPOINTS
              if len(rows[(rows["cohort"] == c) & (rows["timepoint"] == t)])]
    for ax, column, ylabel in ((axes[0], "dice", "Dice"), (axes[1], "hd95_mm", "HD95 (mm)")):
        data = [rows[(rows["cohort"] == c) & (rows["timepoint"] == t)][column].dropna()
                for c, t in groups]
        ax.boxplot([d.to_numpy() for d in data], showfliers=False, widths=0.5)
        for i, d in enumerate(data, start=1):
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(d))
            ax.plot(i + jitter, d, ".", color="0.4", ms=3, alpha=0.7)
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(0, 1.02)
    axes[1].set_xticks(range(1, len(groups) + 1),
                       [f"{COHORT_LABELS[c]}\n{t}" for c, t in groups], fontsize=7)
    axes[0].set_title(f"Segmentation of {model_label(model)} vs ground truth")
    fig.tight_layout()
    return fig


def pick_overlay_cases(seg: pd.DataFrame, model: str = MAIN_MODEL,
                       cohorts: Sequence[str] = VALIDATION_COHORTS) -> pd.DataFrame:
    """Best, median and worst patient by mean Dice over the time points (validation
    cohorts of ``model``); fewer rows when fewer patients exist."""
    rows = seg[(seg["model"] == model) & seg["cohort"].isin(cohorts)]
    per_patient = rows.groupby(["patient_id", "cohort"])["dice"].mean().reset_index()
    if per_patient.empty:
        return per_patient.assign(case=[])
    ranked = per_patient.sort_values(["dice", "patient_id"], ascending=[False, True],
                                     ignore_index=True)
    picks = {"best": 0, "median": len(ranked) // 2, "worst": len(ranked) - 1}
    chosen = [ranked.iloc[[i]].assign(case=name) for name, i in picks.items()]
    return pd.concat(chosen, ignore_index=True).drop_duplicates("patient_id")


def plot_overlays(cases: pd.DataFrame, cache_dir: str | Path, masks_dir: str | Path,
                  seg: pd.DataFrame, model: str = MAIN_MODEL) -> plt.Figure:
    """T2W (channel 0) through the largest ground-truth tumour slice, pre and post, with the
    ground-truth (green) and predicted (magenta) contours, for each case row."""
    n = max(len(cases), 1)
    fig, axes = plt.subplots(n, 2, figsize=(5.2, 2.6 * n), squeeze=False)
    if cases.empty:
        empty_panel(axes[0, 0], "overlays", "no segmented validation patients")
        return fig
    for row_axes, (_, case) in zip(axes, cases.iterrows(), strict=True):
        ref = load_cached(cache_files(cache_dir, case["patient_id"])["npz"])
        pred = load_predicted_masks(predicted_masks_file(masks_dir, model, case["patient_id"]))
        for ax, timepoint in zip(row_axes, TIMEPOINTS, strict=True):
            tumour_slice_panel(ax, ref[f"image_{timepoint}"][..., 0], ref[f"mask_{timepoint}"],
                    pred.get(f"mask_{timepoint}"), _overlay_title(seg, model, case, timepoint))
    fig.suptitle("T2W; green: ground truth, magenta: predicted", fontsize=8)
    fig.tight_layout()
    return fig


def roi_panels(cache_dir: str | Path, masks_dir: str | Path, patient_id: str,
               model: str = MAIN_MODEL) -> dict:
    """Slice-browser panels (:func:`utils.viewer.slice_browser`): the pre and post ROI,
    every input channel, with the ground-truth and the predicted tumour masks."""
    cached = load_cached(cache_files(cache_dir, patient_id)["npz"])
    masks = load_predicted_masks(predicted_masks_file(masks_dir, model, patient_id))
    sequences = cached["meta"].get("sequences", ["T2W", "DWI"])
    return {f"{timepoint} {sequence}": (
        cached[f"image_{timepoint}"][..., channel],
        {"ground truth": cached[f"mask_{timepoint}"],
         "predicted": masks.get(f"mask_{timepoint}")})
        for timepoint in TIMEPOINTS for channel, sequence in enumerate(sequences)}


def _overlay_title(seg: pd.DataFrame, model: str, case: pd.Series, timepoint: str) -> str:
    dice = seg[(seg["model"] == model) & (seg["patient_id"] == case["patient_id"])
               & (seg["timepoint"] == timepoint)]["dice"]
    return (f"{case['case']}: {case['patient_id']} {timepoint}, Dice {dice.iloc[0]:.2f}"
            if len(dice) else f"{timepoint}: no mask")


def tumour_slice_panel(ax, image: np.ndarray, truth: np.ndarray, predicted: np.ndarray | None,
                       title: str, heat: np.ndarray | None = None) -> None:
    """:func:`utils.figures.show_slice` of the (z, y, x) ``image`` (and ``heat`` map) through
    the largest slice of ``truth`` (of ``predicted`` when ``truth`` is empty), with the
    contours of ``truth`` (green) and ``predicted`` (magenta)."""
    z = largest_slice(truth if truth.any() or predicted is None else predicted)
    contours = [(truth[z], "lime"), (None if predicted is None else predicted[z], "magenta")]
    show_slice(ax, image[z], contours, title, heat=None if heat is None else heat[z])


# ----------------------------------------------------------------------------- calibration, DCA
def plot_calibration(curve: pd.DataFrame, brier: pd.DataFrame,
                     cohorts: Sequence[str] = VALIDATION_COHORTS) -> plt.Figure:
    """Reliability curves (observed pCR fraction vs mean predicted probability per bin) with
    the Brier score in the legend, one panel per cohort."""
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.6 * len(cohorts), 3.6), squeeze=False)
    for ax, cohort in zip(axes[0], cohorts, strict=True):
        rows = brier[brier["cohort"] == cohort] if len(brier) else brier
        if rows.empty or not rows["brier"].notna().any():
            reason = rows["note"].iloc[0] if len(rows) else "no patients"
            empty_panel(ax, _cohort_title(cohort), "undefined: " + reason)
            continue
        for _, r in rows.dropna(subset=["brier"]).iterrows():
            pts = curve[(curve["cohort"] == cohort) & (curve["model"] == r["model"])]
            ax.plot(pts["prob_pred"], pts["prob_true"], "o-", color=COLORS.get(r["model"]),
                    ms=4, label=f"{model_label(r['model'])}: Brier {r['brier']:.3f}")
        ax.plot([0, 1], [0, 1], ":", color="0.6", lw=0.8)
        ax.set(xlabel="predicted probability", ylabel="observed pCR fraction", xlim=(0, 1),
               ylim=(0, 1), title=_cohort_title(cohort), aspect="equal")
        ax.legend(loc="upper left", fontsize=6.5, frameon=False)
    fig.tight_layout()
    return fig


def plot_decision_curves(table: pd.DataFrame,
                         cohorts: Sequence[str] = VALIDATION_COHORTS) -> plt.Figure:
    """Net benefit against threshold probability for each model, treat-all and
    treat-none, one panel per cohort."""
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.8 * len(cohorts), 3.4), squeeze=False)
    styles = {"treat_all": ("0.5", "--"), "treat_none": ("0.2", ":")}
    for ax, cohort in zip(axes[0], cohorts, strict=True):
        rows = table[table["cohort"] == cohort]
        if rows.empty:
            empty_panel(ax, _cohort_title(cohort), "undefined: one class only")
            continue
        for strategy, group in rows.groupby("strategy", sort=False):
            color, style = styles.get(strategy, (COLORS.get(strategy), "-"))
            ax.plot(group["threshold"], group["net_benefit"], style, color=color,
                    label=model_label(strategy).replace("_", " "))
        top = rows["net_benefit"].max()
        ax.set(ylim=(-0.05, max(top, 0.05) * 1.15), xlabel="threshold probability",
               ylabel="net benefit", title=_cohort_title(cohort))
        ax.legend(fontsize=6.5, frameon=False)
    fig.tight_layout()
    return fig
