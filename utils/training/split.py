"""The patient-level divisions of the TRAINING cohort: the fit/tune split, the
cross-validation folds of the readout, and the guard that no validation patient enters them.

Both deal patients the same way (:func:`hash_ordered_strata`): within each pCR stratum,
patients are ordered by a hash of ``(seed, purpose, patient id)``. A patient's subset or fold
therefore depends only on its id, its label, the seed and the other patients of the cohort,
not on the row order of the table: scikit-learn's ``StratifiedKFold`` (even with
``shuffle=True`` and a fixed ``random_state``) assigns by position, so reordering the manifest
would move patients between folds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from utils.config import K_FOLDS
from utils.io import write_atomic
from utils.repro import derive_seed


def hash_ordered_strata(patients: pd.DataFrame, seed: int, purpose: str) -> list[list[str]]:
    """Patient ids of each pCR stratum (ascending label), ordered by ``derive_seed(seed,
    purpose, id)``."""
    return [sorted(map(str, group["patient_id"]), key=lambda p: derive_seed(seed, purpose, p))
            for _, group in patients.groupby("pcr", sort=True)]


def make_split(patients: pd.DataFrame, tune_fraction: float = 0.2, seed: int = 2021
               ) -> pd.DataFrame:
    """Patient-level fit/tune split of the TRAINING cohort only, stratified by pCR.

    Within each hash-ordered pCR stratum the first ``round(n * tune_fraction)`` go to
    ``tune`` (at least one when the stratum has two or more patients). Validation cohorts
    never appear. Returns ``patient_id, subset``.
    """
    train = patients[patients["cohort"] == "training"]
    if train.empty:
        raise ValueError("the patient table has no training-cohort patient to split")
    rows = []
    for ids in hash_ordered_strata(train, seed, "split"):
        n_tune = round(len(ids) * tune_fraction)
        n_tune = max(n_tune, 1) if len(ids) >= 2 and tune_fraction > 0 else n_tune
        rows += [(pid, "tune" if i < n_tune else "fit") for i, pid in enumerate(ids)]
    split = pd.DataFrame(rows, columns=["patient_id", "subset"])
    return split.sort_values("patient_id").reset_index(drop=True)


def save_split(split: pd.DataFrame, path: Path) -> Path:
    """Write a split (or folds) table atomically."""
    return write_atomic(path, lambda tmp: split.to_csv(tmp, index=False))


def make_folds(patients: pd.DataFrame, k: int = K_FOLDS, seed: int = 2021) -> pd.DataFrame:
    """Stratified patient folds ``patient_id, fold`` (0..k-1) of the rows of ``patients``:
    the hash-ordered strata, one after the other, dealt to the folds in turn."""
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}")
    rows = []
    offset = 0
    for ids in hash_ordered_strata(patients, seed, "fold"):
        rows += [(pid, (offset + i) % k) for i, pid in enumerate(ids)]
        offset += len(ids)
    folds = pd.DataFrame(rows, columns=["patient_id", "fold"])
    return folds.sort_values("patient_id").reset_index(drop=True)


def require_training_only(ids: Iterable[str], cohort_of: Mapping[str, str]) -> None:
    """Raise, naming them, if any of ``ids`` (split, folds, fit batches) is not a
    training-cohort patient according to ``cohort_of`` (patient id -> cohort)."""
    bad = sorted(p for p in set(ids) if cohort_of.get(p) != "training")
    if bad:
        raise ValueError(f"validation-cohort patients would reach training or model selection: "
                         f"{bad[:10]}")
