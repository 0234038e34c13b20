"""Per-patient inputs of the evaluation (notebook 04): model names and labels, reading
``predictions.csv``, seed averaging, the score table of every model and baseline, the
integrated (imaging + blood markers) model and per-patient segmentation metrics.

The per-cohort statistics of these tables are in :mod:`utils.evaluation.evaluate`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.cohort.manifest import MARKERS
from utils.config import COHORTS, TIMEPOINTS, cache_files, predicted_masks_file
from utils.evaluation import segmetrics
from utils.evaluation import stats as st
from utils.evaluation.baseline import HANDCRAFTED_GT, HANDCRAFTED_PRED
from utils.inference.batch import PREDICTION_COLUMNS as PREDICTION_COLUMNS
from utils.inference.batch import load_predicted_masks
from utils.measures import auc_or_nan, sigmoid, volume_reduction
from utils.preprocessing.cache import load_cached

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
ID_COLUMNS = ["patient_id", "cohort", "centre", "pcr"]
INTEGRATED_FEATURES: tuple[str, ...] = ("deep_logit", *MARKERS)

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


def model_label(model: str) -> str:
    """Display name of a model (its key when it has none)."""
    return MODEL_LABELS.get(model, model)


def fmt_ci(value, low, high, digits: int = 2) -> str:
    """'value (low–high)', or 'n/a' when the value is missing."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} ({fmt_range(low, high, digits)})"


def fmt_range(low, high, digits: int = 2) -> str:
    """'low–high', or 'n/a' when a bound is missing."""
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"{low:.{digits}f}–{high:.{digits}f}"


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
    table["_logit"] = st.logit(table["score"])
    grouped = table.groupby(["model", "patient_id"], sort=False)
    mean_logit = grouped["_logit"].transform("mean")
    table["n_seeds"] = grouped["seed"].transform("nunique")
    table["score"] = sigmoid(mean_logit)
    first = table.sort_values("seed", kind="stable").drop_duplicates(["model", "patient_id"])
    return first.drop(columns=["_logit"]).sort_index().reset_index(drop=True)


def seed_auc_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """AUC of every model, seed and cohort (``model, seed, cohort, n, n_pcr, auc``)."""
    rows = []
    table = predictions if "seed" in predictions.columns else predictions.assign(seed=0)
    for (model, seed, cohort), group in table.groupby(["model", "seed", "cohort"], sort=True):
        y, s, _ = labels_scores(group)
        rows.append({"model": model, "seed": int(seed), "cohort": cohort, "n": len(y),
                     "n_pcr": int(y.sum()), "auc": auc_or_nan(y, s)})
    return pd.DataFrame(rows, columns=["model", "seed", "cohort", "n", "n_pcr", "auc"])


def seed_summary(seed_aucs: pd.DataFrame) -> pd.DataFrame:
    """Per model and cohort: number of seeds, mean, SD (ddof 1), min and max AUC."""
    grouped = seed_aucs.groupby(["model", "cohort"], sort=False)["auc"]
    return grouped.agg(n_seeds="count", auc_seed_mean="mean", auc_seed_sd="std",
                       auc_seed_min="min", auc_seed_max="max").reset_index()


def training_scores_out_of_fold(predictions: pd.DataFrame, model: str = MAIN_MODEL) -> bool:
    """True when every training-cohort score of ``model`` is an out-of-fold readout score."""
    rows = predictions[(predictions["model"] == model) & (predictions["cohort"] == "training")]
    return (len(rows) > 0 and "score_source" in rows.columns
            and bool((rows["score_source"] == "out_of_fold").all()))


# ----------------------------------------------------------------------------- scores
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
    ids = main[ID_COLUMNS].reset_index(drop=True)
    parts = [predictions[["model", *ID_COLUMNS, "score"]], *_volume_parts(main, ids)]
    if oracle is not None:
        parts += _oracle_parts(oracle, ids)
    table = pd.concat(parts, ignore_index=True)[["model", *ID_COLUMNS, "score"]]
    return table.astype({"score": float, "pcr": int})


