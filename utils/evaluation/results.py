"""What the evaluation writes to the results folder: ``metrics.json`` (its content, from the
cohort tables, and its ``meta`` block) and the CSV tables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from utils.config import TIMEPOINTS, metrics_json
from utils.evaluation.cohorttables import AUC_KEYS
from utils.evaluation.integrated import IntegratedModel
from utils.evaluation.labels import IMAGE_ORACLE, ORACLE, ORACLES
from utils.evaluation.rates import PRIMARY_METHOD, RATES
from utils.io import write_atomic, write_json_atomic
from utils.repro import cpu_model

METRIC_KEYS: tuple[str, ...] = ("auc", "auc_ci_low", "auc_ci_high", "sensitivity",
                                "specificity", "dice_pre", "dice_post", "hd95_pre",
                                "hd95_post", "oracle_auc", "image_oracle_auc")


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
    (:func:`utils.evaluation.predictions.seed_summary`). The oracles themselves are not
    listed as models."""
    oracle = auc[auc["model"] == ORACLE].set_index("cohort")["auc"].to_dict()
    image_oracle = auc[auc["model"] == IMAGE_ORACLE].set_index("cohort")["auc"].to_dict()
    rates = performance[performance["method"] == method].set_index(["cohort", "model"])
    seg = seg_summary.set_index(["cohort", "model", "timepoint"]) if len(seg_summary) else None
    seeds = (seeds.set_index(["cohort", "model"]) if seeds is not None and len(seeds)
             else None)
    cohorts: dict[str, dict] = {}
    for _, row in auc[~auc["model"].isin(ORACLES)].iterrows():
        key = (row["cohort"], row["model"])
        entry = {k: row[k] for k in ("n", "n_pcr", *AUC_KEYS)}
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
    names = ["threshold", *[f"{r}{s}" for r in RATES for s in ("", "_low", "_high")]]
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
        "profile": profile, "data": data_label, "cpu": cpu_model(),
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
        "seeds": "a model trained with several seeds is scored by its mean probability over "
                 "the seeds (auc, CIs, tests); auc_seed_mean/sd/min/max summarise the per-seed "
                 "AUCs; paired_delong_tests.csv counts the same-seed pairs that agree in "
                 "direction (seed_pairs_agree of seed_pairs)",
        "training_scores": "training-cohort scores of the networks are nested out-of-fold "
                           "scores of the cross-validated readout (selection and fit without "
                           "the scored fold; utils.training.readout)",
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
