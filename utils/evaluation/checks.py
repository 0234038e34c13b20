"""Input checks of the statistics (:mod:`utils.evaluation.stats`, ``rates``, ``curves``,
``integrated``): binary labels, score vectors, probabilities, and why a two-class statistic
is undefined.

Conventions: ``y_true`` is binary 0/1 (or bool) with 1 = positive class (pCR); a higher score
means "more likely positive"; a case is called positive when ``score >= threshold``.
"""

from __future__ import annotations

import numpy as np


def check_binary_labels(y_true: np.ndarray, name: str = "y_true") -> np.ndarray:
    """Return ``y_true`` as an int 0/1 array, or raise ValueError saying what is wrong."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError(f"{name} contains {int(np.isnan(y).sum())} NaN values of {y.size}")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"{name} must be binary 0/1, found values {sorted(values, key=str)}")
    y = y.astype(int)
    n_pos = int(y.sum())
    if n_pos in (0, y.size):
        raise ValueError(f"{name} has one class only ({y.size} values, all equal to "
                         f"{int(n_pos > 0)}); both positives and negatives are needed")
    return y


def check_scores(y_true, score, name: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and one score vector of the same length without NaN."""
    y = check_binary_labels(y_true)
    s = np.asarray(score, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.size != y.size:
        raise ValueError(f"lengths differ: y_true has {y.size} values but {name} has {s.size}")
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN values of {s.size}")
    return y, s


def check_probabilities(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and a probability vector (values in [0, 1])."""
    y, p = check_scores(y_true, prob, name="prob")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"prob must lie in [0, 1]; found range [{p.min()}, {p.max()}]")
    return y, p


def undefined_reason(y_true) -> str:
    """Why a two-class statistic (AUC, sensitivity with specificity, ...) is undefined for
    labels ``y_true`` ('' when it is defined)."""
    y = np.asarray(y_true)
    n_pos = int(np.sum(y))
    if y.size == 0:
        return "no patients"
    if n_pos in (0, y.size):
        return f"one class only ({y.size - n_pos} non-pCR, {n_pos} pCR)"
    return ""
