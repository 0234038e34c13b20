"""Evaluation of 3D RP-Net (notebook 04): discrimination, operating points, paired DeLong tests,
baselines, the integrated (imaging + blood markers) model, segmentation agreement,
calibration, decision curves, Grad-CAM, the figures, ``metrics.json`` and the README table.

Inputs are the files of earlier stages (docs/CONTRACTS.md): ``predictions.csv`` (one row per
patient per model), ``split.csv`` (training patient -> fit / tune), predicted masks, the
preprocessing cache, the manifest (blood markers) and, for the phantom, ``oracle.csv``.

Every statistic comes from :mod:`utils.stats` or :mod:`utils.segmetrics`; the methods are
named in each function's docstring. A cohort with one class (possible in the 8-patient smoke
cohorts) gives NaN for every statistic that needs both classes, with the reason in ``note``.
Numbers computed on the phantom are **not** the paper's.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage

from . import segmetrics
from . import stats as st
from .baseline import HANDCRAFTED_GT, HANDCRAFTED_PRED, baseline_rows
from .config import COHORTS, SEQUENCES, TIMEPOINTS
from .io import write_atomic, write_json_atomic
from .manifest import MARKERS
from .repro import derive_seed

# ----------------------------------------------------------------------------- names
MAIN_MODEL = "full"
ABLATIONS: tuple[str, ...] = ("paper_head", "single_task", "pre_only", "post_only", "untied",
                              "bottleneck_join")
HANDCRAFTED: tuple[str, ...] = (HANDCRAFTED_PRED, HANDCRAFTED_GT)
VOLUME_GT = "volume_reduction_gt"
VOLUME_PRED = "volume_reduction_pred"
ORACLE = "oracle"
IMAGE_ORACLE = "image_oracle"
ORACLES: tuple[str, ...] = (ORACLE, IMAGE_ORACLE)
INTEGRATED = "integrated"
VALIDATION_COHORTS: tuple[str, ...] = COHORTS[1:]
PRIMARY_METHOD = "closest_topleft"
ID_COLUMNS = ["patient_id", "cohort", "centre", "pcr"]
PREDICTION_COLUMNS = ["model", "seed", *ID_COLUMNS, "score", "score_source", "vol_pre_true_ml",
                      "vol_post_true_ml", "vol_pre_pred_ml", "vol_post_pred_ml", "dice_pre",
                      "dice_post"]
INTEGRATED_FEATURES: tuple[str, ...] = ("deep_logit", *MARKERS)
VOLUME_FLOOR_ML = 1e-3  # 1 mm^3: an empty predicted pre-treatment mask still gives a score
METRIC_KEYS: tuple[str, ...] = ("auc", "auc_ci_low", "auc_ci_high", "sensitivity",
                                "specificity", "dice_pre", "dice_post", "hd95_pre",
                                "hd95_post", "oracle_auc", "image_oracle_auc")
README_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")

MODEL_LABELS: dict[str, str] = {
    "full": "3D RP-Net (full)",
    "paper_head": "release's pCR head (whole-ROI pooling)",
    HANDCRAFTED_PRED: "handcrafted (predicted masks)",
    HANDCRAFTED_GT: "handcrafted (GT masks)",
    IMAGE_ORACLE: "image-only oracle (phantom latent)",
    "single_task": "single-task (pCR only)",
    "pre_only": "pre-treatment exam only",
    "post_only": "post-treatment exam only",
    "untied": "untied branch weights",
    "bottleneck_join": "bottleneck join only",
    VOLUME_GT: "volume reduction (GT masks)",
    VOLUME_PRED: "volume reduction (predicted masks)",
    INTEGRATED: "integrated (RP-Net + CEA, CA19-9)",
    ORACLE: "oracle (true phantom probability)",
}
COHORT_LABELS = {"training": "training", "internal_validation": "internal validation",
                 "external_validation": "external validation"}

# Paper: Jin et al., Nat Commun 12:1851 (2021), abstract.
PAPER_AUC = {"full": {"internal_validation": (0.95, 0.91, 0.98),
                      "external_validation": (0.92, 0.87, 0.96)},
             INTEGRATED: (0.97, 0.93, 0.99)}

# figure file stem -> (notebook, what it shows, paper analogue)
FIGURES: dict[str, tuple[str, str, str]] = {
    "fig00_example_exams": ("00_data", "example pre/post T2W and DWI exams per centre",
                            "example MRI of responders and non-responders"),
    "fig01_bias_correction": ("01_preprocessing", "T2W before/after N4 and the bias field",
                              "— (added: preprocessing QC)"),
    "fig01_registration_checkerboard": ("01_preprocessing",
                                        "pre/post checkerboard before and after registration",
                                        "— (added: the release did not register)"),
    "fig01_intensity_normalisation": ("01_preprocessing",
                                      "per-centre intensity histograms before/after",
                                      "— (added: preprocessing QC)"),
    "fig01_dwi_clip": ("01_preprocessing", "post-treatment tumour DWI under the former and "
                       "the current clip rule", "—"),
    "fig01_crop_montage": ("01_preprocessing", "final ROI crops with tumour masks",
                           "network inputs"),
    "fig02_architecture": ("02_model", "schematic of the Siamese RP-Net",
                           "network architecture diagram"),
    "fig02_tumour_head": ("02_model", "where the tumour-guided pCR head pools, per join",
                          "— (this package's head)"),
    "fig02_untrained_forward_pass": ("02_model", "one patient through the untrained network",
                                     "— (added)"),
    "fig03_training_curves": ("03_training", "loss, pCR loss, Dice and AUC per epoch (fit / tune)",
                              "— (added)"),
    "fig04_roc": ("04_evaluation", "ROC per cohort, AUC with DeLong 95% CI",
                  "ROC curves of 3D RP-Net in training and validation cohorts"),
    "fig04_pr": ("04_evaluation", "precision-recall curves per cohort", "— (added)"),
    "fig04_ablations": ("04_evaluation", "AUC with CI of ablations and baselines, DeLong p",
                        "comparison with single-task, single-time-point models and "
                        "volume reduction"),
    "fig04_segmentation": ("04_evaluation", "Dice and HD95 per cohort and time point",
                           "segmentation performance (Dice) pre and post treatment"),
    "fig04_overlays": ("04_evaluation", "best, median and worst segmentation on T2W",
                       "example segmentations"),
    "fig04_integrated_roc": ("04_evaluation", "imaging vs integrated model ROC",
                             "ROC of the integrated model with blood tumour markers"),
    "fig04_calibration": ("04_evaluation", "reliability curves and Brier scores",
                          "— (added)"),
    "fig04_decision_curves": ("04_evaluation", "net benefit vs treat-all / treat-none",
                              "— (added)"),
    "fig04_attribution": ("04_evaluation", "input x gradient of the pCR logit on DWI "
                          "(the voxels that drive the prediction)",
                          "visualisation of the regions driving the prediction"),
}


# ----------------------------------------------------------------------------- reading
def load_predictions(path: str | Path) -> pd.DataFrame:
    """Read ``predictions.csv`` (contract columns), checking columns and duplicates."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path.name} not found in {path.parent.name}/: run "
                                "notebooks/03_training.ipynb first (it writes the predictions)")
    table = pd.read_csv(path, dtype={"patient_id": str, "centre": str, "model": str})
    missing = [c for c in ["model", *ID_COLUMNS, "score"] if c not in table.columns]
    if missing:
        raise ValueError(f"{path.name}: missing columns {missing}")
    if "seed" not in table.columns:
        table["seed"] = 0
    duplicated = table.duplicated(["model", "seed", "patient_id"])
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise ValueError(f"{path.name}: {int(duplicated.sum())} duplicate rows, e.g. model "
                         f"{first['model']} patient {first['patient_id']}")
    table["pcr"] = table["pcr"].astype(int)
    return table


