"""Curves of a score: ROC and precision-recall points, the reliability curve with the Brier
score, and the decision curve (net benefit)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_curve,
)

from utils.evaluation.checks import check_probabilities, check_scores


def roc_curve_points(y_true, score) -> dict[str, np.ndarray]:
    """ROC curve points from sklearn ``roc_curve`` (drop_intermediate=False).
    Returns dict(fpr, tpr, thresholds)."""
    y, s = check_scores(y_true, score)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def pr_curve(y_true, score) -> dict:
    """Precision-recall curve (sklearn ``precision_recall_curve``) and average precision
    (sklearn ``average_precision_score``, step-wise, no interpolation).
    Returns dict(precision, recall, thresholds, average_precision)."""
    y, s = check_scores(y_true, score)
    precision, recall, thresholds = precision_recall_curve(y, s)
    return {"precision": precision, "recall": recall, "thresholds": thresholds,
            "average_precision": float(average_precision_score(y, s))}


def calibration(y_true, prob, n_bins: int = 10) -> dict:
    """Reliability curve with ``n_bins`` equal-width bins (sklearn ``calibration_curve``,
    empty bins omitted) and the Brier score (sklearn ``brier_score_loss``).
    Returns dict(prob_true, prob_pred, brier)."""
    y, p = check_probabilities(y_true, prob)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    return {"prob_true": prob_true, "prob_pred": prob_pred,
            "brier": float(brier_score_loss(y, p))}


def net_benefit(y_true, prob, thresholds: Sequence[float]) -> pd.DataFrame:
    """Decision curve (Vickers & Elkin 2006): NB(pt) = TP/n - FP/n · pt/(1 - pt), treating
    patients with prob >= pt; "treat all" uses TP = all positives, FP = all negatives;
    "treat none" is 0. Thresholds must lie in [0, 1).
    Returns a DataFrame with columns threshold, model, treat_all, treat_none."""
    y, p = check_probabilities(y_true, prob)
    pt = np.asarray(thresholds, dtype=float)
    if pt.ndim != 1 or np.any((pt < 0) | (pt >= 1)) or np.isnan(pt).any():
        raise ValueError("thresholds must be a 1-D sequence of values in [0, 1)")
    n, odds = y.size, pt / (1 - pt)
    called = p[None, :] >= pt[:, None]
    tp = (called & (y == 1)).sum(axis=1)
    fp = (called & (y == 0)).sum(axis=1)
    prevalence = y.mean()
    return pd.DataFrame({"threshold": pt, "model": tp / n - fp / n * odds,
                         "treat_all": prevalence - (1 - prevalence) * odds,
                         "treat_none": np.zeros_like(pt)})
