"""Evaluation of 3D RP-Net (notebook 04): AUCs, operating points, paired DeLong tests,
calibration, decision curves, segmentation summaries, handcrafted baselines, ``metrics.json``
and the CSV tables; :func:`run_evaluation` runs them all. Inputs (docs/CONTRACTS.md) are read
and made into per-patient tables (scores, integrated model, segmentation) by
:mod:`utils.evaluation.scoring`. Figures: :mod:`utils.evaluation.plots`; attribution maps: :mod:`utils.evaluation.explain`;
README table: :mod:`utils.evaluation.report`.

Every statistic comes from :mod:`utils.evaluation.stats` or :mod:`utils.evaluation.segmetrics`; the methods are
named in each function's docstring. A cohort with one class (possible in the 8-patient smoke
cohorts) gives NaN for every statistic that needs both classes, with the reason in ``note``.
Numbers computed on the phantom are **not** the paper's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.config import TIMEPOINTS, metrics_json
from utils.evaluation import scoring as sc
from utils.evaluation import stats as st
from utils.evaluation.baseline import HANDCRAFTED_GT, HANDCRAFTED_PRED, baseline_rows
from utils.evaluation.scoring import MAIN_MODEL, labels_scores
from utils.io import write_atomic, write_json_atomic
from utils.repro import derive_seed

PRIMARY_METHOD = "closest_topleft"
METRIC_KEYS: tuple[str, ...] = ("auc", "auc_ci_low", "auc_ci_high", "sensitivity",
                                "specificity", "dice_pre", "dice_post", "hd95_pre",
                                "hd95_post", "oracle_auc", "image_oracle_auc")


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
               "n_missing": n_missing, "note": st.undefined_reason(y)}
        row.update(_auc_stats(y, s, n_boot, level, derive_seed(seed, cohort, model))
                   if not row["note"] else dict.fromkeys(_AUC_KEYS, np.nan))
        row["note"] = row["note"] or st.variance_undefined(y)
        rows.append(row)
    return _ordered(pd.DataFrame(rows), scores)


_AUC_KEYS = ("auc", "auc_ci_low", "auc_ci_high", "auc_boot_low", "auc_boot_high",
             "average_precision")


def _auc_stats(y: np.ndarray, s: np.ndarray, n_boot: int, level: float, seed: int) -> dict:
    auc, low, high = st.delong_ci(y, s, level)
    with warnings.catch_warnings():  # degenerate bootstrap distributions in tiny cohorts
        warnings.simplefilter("ignore")
        _, boot_low, boot_high = st.bootstrap_auc_ci(y, s, n_resamples=n_boot, level=level,
                                                     seed=seed)
    ap = st.pr_curve(y, s)["average_precision"]
    return dict(zip(_AUC_KEYS, (auc, low, high, boot_low, boot_high, ap), strict=True))


def _ordered(table: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by cohort order, then model order."""
    if table.empty:
        return table
    cohort_rank = {c: i for i, c in enumerate(sc.cohorts_in(scores))}
    model_rank = {m: i for i, m in enumerate(sc.models_in(scores))}
    key = table["cohort"].map(cohort_rank) * 1000 + table["model"].map(model_rank)
    return table.assign(_key=key.to_numpy()).sort_values("_key", kind="stable").drop(
        columns="_key").reset_index(drop=True)


# ----------------------------------------------------------------------------- operating points
def choose_operating_points(scores: pd.DataFrame,
                            methods: Sequence[str] = st.THRESHOLD_METHODS,
                            cohort: str = "training") -> pd.DataFrame:
    """Threshold per model and method, chosen on ``cohort`` only (default training; its deep
    scores are in-sample, so the threshold may be optimistic): ``closest_topleft`` minimises
    the distance to (0, 1) as the authors' code, ``youden`` maximises J
    (:func:`utils.evaluation.stats.choose_threshold`; positive when score >= threshold)."""
    rows = []
    for model in sc.models_in(scores):
        y, s, _ = labels_scores(scores[(scores["model"] == model) & (scores["cohort"] == cohort)])
        note = st.undefined_reason(y)
        for method in methods:
            threshold = np.nan if note else st.choose_threshold(y, s, method)
            rows.append({"model": model, "method": method, "threshold": threshold,
                         "chosen_on": cohort, "note": note})
    return pd.DataFrame(rows)