def read_optional_csv(path: str | Path) -> pd.DataFrame | None:
    """A CSV with string patient ids, or None when the file does not exist."""
    path = Path(path)
    return pd.read_csv(path, dtype={"patient_id": str, "centre": str}) if path.exists() else None


def tune_ids(split: pd.DataFrame | None) -> set[str]:
    """Training patients of the tune (model-selection) subset in ``split.csv``."""
    if split is None:
        return set()
    for column in split.columns.drop("patient_id", errors="ignore"):
        is_tune = split[column].astype(str).str.lower() == "tune"
        if is_tune.any():
            return set(split.loc[is_tune, "patient_id"].astype(str))
    return set()


# ----------------------------------------------------------------------------- seeds
def seed_average(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per model and patient: the mean logit over the model's seeds (a seed
    ensemble, ``n_seeds`` column); the other columns come from seed 0 (its masks)."""
    table = predictions.reset_index(drop=True)
    if "seed" not in table.columns:
        table["seed"] = 0
    table["_logit"] = logit(table["score"])
    grouped = table.groupby(["model", "patient_id"], sort=False)
    mean_logit = grouped["_logit"].transform("mean")
    table["n_seeds"] = grouped["seed"].transform("nunique")
    table["score"] = 1.0 / (1.0 + np.exp(-mean_logit))
    first = table.sort_values("seed", kind="stable").drop_duplicates(["model", "patient_id"])
    return first.drop(columns=["_logit"]).sort_index().reset_index(drop=True)


def seed_auc_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """AUC of every model, seed and cohort (``model, seed, cohort, n, n_pcr, auc``)."""
    rows = []
    table = predictions if "seed" in predictions.columns else predictions.assign(seed=0)
    for (model, seed, cohort), group in table.groupby(["model", "seed", "cohort"], sort=True):
        y, s, _ = _xy(group)
        reason = _undefined_reason(y)
        rows.append({"model": model, "seed": int(seed), "cohort": cohort, "n": len(y),
                     "n_pcr": int(y.sum()), "auc": np.nan if reason else st.roc_auc(y, s)})
    return pd.DataFrame(rows, columns=["model", "seed", "cohort", "n", "n_pcr", "auc"])


def seed_summary(seed_aucs: pd.DataFrame) -> pd.DataFrame:
    """Per model and cohort: number of seeds, mean, SD (ddof 1), min and max AUC."""
    grouped = seed_aucs.groupby(["model", "cohort"], sort=False)["auc"]
    table = grouped.agg(n_seeds="count", auc_seed_mean="mean", auc_seed_sd="std",
                        auc_seed_min="min", auc_seed_max="max").reset_index()
    return table


def training_scores_out_of_fold(predictions: pd.DataFrame, model: str = MAIN_MODEL) -> bool:
    """True when every training-cohort score of ``model`` is an out-of-fold readout score."""
    rows = predictions[(predictions["model"] == model) & (predictions["cohort"] == "training")]
    return (len(rows) > 0 and "score_source" in rows.columns
            and bool((rows["score_source"] == "out_of_fold").all()))


# ----------------------------------------------------------------------------- scores
def volume_reduction(vol_pre_ml, vol_post_ml, floor_ml: float = VOLUME_FLOOR_ML) -> np.ndarray:
    """Volume-reduction score 1 - V_post / V_pre (higher = more shrinkage = more likely pCR);
    V_pre is floored at ``floor_ml`` so that an empty pre-treatment mask gives a finite
    score."""
    pre = np.maximum(np.asarray(vol_pre_ml, dtype=float), floor_ml)
    return 1.0 - np.asarray(vol_post_ml, dtype=float) / pre


def score_table(predictions: pd.DataFrame, oracle: pd.DataFrame | None = None,
                main_model: str = MAIN_MODEL) -> pd.DataFrame:
    """Long table ``model, patient_id, cohort, centre, pcr, score`` of every model in
    ``predictions`` (one row per patient: seed-average them first, :func:`seed_average`) plus
    the baselines: volume reduction from ground-truth and from the main model's predicted
    masks, and, for the phantom, the oracle (true pCR probability) and the image-only oracle
    (the latent imaging response ``z_img``, the ceiling for an imaging model)."""
    main = predictions[predictions["model"] == main_model]
    if main.empty:
        raise ValueError(f"no rows for the main model {main_model!r}; models present: "
                         f"{sorted(predictions['model'].unique())}")
    parts = [predictions[["model", *ID_COLUMNS, "score"]]]
    ids = main[ID_COLUMNS].reset_index(drop=True)
    for name, kind in ((VOLUME_GT, "true"), (VOLUME_PRED, "pred")):
        columns = [f"vol_pre_{kind}_ml", f"vol_post_{kind}_ml"]
        if set(columns) <= set(main.columns):
            score = volume_reduction(main[columns[0]], main[columns[1]])
            parts.append(ids.assign(model=name, score=score))
    if oracle is not None:
        for name, column in ((ORACLE, "p_true"), (IMAGE_ORACLE, "z_img")):
            if column in oracle.columns:
                merged = ids.merge(oracle[["patient_id", column]], on="patient_id", how="left")
                parts.append(merged.rename(columns={column: "score"}).assign(model=name))
    table = pd.concat(parts, ignore_index=True)[["model", *ID_COLUMNS, "score"]]
    return table.astype({"score": float, "pcr": int})


def models_in(scores: pd.DataFrame) -> list[str]:
    """Models of a score table in display order (main, ablations, baselines, others)."""
    order = [MAIN_MODEL, *ABLATIONS, *HANDCRAFTED, VOLUME_GT, VOLUME_PRED, INTEGRATED,
             IMAGE_ORACLE, ORACLE]
    present = list(dict.fromkeys(scores["model"]))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def _cohorts_in(scores: pd.DataFrame) -> list[str]:
    present = set(scores["cohort"])
    return [c for c in COHORTS if c in present] + sorted(present - set(COHORTS))


def _undefined_reason(y: np.ndarray) -> str:
    """Why a two-class statistic is undefined for labels ``y`` ('' when it is defined)."""
    n_pos = int(np.sum(y))
    if y.size == 0:
        return "no patients"
    if n_pos in (0, y.size):
        return f"one class only ({y.size - n_pos} non-pCR, {n_pos} pCR)"
    return ""


def _xy(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and scores without missing scores, and the number of missing scores."""
    kept = group.dropna(subset=["score"])
    return (kept["pcr"].to_numpy(int), kept["score"].to_numpy(float),
            len(group) - len(kept))


