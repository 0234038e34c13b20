"""ROC AUC with DeLong inference (variance, CI, paired and unpaired tests), the stratified
bootstrap CI, Holm's adjustment and the logit transform.

Conventions (:mod:`utils.evaluation.checks`): ``y_true`` is binary 0/1 with 1 = pCR; a higher
score means "more likely positive". Operating points and rates: :mod:`utils.evaluation.rates`;
curves, calibration and net benefit: :mod:`utils.evaluation.curves`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from utils.evaluation.checks import check_binary_labels, check_scores

ALTERNATIVES = ("two-sided", "greater", "less")


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def _z_quantile(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(stats.norm.ppf((1 + level) / 2))


# ----------------------------------------------------------------------------- transforms

def logit(p, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p / (1 - p))


# ----------------------------------------------------------------------------- AUC, DeLong

def variance_undefined(y_true) -> str:
    """Why the DeLong variance of an AUC is undefined for labels ``y_true`` ('' if defined).

    The variance uses the sample variance of each class's placements, which needs at least
    two patients per class; with one pCR (or one non-pCR) patient the AUC exists but its
    variance, CI and tests do not (NaN, never a (0, 1) interval or p = 0)."""
    y = np.asarray(y_true).astype(int)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if min(n_pos, n_neg) < 2:
        return (f"DeLong variance undefined: fewer than two patients in a class "
                f"({n_neg} non-pCR, {n_pos} pCR)")
    return ""


def roc_auc(y_true, score) -> float:
    """Area under the ROC curve = Mann-Whitney U / (m n): the probability that a random
    positive scores higher than a random negative, ties counting 1/2
    (sklearn ``roc_auc_score``, trapezoidal rule, which is identical)."""
    y, s = check_scores(y_true, score)
    return float(roc_auc_score(y, s))


def _structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sun & Xu (2014) midrank algorithm for ``scores`` of shape (k, n).

    Returns AUCs (k,), positive placements V10 (k, m) and negative placements V01 (k, n_neg):
    V10[i] = P(score of a negative < positive i), ties 1/2; V01[j] = P(positive > negative j).
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    rank_pos = stats.rankdata(pos, axis=1)
    rank_neg = stats.rankdata(neg, axis=1)
    rank_all = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    return aucs, v10, v01


def delong_auc_cov(y_true, scores_2d) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k scores measured on the same patients.

    Fast DeLong (Sun & Xu 2014, IEEE SPL 21:1389): placements from midranks, then
    cov = S10/m + S01/n with S10, S01 the sample covariances (denominator m-1, n-1) of the
    positive and negative placements (DeLong, DeLong & Clarke-Pearson 1988).
    ``scores_2d`` has shape (k, n_patients) (a 1-D score is treated as k = 1).
    Returns ``aucs`` (k,) and ``cov`` (k, k); ``cov`` is all NaN when a class has fewer
    than two patients (:func:`variance_undefined`).
    """
    s2 = np.atleast_2d(np.asarray(scores_2d, dtype=float))
    y = check_binary_labels(y_true)
    for index, row in enumerate(s2):
        check_scores(y, row, name="score" if len(s2) == 1 else f"scores_2d[{index}]")
    aucs, v10, v01 = _structural_components(y, s2)
    if variance_undefined(y):
        return aucs, np.full((len(s2), len(s2)), np.nan)
    cov = (np.atleast_2d(np.cov(v10)) / v10.shape[1]
           + np.atleast_2d(np.cov(v01)) / v01.shape[1])
    return aucs, cov


def delong_ci(y_true, score, level: float = 0.95) -> tuple[float, float, float]:
    """AUC with its DeLong confidence interval: AUC ± z_{(1+level)/2} · sqrt(var_DeLong),
    normal approximation on the AUC scale, clipped to [0, 1] (as pROC ``ci.auc``).
    Returns ``(auc, low, high)``; ``low`` and ``high`` are NaN when the variance is undefined
    (:func:`variance_undefined`)."""
    z = _z_quantile(level)
    aucs, cov = delong_auc_cov(*check_scores(y_true, score))
    auc, half = float(aucs[0]), z * float(np.sqrt(cov[0, 0]))
    if np.isnan(half):
        return auc, np.nan, np.nan
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def _normal_p(z: float, alternative: str) -> float:
    if alternative == "greater":
        return float(stats.norm.sf(z))
    if alternative == "less":
        return float(stats.norm.cdf(z))
    return float(2 * stats.norm.sf(abs(z)))