def _volume_parts(main: pd.DataFrame, ids: pd.DataFrame) -> list[pd.DataFrame]:
    """Volume-reduction score rows from the ground-truth and the predicted volumes."""
    parts = []
    for name, kind in ((VOLUME_GT, "true"), (VOLUME_PRED, "pred")):
        columns = [f"vol_pre_{kind}_ml", f"vol_post_{kind}_ml"]
        if set(columns) <= set(main.columns):
            score = volume_reduction(main[columns[0]], main[columns[1]])
            parts.append(ids.assign(model=name, score=score))
    return parts


def _oracle_parts(oracle: pd.DataFrame, ids: pd.DataFrame) -> list[pd.DataFrame]:
    """Oracle (``p_true``) and image-only oracle (``z_img``) score rows."""
    parts = []
    for name, column in ((ORACLE, "p_true"), (IMAGE_ORACLE, "z_img")):
        if column in oracle.columns:
            merged = ids.merge(oracle[["patient_id", column]], on="patient_id", how="left")
            parts.append(merged.rename(columns={column: "score"}).assign(model=name))
    return parts


def models_in(scores: pd.DataFrame) -> list[str]:
    """Models of a score table in display order (main, ablations, baselines, others)."""
    order = [MAIN_MODEL, *ABLATIONS, *HANDCRAFTED, VOLUME_GT, VOLUME_PRED, INTEGRATED,
             IMAGE_ORACLE, ORACLE]
    present = list(dict.fromkeys(scores["model"]))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def cohorts_in(scores: pd.DataFrame) -> list[str]:
    """Cohorts of a table in :data:`utils.config.COHORTS` order, then any others."""
    present = set(scores["cohort"])
    return [c for c in COHORTS if c in present] + sorted(present - set(COHORTS))