# ----------------------------------------------------------------------------- AUC
def auc_table(scores: pd.DataFrame, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> pd.DataFrame:
    """AUC per cohort and model: Mann-Whitney AUC with the DeLong CI (normal approximation,
    Sun & Xu fast algorithm; :func:`utils.stats.delong_ci`) and, as a cross-check, the
    stratified percentile bootstrap CI (``n_boot`` resamples of positives and negatives
    separately; seed derived from ``seed``, cohort and model), plus average precision."""
    rows = []
    for (cohort, model), group in scores.groupby(["cohort", "model"], sort=False):
        y, s, n_missing = _xy(group)
        row = {"cohort": cohort, "model": model, "n": int(y.size), "n_pcr": int(y.sum()),
               "n_missing": n_missing, "note": _undefined_reason(y)}
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
    cohort_rank = {c: i for i, c in enumerate(_cohorts_in(scores))}
    model_rank = {m: i for i, m in enumerate(models_in(scores))}
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
    (:func:`utils.stats.choose_threshold`; positive when score >= threshold)."""
    rows = []
    for model in models_in(scores):
        y, s, _ = _xy(scores[(scores["model"] == model) & (scores["cohort"] == cohort)])
        note = _undefined_reason(y)
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
        y, s, _ = _xy(group)
        for _, chosen in thresholds[thresholds["model"] == model].iterrows():
            row = {"cohort": cohort, "model": model, "method": chosen["method"],
                   "n": int(y.size), "n_pcr": int(y.sum())}
            if np.isnan(chosen["threshold"]):
                row.update({"threshold": np.nan, "note": "no threshold: " + chosen["note"]})
            else:
                row.update(st.binary_rates(y, s, float(chosen["threshold"]), level))
                row["note"] = _undefined_reason(y)
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
        return _fmt_ci(row.get(name), row.get(low), row.get(high), digits)

    out = table[["cohort", "model", "n", "n_pcr"]].copy()
    out["AUC (DeLong 95% CI)"] = [cell(r, "auc", "auc_ci_low", "auc_ci_high")
                                  for _, r in table.iterrows()]
    out["bootstrap CI"] = [_fmt_range(r["auc_boot_low"], r["auc_boot_high"], digits)
                           for _, r in table.iterrows()]
    for name in _RATES:
        if name in table:
            out[name] = [cell(r, name, f"{name}_low", f"{name}_high")
                         for _, r in table.iterrows()]
    return out.set_index(["cohort", "model"])


def _fmt_ci(value, low, high, digits: int = 2) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} ({_fmt_range(low, high, digits)})"


def _fmt_range(low, high, digits: int = 2) -> str:
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"{low:.{digits}f}–{high:.{digits}f}"


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
    found = [Comparison(MAIN_MODEL, m, "ablation", f"full > {m}?") for m in ABLATIONS]
    found += [Comparison(MAIN_MODEL, m, "handcrafted baseline", f"full > {m}?")
              for m in HANDCRAFTED]
    found += [Comparison(MAIN_MODEL, m, "volume baseline", f"full > {m}?")
              for m in (VOLUME_GT, VOLUME_PRED)]
    found.append(Comparison(INTEGRATED, MAIN_MODEL, "integrated", "integrated > full?"))
    return [c for c in found if {c.a, c.b} <= present]


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


def paired_delong_tests(scores: pd.DataFrame, comparisons: Sequence[Comparison] | None = None,
                        level: float = 0.95) -> pd.DataFrame:
    """Paired DeLong tests (:func:`utils.stats.delong_paired_test`) of each comparison in each
    cohort, on the patients scored by both models: two-sided p and one-sided p for
    H1: AUC_a > AUC_b, the AUC difference with its ``level`` CI, and Holm-adjusted one-sided
    p-values within each cohort (unadjusted p-values are also reported)."""
    comparisons = default_comparisons(scores["model"]) if comparisons is None else comparisons
    wide = scores.pivot_table(index=["patient_id", "cohort", "pcr"], columns="model",
                              values="score", dropna=False).reset_index()
    rows = []
    for cohort in _cohorts_in(scores):
        for comparison in comparisons:
            if {comparison.a, comparison.b} <= set(wide.columns):
                group = wide[wide["cohort"] == cohort].dropna(subset=[comparison.a,
                                                                       comparison.b])
                rows.append({"cohort": cohort, **_paired_row(group, comparison, level)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_greater_holm"] = table.groupby("cohort")["p_greater"].transform(
            lambda p: pd.Series(holm(p.to_numpy()), index=p.index))
    return table


def _paired_row(group: pd.DataFrame, comparison: Comparison, level: float) -> dict:
    y = group["pcr"].to_numpy(int)
    row = {"model_a": comparison.a, "model_b": comparison.b, "family": comparison.family,
           "question": comparison.question, "n": int(y.size), "n_pcr": int(y.sum()),
           "note": _undefined_reason(y)}
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


# ----------------------------------------------------------------------------- integrated model
@dataclass
class IntegratedModel:
    """The fitted integrated model and where it was fitted."""

    pipeline: object
    features: tuple[str, ...]
    fit_on: str
    n_fit: int
    n_fit_pcr: int
    coefficients: pd.DataFrame = field(repr=False)
    intercept: float = 0.0


def logit(p, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p / (1 - p))


def integrated_inputs(scores: pd.DataFrame, patients: pd.DataFrame,
                      main_model: str = MAIN_MODEL) -> pd.DataFrame:
    """One row per patient: ids, pCR, the main model's deep score and its logit
    (``deep_logit``), and the four blood markers from the manifest's patient table."""
    main = scores[scores["model"] == main_model][[*ID_COLUMNS, "score"]]
    markers = patients[["patient_id", *MARKERS]]
    table = main.merge(markers, on="patient_id", how="left")
    return table.assign(deep_logit=logit(table["score"])).reset_index(drop=True)


def fit_integrated(inputs: pd.DataFrame, tune: set[str] | None = None,
                   min_per_class: int = 3, C: float = 1.0,
                   out_of_fold: bool = False) -> IntegratedModel:
    """Logistic regression of ``deep_logit`` + log1p(CEA, CA19-9 pre and post) (median
    imputation, standardisation, L2 with ``C``; :func:`utils.stats.fit_integrated_model`),
    fitted on **training-cohort rows only**.

    Rows: the training cohort's tune subset when it has at least ``min_per_class`` pCR and
    non-pCR patients (its deep scores are out-of-sample: the network never fitted them,
    although they guided model selection); otherwise the whole training cohort, whose deep
    scores are in-sample and optimistic, which inflates the deep-score coefficient.
    ``out_of_fold=True`` (the training scores are out-of-fold readout scores,
    :mod:`utils.readout`): the whole training cohort.
    """
    training = inputs[inputs["cohort"] == "training"]
    subset = training[training["patient_id"].isin(tune or set())]
    counts = np.bincount(subset["pcr"].to_numpy(int), minlength=2)
    if out_of_fold:
        rows, fit_on = training, "whole training cohort (deep scores out-of-fold)"
    elif len(subset) and counts.min() >= min_per_class:
        rows, fit_on = subset, "training cohort, tune subset (deep scores out-of-sample)"
    else:
        rows = training
        fit_on = (f"whole training cohort (deep scores in-sample); tune subset has "
                  f"{counts[1]} pCR / {counts[0]} non-pCR, fewer than {min_per_class} per class")
    pipeline = st.fit_integrated_model(rows, INTEGRATED_FEATURES, log_columns=MARKERS, C=C)
    return IntegratedModel(pipeline, INTEGRATED_FEATURES, fit_on, len(rows),
                           int(rows["pcr"].sum()),
                           st.coefficient_table(pipeline, INTEGRATED_FEATURES),
                           float(pipeline[-1].intercept_[0]))


def integrated_scores(model: IntegratedModel, inputs: pd.DataFrame) -> pd.DataFrame:
    """Integrated-model probabilities of every patient, as score-table rows."""
    prob = model.pipeline.predict_proba(inputs[list(model.features)].astype(float))[:, 1]
    return inputs[ID_COLUMNS].assign(model=INTEGRATED, score=prob)[["model", *ID_COLUMNS,
                                                                   "score"]]


# ----------------------------------------------------------------------------- segmentation
def segmentation_table(masks_dir: str | Path | None, cache_dir: str | Path | None,
                       patients: pd.DataFrame, models: Sequence[str] | None = None
                       ) -> pd.DataFrame:
    """Dice, HD95 and mean surface distance (mm) of each predicted mask against the cached
    ground-truth ROI mask (:func:`utils.segmetrics.segmentation_metrics`), per model, patient
    and time point. Models default to the sub-folders of ``masks_dir`` (first seed only);
    patients without a predicted mask or cache file are skipped (``None`` folders give an
    empty table)."""
    columns = ["model", "patient_id", "cohort", "timepoint", "dice", "hd95_mm", "msd_mm",
               "vol_pred_ml", "vol_true_ml"]
    if masks_dir is None or cache_dir is None or not Path(masks_dir).exists():
        return pd.DataFrame(columns=columns)
    masks_dir, cache_dir = Path(masks_dir), Path(cache_dir)
    if models is None:  # every variant's first replica (run folders ``<variant>_seed<k>``)
        models = sorted(p.name for p in masks_dir.iterdir()
                        if p.is_dir() and not re.search(r"_seed\d+$", p.name))
    rows = []
    for model in models:
        for patient_id, cohort in zip(patients["patient_id"], patients["cohort"], strict=True):
            pred_file, ref_file = masks_dir / model / f"{patient_id}.npz", (
                cache_dir / f"{patient_id}.npz")
            if pred_file.exists() and ref_file.exists():
                rows += _patient_segmentation(pred_file, ref_file, model, patient_id, cohort)
    return pd.DataFrame(rows, columns=columns)


def _patient_segmentation(pred_file: Path, ref_file: Path, model: str, patient_id: str,
                          cohort: str) -> list[dict]:
    rows = []
    with np.load(pred_file, allow_pickle=False) as pred, np.load(ref_file,
                                                                 allow_pickle=False) as ref:
        spacing = tuple(float(v) for v in ref["spacing_zyx"])
        for timepoint in TIMEPOINTS:
            key = f"mask_{timepoint}"
            if key not in pred.files:
                continue
            m = segmetrics.segmentation_metrics(pred[key], ref[key], spacing)
            rows.append({"model": model, "patient_id": patient_id, "cohort": cohort,
                         "timepoint": timepoint, "dice": m["dice"], "hd95_mm": m["hd95_mm"],
                         "msd_mm": m["msd_mm"], "vol_pred_ml": m["vol_a_ml"],
                         "vol_true_ml": m["vol_b_ml"]})
    return rows


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


# ----------------------------------------------------------------------------- calibration, DCA
def calibration_tables(scores: pd.DataFrame, models: Sequence[str],
                       cohorts: Sequence[str] = VALIDATION_COHORTS,
                       n_bins: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability curve (``n_bins`` equal-width bins, empty bins omitted) and Brier score
    (:func:`utils.stats.calibration`) of probability models per cohort.
    Returns (curve points, Brier table); one-class cohorts get a NaN Brier with a note."""
    points, briers = [], []
    for cohort in cohorts:
        for model in models:
            y, p, _ = _xy(scores[(scores["model"] == model) & (scores["cohort"] == cohort)])
            note = _undefined_reason(y)
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
                         cohorts: Sequence[str] = VALIDATION_COHORTS,
                         thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """Net benefit (Vickers & Elkin 2006; :func:`utils.stats.net_benefit`) of each
    probability model, treat-all and treat-none, per cohort and threshold probability.
    One-class cohorts are skipped."""
    thresholds = np.round(np.arange(0.01, 0.81, 0.01), 2) if thresholds is None else thresholds
    parts = []
    for cohort in cohorts:
        for index, model in enumerate(models):
            y, p, _ = _xy(scores[(scores["model"] == model) & (scores["cohort"] == cohort)])
            if _undefined_reason(y):
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
    (:func:`seed_summary`). The oracles themselves are not listed as models."""
    oracle = auc[auc["model"] == ORACLE].set_index("cohort")["auc"].to_dict()
    image_oracle = auc[auc["model"] == IMAGE_ORACLE].set_index("cohort")["auc"].to_dict()
    rates = performance[performance["method"] == method].set_index(["cohort", "model"])
    seg = seg_summary.set_index(["cohort", "model", "timepoint"]) if len(seg_summary) else None
    seeds = (seeds.set_index(["cohort", "model"]) if seeds is not None and len(seeds)
             else None)
    cohorts: dict[str, dict] = {}
    for _, row in auc[~auc["model"].isin(ORACLES)].iterrows():
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


def metrics_meta(profile: str, data_label: str, integrated: IntegratedModel | None,
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
                           "the cross-validated readout (utils.readout)",
        "handcrafted": "logistic regression on log volume ratio, mean post DWI and bright-DWI "
                       "fraction inside the predicted (handcrafted_pred) or ground-truth "
                       "(handcrafted_gt) masks, fitted on the training cohort",
        "image_oracle_auc": "AUC of the phantom's latent imaging response z_img: the ceiling "
                            "for an imaging-only model (oracle_auc includes the markers)",
    }


# ----------------------------------------------------------------------------- README
def _auc_cell(metrics: Mapping, cohort: str, model: str) -> str:
    entry = metrics.get("cohorts", {}).get(cohort, {}).get(model)
    if not entry or entry.get("auc") is None:
        return "n/a"
    return _fmt_ci(entry["auc"], entry.get("auc_ci_low"), entry.get("auc_ci_high"))


def _paper_cell(value: tuple[float, float, float]) -> str:
    return _fmt_ci(*value)


def _seed_cell(metrics: Mapping, cohort: str, model: str) -> str:
    entry = metrics.get("cohorts", {}).get(cohort, {}).get(model) or {}
    if not entry.get("n_seeds") or entry["n_seeds"] < 2 or entry.get("auc_seed_mean") is None:
        return ""
    return (f"; {int(entry['n_seeds'])} seeds: mean {entry['auc_seed_mean']:.2f} "
            f"(SD {entry['auc_seed_sd']:.2f}), worst {entry['auc_seed_min']:.2f}")


def readme_results_table(metrics: Mapping) -> str:
    """Markdown results table for README.md: the paper's reported AUCs beside this package's
    AUCs (DeLong 95% CI; seed-averaged, with the per-seed mean, SD and worst seed) for the main
    and integrated models, the handcrafted baselines and the oracles, labelled with the data
    and profile in ``metrics['meta']``."""
    meta = metrics.get("meta", {})
    label = f"{meta.get('data', 'phantom (synthetic)')}, {meta.get('profile', 'demo')} profile"
    lines = [
        f"| Model | Paper (Jin et al. 2021): AUC (95% CI) | {label}: internal validation "
        f"| {label}: external validation |",
        "|---|---|---|---|",
    ]
    paper = PAPER_AUC["full"]
    cells = " | ".join(_auc_cell(metrics, c, MAIN_MODEL) + _seed_cell(metrics, c, MAIN_MODEL)
                       for c in VALIDATION_COHORTS)
    lines.append(
        f"| {MODEL_LABELS[MAIN_MODEL]} | internal {_paper_cell(paper['internal_validation'])}; "
        f"external {_paper_cell(paper['external_validation'])} | {cells} |")
    lines.append(
        f"| {MODEL_LABELS[INTEGRATED]} | {_paper_cell(PAPER_AUC[INTEGRATED])}* | "
        f"{_auc_cell(metrics, 'internal_validation', INTEGRATED)} | "
        f"{_auc_cell(metrics, 'external_validation', INTEGRATED)} |")
    for model in HANDCRAFTED:
        if any(model in metrics.get("cohorts", {}).get(c, {}) for c in VALIDATION_COHORTS):
            lines.append(f"| {MODEL_LABELS[model]} | — | "
                         + " | ".join(_auc_cell(metrics, c, model) for c in VALIDATION_COHORTS)
                         + " |")
    for key, name in (("image_oracle_auc", IMAGE_ORACLE), ("oracle_auc", ORACLE)):
        values = [metrics.get("cohorts", {}).get(c, {}).get(MAIN_MODEL, {}).get(key)
                  for c in VALIDATION_COHORTS]
        if any(v is not None for v in values):
            cells = " | ".join("n/a" if v is None else f"{v:.2f}" for v in values)
            lines.append(f"| {MODEL_LABELS[name]}: expected ceiling | — | {cells} |")
    lines += ["", "AUC with 95% CI (DeLong). *The paper's abstract reports one AUC for the "
              "integrated model. " + ("Our numbers are measured on synthetic phantom data and "
                                      "are not comparable with the paper's clinical results."
                                      if "phantom" in label else
                                      "Our numbers are measured on the cohort named above.")]
    return "\n".join(lines) + "\n"


def replace_readme_section(text: str, table: str) -> str:
    """``text`` with the part between the results markers replaced by ``table``."""
    start, end = README_MARKERS
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no {start} ... {end} markers")
    return pattern.sub(lambda _: f"{start}\n{table}{end}", text, count=1)


def readme_section(text: str) -> str | None:
    """The text between the README results markers, or None when they are absent."""
    start, end = README_MARKERS
    match = re.search(re.escape(start) + r"\n?(.*?)" + re.escape(end), text, flags=re.S)
    return match.group(1) if match else None


def update_readme(readme: str | Path, metrics: Mapping) -> bool:
    """Rewrite README's results section from ``metrics`` (atomic); False when the README has
    no results markers (nothing is written)."""
    text = Path(readme).read_text(encoding="utf-8")
    if readme_section(text) is None:
        return False
    new = replace_readme_section(text, readme_results_table(metrics))
    if new != text:
        write_atomic(readme, lambda tmp: tmp.write_text(new, encoding="utf-8"))
    return True


def figure_table(figures_dir: str | Path | None = None) -> str:
    """Markdown table: figure file -> notebook, content and paper analogue (:data:`FIGURES`),
    plus any other ``fig*.png`` found in ``figures_dir``."""
    rows = dict(FIGURES)
    if figures_dir is not None and Path(figures_dir).exists():
        for png in sorted(Path(figures_dir).glob("fig*.png")):
            number = re.match(r"fig(\d\d)", png.stem)
            rows.setdefault(png.stem, (f"{number.group(1)}_*" if number else "?", "", "—"))
    lines = ["| Figure (PNG + PDF) | Notebook | Shows | Paper analogue |", "|---|---|---|---|"]
    lines += [f"| `figures/{stem}.png` | `{nb}` | {what} | {paper} |"
              for stem, (nb, what, paper) in rows.items()]
    return "\n".join(lines) + "\n"


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
    return write_json_atomic(Path(results_dir) / "metrics.json", _clean(metrics))


# ----------------------------------------------------------------------------- Grad-CAM
def branch_feature_tensors(model, key: str = "encoder") -> dict[str, object]:
    """Symbolic ``key`` feature map ("encoder", "bottleneck" or "deep_supervision") of each
    branch of an RP-Net, keyed by input name ("pre", "post"), found from the backbone
    calls (one shared backbone called twice, or one backbone per branch). A model whose pCR
    head is detached from the backbone (the default tumour head) has no such gradient path:
    use :func:`input_attribution` for it."""
    import keras

    if any(layer.name.endswith("_detached") for layer in model.layers):
        raise ValueError(f"model {model.name}: the pCR head is detached from the backbone "
                         "(no gradient reaches its features); use input_attribution")
    found = {}
    for layer in model.layers:
        if not isinstance(layer, keras.Model):
            continue
        for node in layer._inbound_nodes:  # Keras 3 internals: one node per call
            outputs = keras.tree.pack_sequence_as(layer.output, node.output_tensors)
            if isinstance(outputs, dict) and key in outputs:
                found[node.input_tensors[0].name] = outputs[key]
    if not found:
        raise ValueError(f"no backbone with a {key!r} output found in model {model.name}")
    return found


def grad_cam_3d(model, inputs: Mapping[str, np.ndarray],
                features: Mapping[str, object] | None = None, key: str = "encoder",
                output: str = "pcr", target_class: int = 1) -> dict[str, np.ndarray]:
    """3D Grad-CAM (Selvaraju et al. 2017) of a sigmoid output for one patient.

    For each branch's feature map A (z, y, x, k): weights w_k = mean over voxels of
    d logit / d A_k (the logit of ``output``; negated for ``target_class=0``, i.e. evidence
    for non-pCR), map = ReLU(sum_k w_k A_k), trilinearly resized to the input's (z, y, x)
    and divided by the maximum over all branches (so branches are comparable; all-zero maps
    stay zero). ``inputs`` maps input names to (z, y, x, C) arrays; ``features`` maps them to
    symbolic feature tensors (default :func:`branch_feature_tensors` with ``key``).
    TensorFlow backend only (``tf.GradientTape``); other backends raise NotImplementedError.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(f"Grad-CAM here needs the TensorFlow backend; Keras is "
                                  f"using {keras.backend.backend()!r}")
    import tensorflow as tf

    features = dict(features or branch_feature_tensors(model, key))
    probe = keras.Model(model.input, {"features": features, "out": model.output[output]})
    batch = {name: tf.constant(np.asarray(x, np.float32)[None]) for name, x in inputs.items()}
    if not isinstance(model.input, dict):  # a single-input model takes a bare tensor
        batch = batch[model.input.name] if hasattr(model.input, "name") else list(
            batch.values())
    with tf.GradientTape() as tape:
        result = probe(batch, training=False)
        p = tf.clip_by_value(tf.reshape(result["out"], [-1])[0], 1e-7, 1 - 1e-7)
        score = tf.math.log(p) - tf.math.log(1 - p)
        score = score if target_class == 1 else -score
    grads = tape.gradient(score, result["features"])
    maps = {}
    for name, fmap in result["features"].items():
        fmap, grad = fmap.numpy()[0], grads[name].numpy()[0]
        cam = np.maximum(np.tensordot(fmap, grad.mean(axis=(0, 1, 2)), axes=([3], [0])), 0)
        maps[name] = _resize(cam, np.asarray(inputs[name]).shape[:3])
    top = max(float(m.max()) for m in maps.values())
    return {name: m / top if top > 0 else m for name, m in maps.items()}


def input_attribution(model, inputs: Mapping[str, np.ndarray], output: str = "pcr",
                      target_class: int = 1) -> dict[str, np.ndarray]:
    """Input x gradient of the pCR logit, summed over channels and rectified, per exam:
    which voxels push the score towards ``target_class``. For the tumour-guided readout the
    masked-mean terms make this exact: a voxel's share of a masked mean times the readout's
    coefficient. Scaled by the maximum over both exams. TensorFlow backend only."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError("input attribution here needs the TensorFlow backend")
    import tensorflow as tf

    batch = {name: tf.constant(np.asarray(x, np.float32)[None]) for name, x in inputs.items()}
    with tf.GradientTape() as tape:
        tape.watch(list(batch.values()))
        p = tf.clip_by_value(tf.reshape(model(batch, training=False)[output], [-1])[0],
                             1e-7, 1 - 1e-7)
        score = tf.math.log(p) - tf.math.log(1 - p)
        score = score if target_class == 1 else -score
    grads = tape.gradient(score, batch)
    maps = {name: np.maximum((batch[name].numpy()[0] * grads[name].numpy()[0]).sum(-1), 0)
            for name in batch}
    top = max(float(m.max()) for m in maps.values())
    return {name: m / top if top > 0 else m for name, m in maps.items()}


def _resize(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resize (scipy ``zoom``, grid_mode so voxel areas align) to exactly
    ``shape``; non-negative input stays non-negative."""
    factors = [t / s for t, s in zip(shape, volume.shape, strict=True)]
    out = ndimage.zoom(volume.astype(float), factors, order=1, mode="nearest", grid_mode=True)
    pad = [(0, max(0, t - s)) for t, s in zip(shape, out.shape, strict=True)]
    out = np.pad(out, pad, mode="edge")[tuple(slice(0, t) for t in shape)]
    return np.maximum(out, 0.0)


def pick_gradcam_patients(scores: pd.DataFrame, model: str = MAIN_MODEL,
                          cohorts: Sequence[str] = VALIDATION_COHORTS) -> pd.DataFrame:
    """The pCR patient with the highest and the non-pCR patient with the lowest ``model``
    score in ``cohorts`` (the most confident correct calls); fewer if a class is absent."""
    rows = scores[(scores["model"] == model) & scores["cohort"].isin(cohorts)].dropna(
        subset=["score"])
    picks = []
    for label, ascending in ((1, False), (0, True)):
        group = rows[rows["pcr"] == label].sort_values(["score", "patient_id"],
                                                        ascending=[ascending, True])
        picks.append(group.head(1))
    return pd.concat(picks, ignore_index=True)


def cached_inputs(cache_file: str | Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Network inputs ``{"pre": image_pre, "post": image_post}`` (z, y, x, C) from a cache file."""
    with np.load(cache_file, allow_pickle=False) as data:
        return {name: data[f"image_{name}"].astype(np.float32) for name in names}


def cached_sequences(cache_dir: str | Path) -> list[str]:
    """The input channels of a preprocessed cohort (``processed.csv``), in order."""
    table = pd.read_csv(Path(cache_dir) / "processed.csv")
    names = table.loc[table["status"] == "ok", "sequences"].dropna()
    return str(names.iloc[0]).split() if len(names) else list(SEQUENCES)


# ----------------------------------------------------------------------------- plots
COLORS = {MAIN_MODEL: "#1f77b4", INTEGRATED: "#d62728", VOLUME_GT: "#7f7f7f",
          VOLUME_PRED: "#bcbd22", ORACLE: "#2ca02c", IMAGE_ORACLE: "#98df8a",
          HANDCRAFTED_PRED: "#ff7f0e", HANDCRAFTED_GT: "#ffbb78"}


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _auc_legend(auc: pd.DataFrame, cohort: str, model: str) -> str:
    row = auc[(auc["cohort"] == cohort) & (auc["model"] == model)]
    if row.empty:
        return _label(model)
    r = row.iloc[0]
    return f"{_label(model)}: {_fmt_ci(r['auc'], r['auc_ci_low'], r['auc_ci_high'])}"


def _empty_panel(ax, title: str, reason: str) -> None:
    """A panel that says why there is nothing to draw."""
    ax.set_title(title)
    ax.text(0.5, 0.5, reason.replace(": ", ":\n", 1), ha="center", va="center", fontsize=8,
            transform=ax.transAxes)
    ax.set_axis_off()


def _panel_data(scores: pd.DataFrame, cohort: str, model: str):
    y, s, _ = _xy(scores[(scores["cohort"] == cohort) & (scores["model"] == model)])
    return y, s, _undefined_reason(y)


def plot_roc_curves(scores: pd.DataFrame, auc: pd.DataFrame,
                    models: Sequence[str] = (MAIN_MODEL, HANDCRAFTED_PRED, VOLUME_GT,
                                             IMAGE_ORACLE, ORACLE),
                    cohorts: Sequence[str] | None = None,
                    operating: pd.DataFrame | None = None, title: str = "") -> plt.Figure:
    """ROC curve per cohort (one panel each) for ``models``; the legend gives the AUC with
    its DeLong 95% CI; ``operating`` (rows of :func:`performance_table` for the main model)
    marks the training-chosen operating point."""
    cohorts = list(cohorts or _cohorts_in(scores))
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
        curve = st.roc_curve_points(y, s)
        style = "--" if model in ORACLES else "-"
        ax.plot(curve["fpr"], curve["tpr"], style, color=COLORS.get(model), lw=1.5,
                label=_auc_legend(auc, cohort, model))
        drawn = True
    if not drawn:
        _empty_panel(ax, COHORT_LABELS.get(cohort, cohort), "AUC undefined: " + (
            _panel_data(scores, cohort, models[0])[2] or "no scores"))
        return
    _mark_operating_point(ax, operating, cohort)
    ax.plot([0, 1], [0, 1], ":", color="0.7", lw=0.8)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(-0.02, 1.02),
           ylim=(-0.02, 1.02), title=COHORT_LABELS.get(cohort, cohort), aspect="equal")
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
    cohorts = list(cohorts or _cohorts_in(scores))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.6 * len(cohorts), 3.4), squeeze=False)
    for ax, cohort in zip(axes[0], cohorts, strict=True):
        reason = _panel_data(scores, cohort, models[0])[2]
        if reason:
            _empty_panel(ax, COHORT_LABELS.get(cohort, cohort), "undefined: " + reason)
            continue
        for model in models:
            y, s, why = _panel_data(scores, cohort, model)
            if why or not s.size:
                continue
            curve = st.pr_curve(y, s)
            ax.step(curve["recall"], curve["precision"], where="post", color=COLORS.get(model),
                    label=f"{_label(model)}: AP {curve['average_precision']:.2f}")
        prevalence = _panel_data(scores, cohort, models[0])[0].mean()
        ax.axhline(prevalence, ls=":", color="0.6", lw=0.8, label=f"prevalence {prevalence:.2f}")
        ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", ylim=(0, 1.03),
               title=COHORT_LABELS.get(cohort, cohort))
        ax.legend(loc="lower left", fontsize=6.5, frameon=False)
    fig.tight_layout()
    return fig


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
            r = rows.loc[model]
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
        ax.axvline(0.5, ls=":", color="0.6", lw=0.8)
        ax.set_yticks(y, [_label(m) for m in models], fontsize=7.5)
        ax.set(xlim=(0, 1.02), xlabel="AUC (DeLong 95% CI)",
               title=COHORT_LABELS.get(cohort, cohort))
    fig.suptitle("Ablations and baselines (x: single seeds); p: one-sided paired DeLong, "
                 "full > model")
    fig.tight_layout()
    return fig


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
            ax.set_title(f"{COHORT_LABELS.get(cohort, cohort)}\npaired DeLong p = "
                         f"{row.iloc[0]['p_two_sided']:.3f} (two-sided)")
    fig.tight_layout()
    return fig