_RATES = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


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
                row.update(st.binary_rates(y, s, float(chosen["threshold"]), level))
                row["note"] = st.undefined_reason(y)
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
        return sc.fmt_ci(row.get(name), row.get(low), row.get(high), digits)

    out = table[["cohort", "model", "n", "n_pcr"]].copy()
    out["AUC (DeLong 95% CI)"] = [cell(r, "auc", "auc_ci_low", "auc_ci_high")
                                  for _, r in table.iterrows()]
    out["bootstrap CI"] = [sc.fmt_range(r["auc_boot_low"], r["auc_boot_high"], digits)
                           for _, r in table.iterrows()]
    for name in _RATES:
        if name in table:
            out[name] = [cell(r, name, f"{name}_low", f"{name}_high")
                         for _, r in table.iterrows()]
    return out.set_index(["cohort", "model"])


# ----------------------------------------------------------------------------- paired tests
@dataclass(frozen=True)
class Comparison:
    """A paired comparison of model ``a`` against ``b`` on the same patients."""

    a: str
    b: str
    family: str
    question: str


def default_comparisons(models: Iterable[str]) -> list[Comparison]:
    """Full model vs each ablation and each volume baseline; integrated vs imaging model."""
    present = set(models)
    found = [Comparison(MAIN_MODEL, m, "ablation", f"full > {m}?") for m in sc.ABLATIONS]
    found += [Comparison(MAIN_MODEL, m, "handcrafted baseline", f"full > {m}?")
              for m in sc.HANDCRAFTED]
    found += [Comparison(MAIN_MODEL, m, "volume baseline", f"full > {m}?")
              for m in (sc.VOLUME_GT, sc.VOLUME_PRED)]
    found.append(Comparison(sc.INTEGRATED, MAIN_MODEL, "integrated", "integrated > full?"))
    return [c for c in found if {c.a, c.b} <= present]


