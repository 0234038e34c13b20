"""How well the localiser placed the validation ROIs, scored against the ground truth after
preprocessing (``processed.csv``: ``roi_centre_error_mm``, ``roi_tumour_inside_pre``,
``roi_whole_tumour``): a table per cohort and a figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def localised_rows(processed: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Processed rows of the patients whose ROI the localiser placed, with ``found``."""
    scored = table[["patient_id", "found"]].merge(processed, on="patient_id")
    scored = scored[scored["roi_source"] == "roi_center_mm"].copy()
    scored["roi_whole_tumour"] = scored["roi_whole_tumour"].astype(str).str.lower() == "true"
    scored["found"] = scored["found"].astype(str).str.lower() == "true"
    return scored


def localisation_summary(processed: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per cohort: patients, components found, centre error (median, 90th percentile, max;
    mm, to the ground-truth pre tumour centroid) and the share of ROIs holding the whole
    tumour (pre and registered post)."""
    scored = localised_rows(processed, table)
    by = scored.groupby("cohort")
    error = by["roi_centre_error_mm"]
    return pd.DataFrame({"patients": by.size(), "found": by["found"].sum(),
                         "median_error_mm": error.median().round(1),
                         "p90_error_mm": error.quantile(0.9).round(1),
                         "max_error_mm": error.max().round(1),
                         "whole_tumour_in_roi": by["roi_whole_tumour"].mean().round(3),
                         "min_tumour_inside": by["roi_tumour_inside_pre"].min().round(3)})


def plot_localisation(processed: pd.DataFrame, table: pd.DataFrame) -> plt.Figure:
    """Centre error (mm) and share of the pre tumour inside the ROI, per validation cohort."""
    scored = localised_rows(processed, table)
    cohorts = sorted(scored["cohort"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    rng = np.random.default_rng(0)  # horizontal jitter of the points only
    for i, cohort in enumerate(cohorts):
        rows = scored[scored["cohort"] == cohort]
        x = i + rng.uniform(-0.15, 0.15, len(rows))
        for ax, column in zip(axes, ("roi_centre_error_mm", "roi_tumour_inside_pre"), strict=True):
            colours = np.where(rows["found"], "tab:blue", "tab:red")
            ax.scatter(x, rows[column], s=10, c=colours, alpha=0.7)
            ax.boxplot(rows[column].dropna(), positions=[i], widths=0.5, showfliers=False)
    labels = [c.replace("_validation", "") for c in cohorts]
    for ax, title in zip(axes, ("ROI centre to tumour centroid (mm)",
                                "share of the pre tumour inside the ROI"), strict=True):
        ax.set_xticks(range(len(cohorts)), labels)
        ax.set_title(title, fontsize=10)
    axes[1].axhline(1.0, color="0.5", lw=0.8, ls="--")
    fig.suptitle("Localiser on the validation cohorts (blue: component found, red: missed)",
                 fontsize=10)
    fig.tight_layout()
    return fig