def plot_segmentation(seg: pd.DataFrame, model: str = MAIN_MODEL) -> plt.Figure:
    """Box plots of Dice (top) and HD95 in mm (bottom, defined values only) per cohort and
    time point for ``model``; points are patients."""
    rows = seg[seg["model"] == model]
    fig, axes = plt.subplots(2, 1, figsize=(6.5, 5.5), sharex=True)
    if rows.empty:
        _empty_panel(axes[0], "segmentation", f"no predicted masks for {model}")
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
    axes[0].set_title(f"Segmentation of {_label(model)} vs ground truth")
    fig.tight_layout()
    return fig


def _tumour_slice(mask: np.ndarray) -> int:
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    return int(np.argmax(areas)) if areas.any() else mask.shape[0] // 2


def plot_overlays(cases: pd.DataFrame, cache_dir: str | Path, masks_dir: str | Path,
                  seg: pd.DataFrame, model: str = MAIN_MODEL) -> plt.Figure:
    """T2W (channel 0) through the largest ground-truth tumour slice, pre and post, with the
    ground-truth (green) and predicted (magenta) contours, for each case row."""
    n = max(len(cases), 1)
    fig, axes = plt.subplots(n, 2, figsize=(5.2, 2.6 * n), squeeze=False)
    if cases.empty:
        _empty_panel(axes[0, 0], "overlays", "no segmented validation patients")
        return fig
    for row_axes, (_, case) in zip(axes, cases.iterrows(), strict=True):
        with np.load(Path(cache_dir) / f"{case['patient_id']}.npz") as ref, np.load(
                Path(masks_dir) / model / f"{case['patient_id']}.npz") as pred:
            for ax, timepoint in zip(row_axes, TIMEPOINTS, strict=True):
                dice = seg[(seg["model"] == model) & (seg["patient_id"] == case["patient_id"])
                           & (seg["timepoint"] == timepoint)]["dice"]
                title = (f"{case['case']}: {case['patient_id']} {timepoint}, Dice "
                         f"{dice.iloc[0]:.2f}" if len(dice) else f"{timepoint}: no mask")
                _overlay(ax, ref[f"image_{timepoint}"][..., 0], ref[f"mask_{timepoint}"],
                         pred[f"mask_{timepoint}"] if f"mask_{timepoint}" in pred.files
                         else None, title)
    fig.suptitle("T2W; green: ground truth, magenta: predicted", fontsize=8)
    fig.tight_layout()
    return fig


