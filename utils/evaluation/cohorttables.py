"""Per-cohort statistics tables of every model in a score table: AUC with DeLong and
bootstrap CIs, operating points chosen on training and the rates at them, calibration (Brier)
and decision curves. A cohort with one class gives NaN for every statistic that needs both
classes, with the reason in ``note``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from utils.evaluation import curves
from utils.evaluation import stats as st
from utils.evaluation.checks import undefined_reason
from utils.evaluation.labels import VALIDATION_COHORTS, cohorts_in, fmt_ci, fmt_range, models_in
from utils.evaluation.predictions import labels_scores
from utils.evaluation.rates import (
    PRIMARY_METHOD,
    RATES,
    THRESHOLD_METHODS,
    binary_rates,
    choose_threshold,
)
from utils.repro import derive_seed

AUC_KEYS = ("auc", "auc_ci_low", "auc_ci_high", "auc_boot_low", "auc_boot_high",
            "average_precision")


# ----------------------------------------------------------------------------- AUC
def auc_table(scores: pd.DataFrame, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> pd.DataFrame:
    """AUC per cohort and model: Mann-Whitney AUC with the DeLong CI (normal approximation,
    Sun & Xu fast algorithm; :func:`utils.evaluation.stats.delong_ci`) and, as a cross-check, the
    stratified percentile bootstrap CI (``n_boot`` resamples of positives and negatives
    separately; seed derived from ``seed``, cohort and model), plus average precision."""
    rows = []
    for (cohort, model), group in scores.groupby(["cohort", "model"], sort=False):
        y, s, n_missing = labels_scores(group)
        row = {"cohort": cohort, "model": model, "n": int(y.size), "n_pcr": int(y.sum()),
               "n_missing": n_missing, "note": undefined_reason(y)}
        row.update(_auc_stats(y, s, n_boot, level, derive_seed(seed, cohort, model))
                   if not row["note"] else dict.fromkeys(AUC_KEYS, np.nan))
        row["note"] = row["note"] or st.variance_undefined(y)
        rows.append(row)
    return _ordered(pd.DataFrame(rows), scores)


def _auc_stats(y: np.ndarray, s: np.ndarray, n_boot: int, level: float, seed: int) -> dict:
    auc, low, high = st.delong_ci(y, s, level)
    with warnings.catch_warnings():  # degenerate bootstrap distributions in tiny cohorts
        warnings.simplefilter("ignore")
        _, boot_low, boot_high = st.bootstrap_auc_ci(y, s, n_resamples=n_boot, level=level,
                                                     seed=seed)
    ap = curves.pr_curve(y, s)["average_precision"]
    return dict(zip(AUC_KEYS, (auc, low, high, boot_low, boot_high, ap), strict=True))


def _ordered(table: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by cohort order, then model order."""
    if table.empty:
        return table
    cohort_rank = {c: i for i, c in enumerate(cohorts_in(scores))}
    model_rank = {m: i for i, m in enumerate(models_in(scores))}
    key = table["cohort"].map(cohort_rank) * 1000 + table["model"].map(model_rank)
    return table.assign(_key=key.to_numpy()).sort_values("_key", kind="stable").drop(
        columns="_key").reset_index(drop=True)


# ----------------------------------------------------------------------------- operating points
def choose_operating_points(scores: pd.DataFrame,
                            methods: Sequence[str] = THRESHOLD_METHODS,
                            cohort: str = "training") -> pd.DataFrame:
    """Threshold per model and method, chosen on ``cohort`` only (default training; its deep
    scores are in-sample, so the threshold may be optimistic): ``closest_topleft`` minimises
    the distance to (0, 1) as the authors' code, ``youden`` maximises J
    (:func:`utils.evaluation.rates.choose_threshold`; positive when score >= threshold)."""
    rows = []
    for model in models_in(scores):
        y, s, _ = labels_scores(scores[(scores["model"] == model) & (scores["cohort"] == cohort)])
        note = undefined_reason(y)
        for method in methods:
            threshold = np.nan if note else choose_threshold(y, s, method)
            rows.append({"model": model, "method": method, "threshold": threshold,
                         "chosen_on": cohort, "note": note})
    return pd.DataFrame(rows)