def _t_p(t: float, df: float, alternative: str) -> float:
    if alternative == "greater":
        return float(stats.t.sf(t, df))
    if alternative == "less":
        return float(stats.t.cdf(t, df))
    return float(2 * stats.t.sf(abs(t), df))


def _safe_ratio(diff: float, sd: float) -> float:
    """diff / sd, with 0/0 = 0 (identical curves) and x/0 = ±inf."""
    if sd > 0:
        return diff / sd
    return 0.0 if diff == 0 else float(np.copysign(np.inf, diff))


def delong_paired_test(y_true, score1, score2, alternative: str = "two-sided",
                       level: float = 0.95) -> dict[str, float]:
    """DeLong test of two correlated AUCs (both scores on the same patients).

    z = (AUC1 - AUC2) / sqrt(V11 + V22 - 2 V12) with the fast-DeLong covariance; p from the
    standard normal for ``alternative`` "two-sided", "greater" (AUC1 > AUC2) or "less".
    The CI is the two-sided ``level`` normal interval of AUC1 - AUC2 (as pROC ``roc.test``).
    Identical scores give z = 0, p = 1. With fewer than two patients in a class, z, p and
    the CI are NaN (:func:`variance_undefined`).
    Returns dict(auc1, auc2, diff, z, p, ci_low, ci_high).
    """
    _check_alternative(alternative)
    y, s1 = check_scores(y_true, score1, name="score1")
    _, s2 = check_scores(y, score2, name="score2")
    aucs, cov = delong_auc_cov(y, np.vstack([s1, s2]))
    diff = float(aucs[0] - aucs[1])
    if np.isnan(cov).any():
        return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "z": np.nan,
                "p": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    sd = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    z = _safe_ratio(diff, sd)
    half = _z_quantile(level) * sd
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "z": z,
            "p": _normal_p(z, alternative), "ci_low": diff - half, "ci_high": diff + half}


def delong_unpaired_test(y1, s1, y2, s2, alternative: str = "two-sided") -> dict[str, float]:
    """DeLong test of two AUCs from different patients (as pROC ``roc.test``, unpaired).

    D = (AUC1 - AUC2) / sqrt(S1 + S2), S = DeLong variance of each AUC; p from a t
    distribution with Welch-type df = (S1 + S2)^2 / (S1^2/(N1 - 1) + S2^2/(N2 - 1)),
    N = number of patients of that curve. Returns dict(d, df, p), all NaN when either curve
    has fewer than two patients in a class.
    """
    _check_alternative(alternative)
    auc1, var1 = (float(v.ravel()[0]) for v in delong_auc_cov(*check_scores(y1, s1, "s1")))
    auc2, var2 = (float(v.ravel()[0]) for v in delong_auc_cov(*check_scores(y2, s2, "s2")))
    n1, n2 = len(s1), len(s2)
    if np.isnan(var1) or np.isnan(var2):
        return {"d": np.nan, "df": np.nan, "p": np.nan}
    d = _safe_ratio(auc1 - auc2, float(np.sqrt(var1 + var2)))
    total = var1 + var2
    df = total**2 / (var1**2 / (n1 - 1) + var2**2 / (n2 - 1)) if total > 0 else np.inf
    return {"d": d, "df": float(df), "p": _t_p(d, df, alternative)}


# ----------------------------------------------------------------------------- bootstrap

def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs are ignored and stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        out[index] = running
    return out


def _auc_from_groups(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised Mann-Whitney AUC of positives vs negatives along ``axis``."""
    pos, neg = np.moveaxis(pos, axis, -1), np.moveaxis(neg, axis, -1)
    m, n = pos.shape[-1], neg.shape[-1]
    ranks = stats.rankdata(np.concatenate([pos, neg], axis=-1), axis=-1)
    return (ranks[..., :m].sum(axis=-1) - m * (m + 1) / 2) / (m * n)


def bootstrap_auc_ci(y_true, score, n_resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """AUC with a stratified percentile bootstrap CI (a cross-check of DeLong).

    Positives and negatives are resampled separately (fixed m and n), via
    ``scipy.stats.bootstrap`` with the two groups as independent samples,
    ``method="percentile"``. Returns ``(auc, low, high)``; NaN bounds with fewer than two
    patients in a class (:func:`variance_undefined`).
    """
    y, s = check_scores(y_true, score)
    if variance_undefined(y):
        return roc_auc(y, s), np.nan, np.nan
    result = stats.bootstrap((s[y == 1], s[y == 0]), _auc_from_groups, vectorized=True,
                             paired=False, n_resamples=n_resamples, confidence_level=level,
                             method="percentile", rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return roc_auc(y, s), float(ci.low), float(ci.high)