def labels_scores(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and scores without missing scores, and the number of missing scores."""
    kept = group.dropna(subset=["score"])
    return (kept["pcr"].to_numpy(int), kept["score"].to_numpy(float),
            len(group) - len(kept))


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


def integrated_inputs(scores: pd.DataFrame, patients: pd.DataFrame,
                      main_model: str = MAIN_MODEL) -> pd.DataFrame:
    """One row per patient: ids, pCR, the main model's deep score and its logit
    (``deep_logit``), and the four blood markers from the manifest's patient table."""
    main = scores[scores["model"] == main_model][[*ID_COLUMNS, "score"]]
    markers = patients[["patient_id", *MARKERS]]
    table = main.merge(markers, on="patient_id", how="left")
    return table.assign(deep_logit=st.logit(table["score"])).reset_index(drop=True)


def fit_integrated(inputs: pd.DataFrame, tune: set[str] | None = None,
                   min_per_class: int = 3, C: float = 1.0,
                   out_of_fold: bool = False) -> IntegratedModel:
    """Logistic regression of ``deep_logit`` + log1p(CEA, CA19-9 pre and post) (median
    imputation, standardisation, L2 with ``C``; :func:`utils.evaluation.stats.fit_integrated_model`),
    fitted on **training-cohort rows only**.

    Rows: the training cohort's tune subset when it has at least ``min_per_class`` pCR and
    non-pCR patients (its deep scores are out-of-sample: the network never fitted them,
    although they guided model selection); otherwise the whole training cohort, whose deep
    scores are in-sample and optimistic, which inflates the deep-score coefficient.
    ``out_of_fold=True`` (the training scores are out-of-fold readout scores,
    :mod:`utils.training.readout`): the whole training cohort.
    """
    rows, fit_on = _integrated_rows(inputs, tune, min_per_class, out_of_fold)
    pipeline = st.fit_integrated_model(rows, INTEGRATED_FEATURES, log_columns=MARKERS, C=C)
    return IntegratedModel(pipeline, INTEGRATED_FEATURES, fit_on, len(rows),
                           int(rows["pcr"].sum()),
                           st.coefficient_table(pipeline, INTEGRATED_FEATURES),
                           float(pipeline[-1].intercept_[0]))


def _integrated_rows(inputs: pd.DataFrame, tune: set[str] | None, min_per_class: int,
                     out_of_fold: bool) -> tuple[pd.DataFrame, str]:
    """The training rows the integrated model is fitted on, and a note saying which."""
    training = inputs[inputs["cohort"] == "training"]
    subset = training[training["patient_id"].isin(tune or set())]
    counts = np.bincount(subset["pcr"].to_numpy(int), minlength=2)
    if out_of_fold:
        return training, "whole training cohort (deep scores out-of-fold)"
    if len(subset) and counts.min() >= min_per_class:
        return subset, "training cohort, tune subset (deep scores out-of-sample)"
    return training, (f"whole training cohort (deep scores in-sample); tune subset has "
                      f"{counts[1]} pCR / {counts[0]} non-pCR, fewer than {min_per_class} "
                      "per class")


def integrated_scores(model: IntegratedModel, inputs: pd.DataFrame) -> pd.DataFrame:
    """Integrated-model probabilities of every patient, as score-table rows."""
    prob = model.pipeline.predict_proba(inputs[list(model.features)].astype(float))[:, 1]
    return inputs[ID_COLUMNS].assign(model=INTEGRATED, score=prob)[["model", *ID_COLUMNS,
                                                                   "score"]]


# ----------------------------------------------------------------------------- segmentation
SEGMENTATION_COLUMNS = ["model", "patient_id", "cohort", "timepoint", "dice", "hd95_mm",
                        "msd_mm", "vol_pred_ml", "vol_true_ml"]


def segmentation_table(masks_dir: str | Path | None, cache_dir: str | Path | None,
                       patients: pd.DataFrame, models: Sequence[str] | None = None
                       ) -> pd.DataFrame:
    """Dice, HD95 and mean surface distance (mm) of each predicted mask against the cached
    ground-truth ROI mask (:func:`utils.evaluation.segmetrics.segmentation_metrics`), per model, patient
    and time point. Models default to the sub-folders of ``masks_dir`` (first seed only);
    patients without a predicted mask or cache file are skipped (``None`` folders give an
    empty table)."""
    if masks_dir is None or cache_dir is None or not Path(masks_dir).exists():
        return pd.DataFrame(columns=SEGMENTATION_COLUMNS)
    masks_dir, cache_dir = Path(masks_dir), Path(cache_dir)
    if models is None:  # every variant's first replica (run folders ``<variant>_seed<k>``)
        models = sorted(p.name for p in masks_dir.iterdir()
                        if p.is_dir() and not re.search(r"_seed\d+$", p.name))
    rows = []
    for model in models:
        for patient_id, cohort in zip(patients["patient_id"], patients["cohort"], strict=True):
            pred_file, ref_file = predicted_masks_file(masks_dir, model, patient_id), (
                cache_files(cache_dir, patient_id)["npz"])
            if pred_file.exists() and ref_file.exists():
                rows += _patient_segmentation(pred_file, ref_file, model, patient_id, cohort)
    return pd.DataFrame(rows, columns=SEGMENTATION_COLUMNS)


def _patient_segmentation(pred_file: Path, ref_file: Path, model: str, patient_id: str,
                          cohort: str) -> list[dict]:
    rows = []
    pred, ref = load_predicted_masks(pred_file), load_cached(ref_file)
    spacing = tuple(float(v) for v in ref["spacing_zyx"])
    for timepoint in TIMEPOINTS:
        key = f"mask_{timepoint}"
        if key not in pred:
            continue
        m = segmetrics.segmentation_metrics(pred[key], ref[key], spacing)
        rows.append({"model": model, "patient_id": patient_id, "cohort": cohort,
                     "timepoint": timepoint, "dice": m["dice"], "hd95_mm": m["hd95_mm"],
                     "msd_mm": m["msd_mm"], "vol_pred_ml": m["vol_a_ml"],
                     "vol_true_ml": m["vol_b_ml"]})
    return rows
