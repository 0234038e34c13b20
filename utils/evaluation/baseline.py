"""The handcrafted baseline: logistic regression on three tumour features.

What every reader asks of a deep model: does it beat a few numbers a radiologist could
measure? Per patient, inside a tumour mask on the preprocessed ROI (the cache):

- ``log_volume_ratio``: log((V_post + 0.1 mL) / (V_pre + 0.1 mL));
- ``post_dwi_mean``: mean normalised post-treatment DWI inside the post-treatment mask (the
  pre-treatment mask, i.e. the tumour bed, when the post mask is empty);
- ``post_dwi_bright``: the fraction of those voxels brighter than :data:`BRIGHT_Z` robust SDs.

Two versions: on the network's predicted masks (``handcrafted_pred``, a fair competitor:
the same masks the network's readout sees) and on the ground-truth masks (``handcrafted_gt``,
a reference that no automatic method has). The logistic model (standardised features,
L2, C = 1) is fitted on the training cohort only; training patients get out-of-fold scores
over the readout's folds (``results/folds.csv``), validation patients the full fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils import measures
from utils.config import SEQUENCES, cache_files, predicted_masks_file
from utils.inference.batch import load_predicted_masks
from utils.measures import sigmoid
from utils.preprocessing.cache import load_cached
from utils.training.readout import fit_logistic, out_of_fold

FEATURES: tuple[str, ...] = ("log_volume_ratio", "post_dwi_mean", "post_dwi_bright")
BRIGHT_Z = 5.0
VOLUME_OFFSET_ML = 0.1
C_BASELINE = 1.0


def tumour_features(image_post: np.ndarray, mask_pre: np.ndarray, mask_post: np.ndarray,
                    spacing_zyx: Sequence[float], dwi_channel: int | None = 1
                    ) -> dict[str, float]:
    """The three handcrafted features of one patient (arrays on the ROI grid); the DWI
    features are NaN when the cohort has no DWI (``dwi_channel=None``)."""
    pre, post = np.asarray(mask_pre) > 0, np.asarray(mask_post) > 0
    v_pre = measures.volume_ml(pre, spacing_zyx)
    v_post = measures.volume_ml(post, spacing_zyx)
    features = {"log_volume_ratio": float(np.log((v_post + VOLUME_OFFSET_ML)
                                                 / (v_pre + VOLUME_OFFSET_ML))),
                "post_dwi_mean": math.nan, "post_dwi_bright": math.nan}
    if dwi_channel is not None:
        region = post if post.any() else pre
        dwi = np.asarray(image_post)[..., dwi_channel][region]
        if dwi.size == 0:
            dwi = np.zeros(1, dtype=np.float32)
        features.update(post_dwi_mean=float(dwi.mean()),
                        post_dwi_bright=float(np.mean(dwi > BRIGHT_Z)))
    return features


MaskSource = tuple[str | Path, str] | None  # (predicted-masks folder, run), None: ground truth


def feature_table(patients: pd.DataFrame, cache_dir: str | Path,
                  masks: MaskSource = None) -> pd.DataFrame:
    """Features of every patient with a cache file (and a predicted mask file of the run
    ``masks`` names; ``None`` uses the cached ground-truth masks)."""
    rows = []
    for row in patients.to_dict("records"):
        pid = str(row["patient_id"])
        cache_file = cache_files(cache_dir, pid)["npz"]
        mask_file = cache_file if masks is None else predicted_masks_file(*masks, pid)
        if not (cache_file.exists() and mask_file.exists()):
            continue
        cache = load_cached(cache_file)
        arrays = cache
        if masks is not None:
            arrays = load_predicted_masks(mask_file)
        sequences = list(cache["meta"].get("sequences", SEQUENCES))
        dwi = sequences.index("DWI") if "DWI" in sequences else None
        features = tumour_features(cache["image_post"], arrays["mask_pre"],
                                   arrays["mask_post"], cache["spacing_zyx"], dwi)
        rows.append({"patient_id": pid, "cohort": row["cohort"], "centre": row["centre"],
                     "pcr": int(row["pcr"]), **features})
    return pd.DataFrame(rows)


def handcrafted_scores(features: pd.DataFrame, folds: pd.DataFrame, model: str
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score rows (``model, patient_id, cohort, centre, pcr, score``) and the coefficient
    table of the logistic model fitted on the training cohort."""
    training = features[features["cohort"] == "training"].merge(folds, on="patient_id")
    if training["pcr"].nunique() < 2:
        raise ValueError("the handcrafted baseline needs pCR and non-pCR training patients")
    used = [f for f in FEATURES if features[f].notna().all()]  # no DWI: volume ratio only
    x_train = training[used].to_numpy(float)
    y_train = training["pcr"].to_numpy(int)
    coef, intercept = fit_logistic(x_train, y_train, C_BASELINE)
    x_all = features[used].to_numpy(float)
    oof = out_of_fold(x_train, y_train, training["fold"].to_numpy(int), C_BASELINE)
    out_of_fold_score = dict(zip(training["patient_id"], oof, strict=True))
    full_fit = sigmoid(x_all @ coef + intercept)
    score = [out_of_fold_score.get(pid, fitted) if cohort == "training" else fitted
             for pid, cohort, fitted in zip(features["patient_id"], features["cohort"],
                                            full_fit, strict=True)]
    rows = features[["patient_id", "cohort", "centre", "pcr"]].assign(model=model, score=score)
    table = pd.DataFrame({"model": model, "feature": [*used, "intercept"],
                          "coefficient": [*coef, intercept]})
    return rows[["model", "patient_id", "cohort", "centre", "pcr", "score"]], table


def baseline_rows(patients: pd.DataFrame, cache_dir: str | Path, folds: pd.DataFrame,
                  sources: Mapping[str, MaskSource]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score rows and coefficients of each baseline, ``{model name: (predicted-masks
    folder, run)}`` (``None``: ground-truth masks)."""
    scores, coefficients = [], []
    for model, masks in sources.items():
        features = feature_table(patients, cache_dir, masks)
        if features.empty:
            continue
        rows, coef = handcrafted_scores(features, folds, model)
        scores.append(rows)
        coefficients.append(coef)
    if not scores:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(scores, ignore_index=True), pd.concat(coefficients, ignore_index=True)
