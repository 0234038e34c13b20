"""Operating points and the rates at them: the threshold chosen on training data from the
empirical ROC, and sensitivity, specificity, PPV, NPV and accuracy with Wilson score CIs
(a case is called positive when ``score >= threshold``)."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import roc_curve

from utils.evaluation.checks import check_scores

THRESHOLD_METHODS = ("closest_topleft", "youden")
PRIMARY_METHOD = "closest_topleft"  # the operating point reported in metrics.json
RATES: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def choose_threshold(y_true, score, method: str = "closest_topleft") -> float:
    """Operating threshold chosen on training data from the empirical ROC (sklearn roc_curve).

    ``closest_topleft`` minimises (1 - sensitivity)^2 + (1 - specificity)^2 (distance to
    (0, 1), as the authors' code did); ``youden`` maximises J = sensitivity + specificity - 1.
    Candidates are the observed scores (call positive when score >= threshold); ties go to
    the higher threshold.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}")
    y, s = check_scores(y_true, score)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # drop sklearn's +inf start
    if method == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    return float(thresholds[np.argmin((1 - tpr) ** 2 + fpr**2)])


def _wilson(successes: int, trials: int, level: float) -> tuple[float, float, float]:
    """Proportion with Wilson score CI (no continuity correction); 0/0 gives NaNs."""
    if trials == 0:
        return np.nan, np.nan, np.nan
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=level,
                                                          method="wilson")
    return successes / trials, float(ci.low), float(ci.high)


def binary_rates(y: np.ndarray, s: np.ndarray, threshold: float, level: float = 0.95) -> dict:
    """Counts and the five rates of :func:`binary_performance`, without input validation.

    Works on a one-class cohort: the rate whose denominator is empty is NaN.
    """
    called = s >= threshold
    tp, fp = int(np.sum(called & (y == 1))), int(np.sum(called & (y == 0)))
    fn, tn = int(np.sum(~called & (y == 1))), int(np.sum(~called & (y == 0)))
    result: dict[str, float] = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn,
                                "fn": fn}
    fractions = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
                 "ppv": (tp, tp + fp), "npv": (tn, tn + fn), "accuracy": (tp + tn, y.size)}
    for name, (k, n) in fractions.items():
        value, low, high = _wilson(k, n, level)
        result.update({name: value, f"{name}_low": low, f"{name}_high": high})
    return result


def binary_performance(y_true, score, threshold: float, level: float = 0.95) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy at ``threshold`` (positive when
    score >= threshold), each with a Wilson score CI (scipy ``binomtest``), plus the counts.

    Keys: tp, fp, tn, fn, and for each measure ``<name>``, ``<name>_low``, ``<name>_high``.
    A 0/0 proportion (e.g. PPV with no positive calls) is NaN.
    """
    y, s = check_scores(y_true, score)
    return binary_rates(y, s, threshold, level)
