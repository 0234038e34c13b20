"""Statistics for the pCR prediction results: ROC/AUC with DeLong inference, operating points,
calibration, decision curves and the integrated (score + tumour markers) logistic model.

Conventions: ``y_true`` is binary 0/1 (or bool) with 1 = positive class (pCR); a higher score
means "more likely positive"; a case is called positive when ``score >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

ALTERNATIVES = ("two-sided", "greater", "less")
THRESHOLD_METHODS = ("closest_topleft", "youden")


# ----------------------------------------------------------------------------- validation

def _check_binary_labels(y_true: np.ndarray, name: str = "y_true") -> np.ndarray:
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


def _check_scores(y_true, score, name: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and one score vector of the same length without NaN."""
    y = _check_binary_labels(y_true)
    s = np.asarray(score, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.size != y.size:
        raise ValueError(f"lengths differ: y_true has {y.size} values but {name} has {s.size}")
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN values of {s.size}")
    return y, s


def _check_probabilities(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    y, p = _check_scores(y_true, prob, name="prob")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"prob must lie in [0, 1]; found range [{p.min()}, {p.max()}]")
    return y, p


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
    y, s = _check_scores(y_true, score)
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
    y = _check_binary_labels(y_true)
    for index, row in enumerate(s2):
        _check_scores(y, row, name="score" if len(s2) == 1 else f"scores_2d[{index}]")
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
    aucs, cov = delong_auc_cov(*_check_scores(y_true, score))
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
    y, s1 = _check_scores(y_true, score1, name="score1")
    _, s2 = _check_scores(y, score2, name="score2")
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
    auc1, var1 = (float(v.ravel()[0]) for v in delong_auc_cov(*_check_scores(y1, s1, "s1")))
    auc2, var2 = (float(v.ravel()[0]) for v in delong_auc_cov(*_check_scores(y2, s2, "s2")))
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
    y, s = _check_scores(y_true, score)
    if variance_undefined(y):
        return roc_auc(y, s), np.nan, np.nan
    result = stats.bootstrap((s[y == 1], s[y == 0]), _auc_from_groups, vectorized=True,
                             paired=False, n_resamples=n_resamples, confidence_level=level,
                             method="percentile", rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return roc_auc(y, s), float(ci.low), float(ci.high)


# ----------------------------------------------------------------------------- operating point

def choose_threshold(y_true, score, method: str = "closest_topleft") -> float:
    """Operating threshold chosen on training data from the empirical ROC (sklearn roc_curve).

    ``closest_topleft`` minimises (1 - sensitivity)^2 + (1 - specificity)^2 (distance to
    (0, 1), as the authors' code did); ``youden`` maximises J = sensitivity + specificity - 1.
    Candidates are the observed scores (call positive when score >= threshold); ties go to
    the higher threshold.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}")
    y, s = _check_scores(y_true, score)
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
    y, s = _check_scores(y_true, score)
    return binary_rates(y, s, threshold, level)


# ----------------------------------------------------------------------------- curves

def roc_curve_points(y_true, score) -> dict[str, np.ndarray]:
    """ROC curve points from sklearn ``roc_curve`` (drop_intermediate=False).
    Returns dict(fpr, tpr, thresholds)."""
    y, s = _check_scores(y_true, score)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def pr_curve(y_true, score) -> dict:
    """Precision-recall curve (sklearn ``precision_recall_curve``) and average precision
    (sklearn ``average_precision_score``, step-wise, no interpolation).
    Returns dict(precision, recall, thresholds, average_precision)."""
    y, s = _check_scores(y_true, score)
    precision, recall, thresholds = precision_recall_curve(y, s)
    return {"precision": precision, "recall": recall, "thresholds": thresholds,
            "average_precision": float(average_precision_score(y, s))}


def calibration(y_true, prob, n_bins: int = 10) -> dict:
    """Reliability curve with ``n_bins`` equal-width bins (sklearn ``calibration_curve``,
    empty bins omitted) and the Brier score (sklearn ``brier_score_loss``).
    Returns dict(prob_true, prob_pred, brier)."""
    y, p = _check_probabilities(y_true, prob)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    return {"prob_true": prob_true, "prob_pred": prob_pred,
            "brier": float(brier_score_loss(y, p))}


def net_benefit(y_true, prob, thresholds: Sequence[float]) -> pd.DataFrame:
    """Decision curve (Vickers & Elkin 2006): NB(pt) = TP/n - FP/n · pt/(1 - pt), treating
    patients with prob >= pt; "treat all" uses TP = all positives, FP = all negatives;
    "treat none" is 0. Thresholds must lie in [0, 1).
    Returns a DataFrame with columns threshold, model, treat_all, treat_none."""
    y, p = _check_probabilities(y_true, prob)
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


# ----------------------------------------------------------------------------- integrated model

def _log1p_columns(x: np.ndarray, columns: Sequence[int] = ()) -> np.ndarray:
    """log1p of the listed column positions; other columns unchanged."""
    x = np.array(x, dtype=float, copy=True)
    x[:, list(columns)] = np.log1p(x[:, list(columns)])
    return x


def fit_integrated_model(train_df: pd.DataFrame, feature_columns: Sequence[str],
                         label_column: str = "pcr", log_columns: Sequence[str] = (),
                         C: float = 1.0) -> Pipeline:
    """Fit the integrated model (e.g. RP-Net score + CEA + CA19-9) on training data.

    sklearn Pipeline: SimpleImputer (missing values -> training median of the raw column),
    log1p of ``log_columns`` (tumour markers, which must be >= 0), StandardScaler,
    LogisticRegression (lbfgs, L2 penalty with inverse strength ``C`` on the standardised
    scale; ``C=np.inf`` gives plain maximum likelihood). Deterministic: no randomness.
    Predict with ``pipeline.predict_proba(df[feature_columns])[:, 1]``.
    """
    features = list(feature_columns)
    unknown = sorted(set(log_columns) - set(features))
    if unknown:
        raise ValueError(f"log_columns not among feature_columns: {unknown}")
    y = _check_binary_labels(train_df[label_column].to_numpy(), name=label_column)
    n_negative = int((train_df[list(log_columns)] < 0).to_numpy().sum())
    if n_negative:
        raise ValueError(f"log_columns contain {n_negative} negative values; log1p needs >= 0")
    log_positions = [features.index(name) for name in log_columns]
    pipeline = Pipeline([
        ("impute", SimpleImputer(strategy="median")),
        ("log1p", FunctionTransformer(_log1p_columns, kw_args={"columns": log_positions})),
        ("scale", StandardScaler()),
        ("logistic", LogisticRegression(C=C, solver="lbfgs", tol=1e-8,
                                         max_iter=10_000)),
    ])
    return pipeline.fit(train_df[features].astype(float), y)


def coefficient_table(pipeline: Pipeline, feature_columns: Sequence[str]) -> pd.DataFrame:
    """Coefficients of a fitted integrated model on the standardised scale.

    Columns: feature, transform ("log1p" or "none"), sd (training SD of the transformed
    feature), coefficient (log-odds per SD), odds_ratio_per_sd = exp(coefficient).
    The intercept is ``pipeline[-1].intercept_``.
    """
    features = list(feature_columns)
    coefficients = pipeline.named_steps["logistic"].coef_.ravel()
    if coefficients.size != len(features):
        raise ValueError(f"pipeline has {coefficients.size} coefficients but "
                         f"{len(features)} feature_columns were given")
    log_positions = pipeline.named_steps["log1p"].kw_args["columns"]
    return pd.DataFrame({
        "feature": features,
        "transform": ["log1p" if i in log_positions else "none" for i in range(len(features))],
        "sd": pipeline.named_steps["scale"].scale_,
        "coefficient": coefficients,
        "odds_ratio_per_sd": np.exp(coefficients),
    })
