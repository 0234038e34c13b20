"""The run's predictions (docs/CONTRACTS.md): reading ``predictions.csv`` and the optional
side tables, the seed average of a model trained with several seeds and its per-seed AUCs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.evaluation.labels import MAIN_MODEL
from utils.measures import auc_or_nan

ID_COLUMNS = ["patient_id", "cohort", "centre", "pcr"]


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


def labels_scores(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and scores without missing scores, and the number of missing scores."""
    kept = group.dropna(subset=["score"])
    return (kept["pcr"].to_numpy(int), kept["score"].to_numpy(float),
            len(group) - len(kept))


# ----------------------------------------------------------------------------- seeds
def seed_average(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per model and patient: the mean *probability* over the model's seeds (a seed
    ensemble, ``n_seeds`` column); the other columns come from seed 0 (its masks).

    Probabilities, not logits: a probability is bounded, so one over-confident seed (a
    readout with a large logit spread) cannot outvote the others, as it can in a mean logit.
    """
    table = predictions.reset_index(drop=True)
    if "seed" not in table.columns:
        table["seed"] = 0
    grouped = table.groupby(["model", "patient_id"], sort=False)
    table["n_seeds"] = grouped["seed"].transform("nunique")
    table["score"] = grouped["score"].transform("mean")
    first = table.sort_values("seed", kind="stable").drop_duplicates(["model", "patient_id"])
    return first.sort_index().reset_index(drop=True)


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