def performance_table(scores: pd.DataFrame, thresholds: pd.DataFrame,
                      level: float = 0.95) -> pd.DataFrame:
    """Sensitivity, specificity, PPV, NPV and accuracy (Wilson score CIs) of every model in
    every cohort at the threshold chosen on the training cohort, applied unchanged."""
    rows = []
    for (cohort, model), group in scores.groupby(["cohort", "model"], sort=False):
        y, s, _ = labels_scores(group)
        for _, chosen in thresholds[thresholds["model"] == model].iterrows():
            row = {"cohort": cohort, "model": model, "method": chosen["method"],
                   "n": int(y.size), "n_pcr": int(y.sum())}
            if np.isnan(chosen["threshold"]):
                row.update({"threshold": np.nan, "note": "no threshold: " + chosen["note"]})
            else:
                row.update(binary_rates(y, s, float(chosen["threshold"]), level))
                row["note"] = undefined_reason(y)
            rows.append(row)
    return _ordered(pd.DataFrame(rows), scores)


def cohort_performance(auc: pd.DataFrame, performance: pd.DataFrame,
                       method: str = PRIMARY_METHOD) -> pd.DataFrame:
    """The cohort-level table: AUC (DeLong CI) and the threshold rates (Wilson CIs) of each
    model in each cohort at the ``method`` operating point."""
    rates = performance[performance["method"] == method].drop(columns=["n", "n_pcr", "note"])
    return auc.merge(rates, on=["cohort", "model"], how="left")


def format_performance(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Display version of :func:`cohort_performance`: 'value (low–high)' strings."""
    def cell(row: pd.Series, name: str, low: str, high: str) -> str:
        return fmt_ci(row.get(name), row.get(low), row.get(high), digits)

    out = table[["cohort", "model", "n", "n_pcr"]].copy()
    out["AUC (DeLong 95% CI)"] = [cell(r, "auc", "auc_ci_low", "auc_ci_high")
                                  for _, r in table.iterrows()]
    out["bootstrap CI"] = [fmt_range(r["auc_boot_low"], r["auc_boot_high"], digits)
                           for _, r in table.iterrows()]
    for name in RATES:
        if name in table:
            out[name] = [cell(r, name, f"{name}_low", f"{name}_high")
                         for _, r in table.iterrows()]
    return out.set_index(["cohort", "model"])


# ----------------------------------------------------------------------------- calibration, DCA
def calibration_tables(scores: pd.DataFrame, models: Sequence[str],
                       cohorts: Sequence[str] = VALIDATION_COHORTS,
                       n_bins: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability curve (``n_bins`` equal-width bins, empty bins omitted) and Brier score
    (:func:`utils.evaluation.curves.calibration`) of probability models per cohort.
    Returns (curve points, Brier table); one-class cohorts get a NaN Brier with a note."""
    points, briers = [], []
    for cohort in cohorts:
        for model in models:
            y, p, _ = labels_scores(scores[(scores["model"] == model)
                                           & (scores["cohort"] == cohort)])
            note = undefined_reason(y)
            if y.size == 0:
                continue
            brier = np.nan
            if not note:
                result = curves.calibration(y, p, n_bins=n_bins)
                brier = result["brier"]
                points.append(pd.DataFrame({"cohort": cohort, "model": model,
                                            "prob_pred": result["prob_pred"],
                                            "prob_true": result["prob_true"]}))
            briers.append({"cohort": cohort, "model": model, "n": int(y.size),
                           "brier": brier, "note": note})
    curve = pd.concat(points, ignore_index=True) if points else pd.DataFrame(
        columns=["cohort", "model", "prob_pred", "prob_true"])
    return curve, pd.DataFrame(briers)


def decision_curve_table(scores: pd.DataFrame, models: Sequence[str],
                         cohorts: Sequence[str] = VALIDATION_COHORTS,
                         thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """Net benefit (Vickers & Elkin 2006; :func:`utils.evaluation.curves.net_benefit`) of each
    probability model, treat-all and treat-none, per cohort and threshold probability.
    One-class cohorts are skipped."""
    thresholds = np.round(np.arange(0.01, 0.81, 0.01), 2) if thresholds is None else thresholds
    parts = []
    for cohort in cohorts:
        for index, model in enumerate(models):
            y, p, _ = labels_scores(scores[(scores["model"] == model)
                                           & (scores["cohort"] == cohort)])
            if undefined_reason(y):
                continue
            curve = curves.net_benefit(y, p, thresholds)
            keep = ["model", "treat_all", "treat_none"] if index == 0 else ["model"]
            long = curve.melt(id_vars="threshold", value_vars=keep, var_name="strategy",
                              value_name="net_benefit")
            long["strategy"] = long["strategy"].replace({"model": model})
            parts.append(long.assign(cohort=cohort))
    if not parts:
        return pd.DataFrame(columns=["cohort", "strategy", "threshold", "net_benefit"])
    return pd.concat(parts, ignore_index=True)[["cohort", "strategy", "threshold",
                                                "net_benefit"]]