def _overlay(ax, image: np.ndarray, truth: np.ndarray, predicted: np.ndarray | None,
             title: str, heat: np.ndarray | None = None) -> None:
    z = _tumour_slice(truth if truth.any() or predicted is None else predicted)
    ax.imshow(image[z], cmap="gray", interpolation="nearest")
    if heat is not None:
        ax.imshow(heat[z], cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear")
    if truth[z].any():
        ax.contour(truth[z], levels=[0.5], colors="lime", linewidths=1)
    if predicted is not None and predicted[z].any():
        ax.contour(predicted[z], levels=[0.5], colors="magenta", linewidths=1)
    ax.set_title(title, fontsize=7.5)
    ax.set_axis_off()


def plot_calibration(curve: pd.DataFrame, brier: pd.DataFrame,
                     cohorts: Sequence[str] = VALIDATION_COHORTS) -> plt.Figure:
    """Reliability curves (observed pCR fraction vs mean predicted probability per bin) with
    the Brier score in the legend, one panel per cohort."""
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.6 * len(cohorts), 3.6), squeeze=False)
    for ax, cohort in zip(axes[0], cohorts, strict=True):
        rows = brier[brier["cohort"] == cohort] if len(brier) else brier
        if rows.empty or not rows["brier"].notna().any():
            reason = rows["note"].iloc[0] if len(rows) else "no patients"
            _empty_panel(ax, COHORT_LABELS.get(cohort, cohort), "undefined: " + reason)
            continue
        for _, r in rows.dropna(subset=["brier"]).iterrows():
            pts = curve[(curve["cohort"] == cohort) & (curve["model"] == r["model"])]
            ax.plot(pts["prob_pred"], pts["prob_true"], "o-", color=COLORS.get(r["model"]),
                    ms=4, label=f"{_label(r['model'])}: Brier {r['brier']:.3f}")
        ax.plot([0, 1], [0, 1], ":", color="0.6", lw=0.8)
        ax.set(xlabel="predicted probability", ylabel="observed pCR fraction", xlim=(0, 1),
               ylim=(0, 1), title=COHORT_LABELS.get(cohort, cohort), aspect="equal")
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
            _empty_panel(ax, COHORT_LABELS.get(cohort, cohort), "undefined: one class only")
            continue
        for strategy, group in rows.groupby("strategy", sort=False):
            color, style = styles.get(strategy, (COLORS.get(strategy), "-"))
            ax.plot(group["threshold"], group["net_benefit"], style, color=color,
                    label=_label(strategy).replace("_", " "))
        top = rows["net_benefit"].max()
        ax.set(ylim=(-0.05, max(top, 0.05) * 1.15), xlabel="threshold probability",
               ylabel="net benefit", title=COHORT_LABELS.get(cohort, cohort))
        ax.legend(fontsize=6.5, frameon=False)
    fig.tight_layout()
    return fig