def paired_delong_tests(scores: pd.DataFrame, comparisons: Sequence[Comparison] | None = None,
                        level: float = 0.95) -> pd.DataFrame:
    """Paired DeLong tests (:func:`utils.evaluation.stats.delong_paired_test`) of each comparison in each
    cohort, on the patients scored by both models: two-sided p and one-sided p for
    H1: AUC_a > AUC_b, the AUC difference with its ``level`` CI, and Holm-adjusted one-sided
    p-values within each cohort (unadjusted p-values are also reported)."""
    comparisons = default_comparisons(scores["model"]) if comparisons is None else comparisons
    wide = scores.pivot_table(index=["patient_id", "cohort", "pcr"], columns="model",
                              values="score", dropna=False).reset_index()
    rows = []
    for cohort in sc.cohorts_in(scores):
        for comparison in comparisons:
            if {comparison.a, comparison.b} <= set(wide.columns):
                group = wide[wide["cohort"] == cohort].dropna(subset=[comparison.a,
                                                                       comparison.b])
                rows.append({"cohort": cohort, **_paired_row(group, comparison, level)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_greater_holm"] = table.groupby("cohort")["p_greater"].transform(
            lambda p: pd.Series(st.holm(p.to_numpy()), index=p.index))
    return table


def _paired_row(group: pd.DataFrame, comparison: Comparison, level: float) -> dict:
    y = group["pcr"].to_numpy(int)
    row = {"model_a": comparison.a, "model_b": comparison.b, "family": comparison.family,
           "question": comparison.question, "n": int(y.size), "n_pcr": int(y.sum()),
           "note": st.undefined_reason(y)}
    keys = ("auc_a", "auc_b", "diff", "diff_ci_low", "diff_ci_high", "z", "p_two_sided",
            "p_greater")
    if row["note"]:
        return {**row, **dict.fromkeys(keys, np.nan)}
    row["note"] = st.variance_undefined(y)
    a, b = group[comparison.a].to_numpy(float), group[comparison.b].to_numpy(float)
    two = st.delong_paired_test(y, a, b, "two-sided", level)
    one = st.delong_paired_test(y, a, b, "greater", level)
    values = (two["auc1"], two["auc2"], two["diff"], two["ci_low"], two["ci_high"], two["z"],
              two["p"], one["p"])
    return {**row, **dict(zip(keys, values, strict=True))}


# ----------------------------------------------------------------------------- segmentation
def _q(p: float):
    def quantile(x: pd.Series) -> float:
        return float(x.quantile(p)) if x.notna().any() else np.nan
    quantile.__name__ = f"q{int(p * 100)}"
    return quantile


def segmentation_summary(seg: pd.DataFrame) -> pd.DataFrame:
    """Per cohort, model and time point: n, Dice median [IQR] and mean, HD95 and MSD median
    [IQR] over patients with a defined value, and how many HD95 are undefined (one mask
    empty)."""
    columns = ["cohort", "model", "timepoint", "n", "dice_median", "dice_q25", "dice_q75",
               "dice_mean", "hd95_median", "hd95_q25", "hd95_q75", "hd95_undefined",
               "msd_median", "msd_q25", "msd_q75"]
    if seg.empty:
        return pd.DataFrame(columns=columns)
    grouped = seg.groupby(["cohort", "model", "timepoint"], sort=False)
    table = grouped.agg(
        n=("dice", "size"), dice_median=("dice", "median"), dice_q25=("dice", _q(0.25)),
        dice_q75=("dice", _q(0.75)), dice_mean=("dice", "mean"),
        hd95_median=("hd95_mm", "median"), hd95_q25=("hd95_mm", _q(0.25)),
        hd95_q75=("hd95_mm", _q(0.75)), hd95_undefined=("hd95_mm", lambda x: int(x.isna().sum())),
        msd_median=("msd_mm", "median"), msd_q25=("msd_mm", _q(0.25)),
        msd_q75=("msd_mm", _q(0.75))).reset_index()
    return table[columns]


# ----------------------------------------------------------------------------- calibration, DCA
def calibration_tables(scores: pd.DataFrame, models: Sequence[str],
                       cohorts: Sequence[str] = sc.VALIDATION_COHORTS,
                       n_bins: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability curve (``n_bins`` equal-width bins, empty bins omitted) and Brier score
    (:func:`utils.evaluation.stats.calibration`) of probability models per cohort.
    Returns (curve points, Brier table); one-class cohorts get a NaN Brier with a note."""
    points, briers = [], []
    for cohort in cohorts:
        for model in models:
            y, p, _ = labels_scores(scores[(scores["model"] == model)
                                           & (scores["cohort"] == cohort)])
            note = st.undefined_reason(y)
            if y.size == 0:
                continue
            brier = np.nan
            if not note:
                result = st.calibration(y, p, n_bins=n_bins)
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
                         cohorts: Sequence[str] = sc.VALIDATION_COHORTS,
                         thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """Net benefit (Vickers & Elkin 2006; :func:`utils.evaluation.stats.net_benefit`) of each
    probability model, treat-all and treat-none, per cohort and threshold probability.
    One-class cohorts are skipped."""
    thresholds = np.round(np.arange(0.01, 0.81, 0.01), 2) if thresholds is None else thresholds
    parts = []
    for cohort in cohorts:
        for index, model in enumerate(models):
            y, p, _ = labels_scores(scores[(scores["model"] == model)
                                           & (scores["cohort"] == cohort)])
            if st.undefined_reason(y):
                continue
            curve = st.net_benefit(y, p, thresholds)
            keep = ["model", "treat_all", "treat_none"] if index == 0 else ["model"]
            long = curve.melt(id_vars="threshold", value_vars=keep, var_name="strategy",
                              value_name="net_benefit")
            long["strategy"] = long["strategy"].replace({"model": model})
            parts.append(long.assign(cohort=cohort))
    if not parts:
        return pd.DataFrame(columns=["cohort", "strategy", "threshold", "net_benefit"])
    return pd.concat(parts, ignore_index=True)[["cohort", "strategy", "threshold",
                                                "net_benefit"]]


# ----------------------------------------------------------------------------- metrics.json
def _clean(value):
    """JSON-safe copy: NaN/inf -> None, NumPy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_metrics(auc: pd.DataFrame, performance: pd.DataFrame, seg_summary: pd.DataFrame,
                  meta: Mapping, method: str = PRIMARY_METHOD,
                  seeds: pd.DataFrame | None = None) -> dict:
    """``metrics.json`` content: ``meta`` plus ``cohorts[cohort][model]`` with AUC (DeLong and
    bootstrap CIs), threshold rates at the ``method`` operating point, segmentation medians
    (Dice, HD95, MSD per time point), the cohort's oracle and image-only oracle AUCs (None
    when absent) and, for models trained with several seeds, the per-seed AUC summary
    (:func:`utils.evaluation.scoring.seed_summary`). The oracles themselves are not listed as models."""
    oracle = auc[auc["model"] == sc.ORACLE].set_index("cohort")["auc"].to_dict()
    image_oracle = auc[auc["model"] == sc.IMAGE_ORACLE].set_index("cohort")["auc"].to_dict()
    rates = performance[performance["method"] == method].set_index(["cohort", "model"])
    seg = seg_summary.set_index(["cohort", "model", "timepoint"]) if len(seg_summary) else None
    seeds = (seeds.set_index(["cohort", "model"]) if seeds is not None and len(seeds)
             else None)
    cohorts: dict[str, dict] = {}
    for _, row in auc[~auc["model"].isin(sc.ORACLES)].iterrows():
        key = (row["cohort"], row["model"])
        entry = {k: row[k] for k in ("n", "n_pcr", *_AUC_KEYS)}
        entry["auc_note"] = row["note"]
        entry.update(_rate_entry(rates, key))
        entry.update(_seg_entry(seg, key))
        entry["oracle_auc"] = oracle.get(row["cohort"], np.nan)
        entry["image_oracle_auc"] = image_oracle.get(row["cohort"], np.nan)
        if seeds is not None and key in seeds.index:
            entry.update(seeds.loc[key].to_dict())
            entry["n_seeds"] = int(entry["n_seeds"])
        cohorts.setdefault(row["cohort"], {})[row["model"]] = entry
    return _clean({"meta": dict(meta), "cohorts": cohorts})


def _rate_entry(rates: pd.DataFrame, key: tuple[str, str]) -> dict:
    names = ["threshold", *[f"{r}{s}" for r in _RATES for s in ("", "_low", "_high")]]
    if key not in rates.index:
        return dict.fromkeys(names, np.nan)
    row = rates.loc[key]
    return {name: row.get(name, np.nan) for name in names}


def _seg_entry(seg: pd.DataFrame | None, key: tuple[str, str]) -> dict:
    out = {}
    for timepoint in TIMEPOINTS:
        index = (*key, timepoint)
        found = seg is not None and index in seg.index
        for name, column in (("dice", "dice_median"), ("hd95", "hd95_median"),
                             ("msd", "msd_median")):
            out[f"{name}_{timepoint}"] = seg.loc[index, column] if found else np.nan
    return out


def metrics_meta(profile: str, data_label: str, integrated: sc.IntegratedModel | None,
                 n_boot: int, level: float = 0.95) -> dict:
    """The ``meta`` block of ``metrics.json``: what the numbers are and how they were made."""
    return {
        "profile": profile, "data": data_label,
        "note": "numbers measured on this package's data; for the phantom they are NOT the "
                "paper's numbers",
        "auc": "Mann-Whitney AUC; CI by DeLong (normal approximation, clipped to [0, 1]); "
               f"auc_boot_*: stratified percentile bootstrap, {n_boot} resamples",
        "level": level,
        "threshold": f"{PRIMARY_METHOD} (closest to (0, 1)) chosen on the training cohort, "
                     "applied unchanged; rates with Wilson score CIs",
        "segmentation": "medians over patients of predicted vs cached ground-truth ROI masks; "
                        "HD95 = 95th percentile of pooled symmetric surface distances (mm); "
                        "msd = mean symmetric surface distance (mm); HD95 undefined (null) "
                        "when exactly one mask is empty",
        "integrated_fit": integrated.fit_on if integrated is not None else None,
        "volume_reduction": "score 1 - V_post / V_pre",
        "seeds": "a model trained with several seeds is scored by its mean logit over the seeds "
                 "(auc, CIs, tests); auc_seed_mean/sd/min/max summarise the per-seed AUCs",
        "training_scores": "training-cohort scores of the networks are out-of-fold scores of "
                           "the cross-validated readout (utils.training.readout)",
        "handcrafted": "logistic regression on log volume ratio, mean post DWI and bright-DWI "
                       "fraction inside the predicted (handcrafted_pred) or ground-truth "
                       "(handcrafted_gt) masks, fitted on the training cohort",
        "image_oracle_auc": "AUC of the phantom's latent imaging response z_img: the ceiling "
                            "for an imaging-only model (oracle_auc includes the markers)",
    }


# ----------------------------------------------------------------------------- writing
def write_tables(results_dir: str | Path, tables: Mapping[str, pd.DataFrame]) -> list[Path]:
    """Write each table as ``results_dir/<name>.csv`` atomically (no index, 6 digits)."""
    written = []
    for name, table in tables.items():
        target = Path(results_dir) / f"{name}.csv"
        write_atomic(target, lambda tmp, t=table: t.to_csv(tmp, index=False,
                                                            float_format="%.6g"))
        written.append(target)
    return written


def write_metrics(results_dir: str | Path, metrics: Mapping) -> Path:
    """``results_dir/metrics.json`` (atomic, sorted keys, NaN as null)."""
    return write_json_atomic(metrics_json(results_dir), _clean(metrics))


# ----------------------------------------------------------------------------- one call
@dataclass
class Evaluation:
    """Every table of one evaluation run."""

    scores: pd.DataFrame
    auc: pd.DataFrame
    thresholds: pd.DataFrame
    performance: pd.DataFrame
    tests: pd.DataFrame
    integrated: sc.IntegratedModel | None
    segmentation: pd.DataFrame
    seg_summary: pd.DataFrame
    calibration: pd.DataFrame
    brier: pd.DataFrame
    decision: pd.DataFrame
    metrics: dict
    seed_aucs: pd.DataFrame | None = None
    handcrafted: pd.DataFrame | None = None  # baseline coefficients

    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables written to the results folder, by file stem."""
        out = {"auc_table": self.auc, "operating_points": self.thresholds,
               "performance_table": cohort_performance(self.auc, self.performance),
               "performance_all_thresholds": self.performance, "paired_delong_tests": self.tests,
               "segmentation_per_patient": self.segmentation,
               "segmentation_summary": self.seg_summary, "calibration_brier": self.brier}
        if self.integrated is not None:
            out["integrated_coefficients"] = self.integrated.coefficients
        if self.seed_aucs is not None:
            out["seed_aucs"] = self.seed_aucs
        if self.handcrafted is not None and len(self.handcrafted):
            out["handcrafted_coefficients"] = self.handcrafted
        return out


def handcrafted_baselines(patients: pd.DataFrame, cache_dir: str | Path | None,
                          masks_dir: str | Path | None, folds: pd.DataFrame | None,
                          main_model: str = MAIN_MODEL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score rows and coefficients of the handcrafted baselines (:mod:`utils.evaluation.baseline`) on
    the main model's predicted masks and on the ground-truth masks, for the patients and
    labels of ``patients`` (``patient_id, cohort, centre, pcr``); empty when the cache,
    masks or folds are missing."""
    if cache_dir is None or folds is None or not Path(cache_dir).exists():
        return pd.DataFrame(), pd.DataFrame()
    sources: dict[str, tuple[Path, str] | None] = {HANDCRAFTED_GT: None}
    if masks_dir is not None and (Path(masks_dir) / main_model).exists():
        sources = {HANDCRAFTED_PRED: (Path(masks_dir), main_model), **sources}
    return baseline_rows(patients, cache_dir, folds, sources)


def _with_integrated(scores: pd.DataFrame, patients: pd.DataFrame, split: pd.DataFrame | None,
                     predictions: pd.DataFrame) -> tuple[pd.DataFrame, sc.IntegratedModel]:
    """``scores`` plus the integrated model's rows, and the fitted model."""
    inputs = sc.integrated_inputs(scores, patients)
    integrated = sc.fit_integrated(inputs, sc.tune_ids(split),
                                   out_of_fold=sc.training_scores_out_of_fold(predictions))
    return pd.concat([scores, sc.integrated_scores(integrated, inputs)],
                     ignore_index=True), integrated


def run_evaluation(predictions: pd.DataFrame, patients: pd.DataFrame | None = None,
                   split: pd.DataFrame | None = None, oracle: pd.DataFrame | None = None,
                   masks_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                   profile: str = "demo", data_label: str = "phantom (synthetic)",
                   n_boot: int = 2000, seed: int = 0, folds: pd.DataFrame | None = None
                   ) -> Evaluation:
    """The whole evaluation in the notebook's order (the notebook runs the same steps one by
    one). ``patients`` (manifest patient table) enables the integrated model; ``masks_dir``
    and ``cache_dir`` enable segmentation metrics and, with ``folds``, the handcrafted
    baselines; ``oracle`` adds the oracle AUCs. Models trained with several seeds are scored
    by their seed average; per-seed AUCs are summarised in ``metrics.json``."""
    seed_aucs = sc.seed_auc_table(predictions)
    averaged = sc.seed_average(predictions)
    main = averaged[averaged["model"] == MAIN_MODEL]
    scores, handcrafted, integrated = sc.score_table(averaged, oracle), None, None
    if patients is not None:
        rows, handcrafted = handcrafted_baselines(main[sc.ID_COLUMNS], cache_dir, masks_dir,
                                                  folds)
        scores = pd.concat([scores, rows], ignore_index=True) if len(rows) else scores
        scores, integrated = _with_integrated(scores, patients, split, predictions)
    auc = auc_table(scores, n_boot=n_boot, seed=seed)
    thresholds = choose_operating_points(scores)
    performance = performance_table(scores, thresholds)
    seg = sc.segmentation_table(masks_dir, cache_dir, main)
    seg_summary = segmentation_summary(seg)
    prob_models = [m for m in (MAIN_MODEL, sc.INTEGRATED) if m in set(scores["model"])]
    curve, brier = calibration_tables(scores, prob_models)
    metrics = build_metrics(auc, performance, seg_summary,
                            metrics_meta(profile, data_label, integrated, n_boot),
                            seeds=sc.seed_summary(seed_aucs))
    return Evaluation(scores, auc, thresholds, performance, paired_delong_tests(scores),
                      integrated, seg, seg_summary, curve, brier,
                      decision_curve_table(scores, prob_models), metrics, seed_aucs,
                      handcrafted)
