"""Segmentation agreement per patient and its summary: Dice, HD95 and mean surface distance
of each predicted mask against the cached ground-truth ROI mask
(:func:`utils.evaluation.segmetrics.segmentation_metrics`), and medians [IQR] per cohort,
model and time point.

An empty reference (a complete response's post-treatment mask may hold no tumour) is
scored, never dropped: prediction also empty -> Dice 1, HD95 and MSD 0; prediction not
empty -> Dice 0, HD95 and MSD NaN (no surface to measure to; counted in the summary's
``hd95_undefined``). Such rows are marked ``reference_empty``. ``tumour_inside_roi`` says
how much of the tumour the (localiser-placed) ROI held; the summary counts the cut ones
(``roi_cut``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils.config import TIMEPOINTS, cache_files, predicted_masks_file
from utils.evaluation import segmetrics
from utils.inference.batch import load_predicted_masks
from utils.preprocessing.cache import load_cached

SEGMENTATION_COLUMNS = ["model", "patient_id", "cohort", "timepoint", "dice", "hd95_mm",
                        "msd_mm", "vol_pred_ml", "vol_true_ml", "reference_empty",
                        "tumour_inside_roi"]


def segmentation_table(masks_dir: str | Path | None, cache_dir: str | Path | None,
                       patients: pd.DataFrame, models: Sequence[str] | None = None
                       ) -> pd.DataFrame:
    """Dice, HD95 and mean surface distance (mm) of each predicted mask against the cached
    ground-truth ROI mask (:func:`utils.evaluation.segmetrics.segmentation_metrics`), per
    model, patient and time point. Models default to the sub-folders of ``masks_dir`` (first
    seed only); patients without a predicted mask or cache file are skipped (``None``
    folders give an empty table)."""
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
    roi = ref["meta"].get("roi", {})
    for timepoint in TIMEPOINTS:
        key = f"mask_{timepoint}"
        if key not in pred:
            continue
        m = segmetrics.segmentation_metrics(pred[key], ref[key], spacing)
        rows.append({"model": model, "patient_id": patient_id, "cohort": cohort,
                     "timepoint": timepoint, "dice": m["dice"], "hd95_mm": m["hd95_mm"],
                     "msd_mm": m["msd_mm"], "vol_pred_ml": m["vol_a_ml"],
                     "vol_true_ml": m["vol_b_ml"],
                     "reference_empty": not bool(np.any(ref[key] > 0)),
                     "tumour_inside_roi": _inside(roi, timepoint)})
    return rows


def _inside(roi: dict, timepoint: str) -> float | None:
    """Share of the exam's ground-truth tumour inside the ROI: 1 for a box placed on the
    mask (training), the scoring of a localiser-placed box (< 1: the box cut the tumour and
    Dice is scored on what it holds), None for an empty reference."""
    if roi.get("source") == "mask":
        return 1.0
    return roi.get("scoring", {}).get(f"tumour_inside_{timepoint}")


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
               "msd_median", "msd_q25", "msd_q75", "roi_cut"]
    if seg.empty:
        return pd.DataFrame(columns=columns)
    grouped = seg.groupby(["cohort", "model", "timepoint"], sort=False)
    table = grouped.agg(
        n=("dice", "size"), dice_median=("dice", "median"), dice_q25=("dice", _q(0.25)),
        dice_q75=("dice", _q(0.75)), dice_mean=("dice", "mean"),
        hd95_median=("hd95_mm", "median"), hd95_q25=("hd95_mm", _q(0.25)),
        hd95_q75=("hd95_mm", _q(0.75)), hd95_undefined=("hd95_mm", lambda x: int(x.isna().sum())),
        msd_median=("msd_mm", "median"), msd_q25=("msd_mm", _q(0.25)),
        msd_q75=("msd_mm", _q(0.75)),
        roi_cut=("tumour_inside_roi", lambda x: int((x.astype(float) < 1.0).sum()))
    ).reset_index()
    return table[columns]