def plot_grad_cam(panels: Sequence[Mapping]) -> plt.Figure:
    """Attribution overlays (Grad-CAM or input x gradient): one row per patient, pre and post
    image through the largest tumour slice with the map (jet, 40% opacity) and the
    ground-truth contour. Each panel mapping has ``title``, ``images`` {branch: (z, y, x)},
    ``masks`` and ``maps``."""
    fig, axes = plt.subplots(max(len(panels), 1), 2, figsize=(5.2, 2.6 * max(len(panels), 1)),
                             squeeze=False)
    for row_axes, panel in zip(axes, panels, strict=False):
        for ax, branch in zip(row_axes, TIMEPOINTS, strict=True):
            if branch not in panel["maps"]:
                _empty_panel(ax, branch, "branch not in model")
                continue
            _overlay(ax, panel["images"][branch], panel["masks"]["pre"], None,
                     f"{panel['title']}: {branch}", heat=panel["maps"][branch])
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- one call
@dataclass
class Evaluation:
    """Every table of one evaluation run."""

    scores: pd.DataFrame
    auc: pd.DataFrame
    thresholds: pd.DataFrame
    performance: pd.DataFrame
    tests: pd.DataFrame
    integrated: IntegratedModel | None
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
    """Score rows and coefficients of the handcrafted baselines (:mod:`utils.baseline`) on
    the main model's predicted masks and on the ground-truth masks, for the patients and
    labels of ``patients`` (``patient_id, cohort, centre, pcr``); empty when the cache,
    masks or folds are missing."""
    if cache_dir is None or folds is None or not Path(cache_dir).exists():
        return pd.DataFrame(), pd.DataFrame()
    sources: dict[str, Path | None] = {HANDCRAFTED_GT: None}
    if masks_dir is not None and (Path(masks_dir) / main_model).exists():
        sources = {HANDCRAFTED_PRED: Path(masks_dir) / main_model, **sources}
    return baseline_rows(patients, cache_dir, folds, sources)


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
    seed_aucs = seed_auc_table(predictions)
    averaged = seed_average(predictions)
    scores = score_table(averaged, oracle)
    handcrafted = None
    if patients is not None:
        labelled = averaged.loc[averaged["model"] == MAIN_MODEL, ID_COLUMNS]
        rows, handcrafted = handcrafted_baselines(labelled, cache_dir, masks_dir, folds)
        scores = pd.concat([scores, rows], ignore_index=True) if len(rows) else scores
    integrated = None
    if patients is not None:
        inputs = integrated_inputs(scores, patients)
        integrated = fit_integrated(inputs, tune_ids(split),
                                    out_of_fold=training_scores_out_of_fold(predictions))
        scores = pd.concat([scores, integrated_scores(integrated, inputs)], ignore_index=True)
    auc = auc_table(scores, n_boot=n_boot, seed=seed)
    thresholds = choose_operating_points(scores)
    performance = performance_table(scores, thresholds)
    tests = paired_delong_tests(scores)
    seg = segmentation_table(masks_dir, cache_dir, averaged[averaged["model"] == MAIN_MODEL])
    seg_summary = segmentation_summary(seg)
    prob_models = [m for m in (MAIN_MODEL, INTEGRATED) if m in set(scores["model"])]
    curve, brier = calibration_tables(scores, prob_models)
    decision = decision_curve_table(scores, prob_models)
    meta = metrics_meta(profile, data_label, integrated, n_boot)
    metrics = build_metrics(auc, performance, seg_summary, meta,
                            seeds=seed_summary(seed_aucs))
    return Evaluation(scores, auc, thresholds, performance, tests, integrated, seg, seg_summary,
                      curve, brier, decision, metrics, seed_aucs, handcrafted)
