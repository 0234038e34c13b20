"""The patients a run trains on: the cached ROI crops of each patient, the patient table with
its split and folds, and the leakage guard (:class:`TrainData`, :func:`prepare_data`).

One patient is both time points of the preprocessing cache (``data/cache/<profile>/<patient>.npz``,
docs/CONTRACTS.md); a patient whose row in the cache index (``processed.csv``) is not ``ok`` is
skipped. All cached crops are loaded into memory once (a few MB per 100 patients). Plain NumPy
and pandas (no Keras): :mod:`utils.training.augment` and :mod:`utils.inference.batch` read
:class:`PatientArrays`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.config import (
    MIN_PER_CLASS,
    SEQUENCES,
    Paths,
    Profile,
    as_profile,
    cache_files,
    processed_csv,
)
from utils.io import write_atomic
from utils.preprocessing.cache import CACHE_ARRAYS, CacheError, load_cached
from utils.training.split import (
    K_FOLDS,
    make_folds,
    make_split,
    require_training_only,
    save_split,
)


@dataclass(frozen=True)
class PatientArrays:
    """One patient's cached ROI crops (docs/CONTRACTS.md)."""

    patient_id: str
    cohort: str
    centre: str
    pcr: int
    image_pre: np.ndarray  # float32 (z, y, x, C)
    image_post: np.ndarray
    mask_pre: np.ndarray  # uint8 (z, y, x)
    mask_post: np.ndarray
    spacing_zyx: np.ndarray  # float64 (3,)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # the cache's params

    @property
    def sequences(self) -> tuple[str, ...]:
        """The input channels, in order (older caches: the phantom's T2W, DWI)."""
        return tuple(self.preprocessing.get("sequences", SEQUENCES))

    def image(self, timepoint: str) -> np.ndarray:
        return self.image_pre if timepoint == "pre" else self.image_post

    def mask(self, timepoint: str) -> np.ndarray:
        return self.mask_pre if timepoint == "pre" else self.mask_post


def read_cache_file(path: Path, row: Mapping[str, Any]) -> PatientArrays:
    """Load and check one cached patient; errors name the patient and the file."""
    pid = str(row["patient_id"])
    arrays = load_cached(path)
    missing = [k for k in CACHE_ARRAYS if k not in arrays]
    if missing:
        raise CacheError(f"patient {pid}: cache file {path} lacks {missing}; rerun "
                         "preprocessing to recompute it")
    shape = arrays["image_pre"].shape
    if (arrays["image_post"].shape != shape or len(shape) != 4
            or arrays["mask_pre"].shape != shape[:3] or arrays["mask_post"].shape != shape[:3]):
        raise ValueError(f"patient {pid}: cache file {path} has inconsistent shapes "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    return PatientArrays(pid, str(row["cohort"]), str(row["centre"]), int(row["pcr"]),
                         arrays["image_pre"].astype(np.float32),
                         arrays["image_post"].astype(np.float32),
                         (arrays["mask_pre"] > 0).astype(np.uint8),
                         (arrays["mask_post"] > 0).astype(np.uint8),
                         arrays["spacing_zyx"].astype(np.float64),
                         arrays["meta"].get("params", {}))


def processed_ok(cache_dir: Path) -> set[str] | None:
    """Patients that ``processed.csv`` marks ``ok`` (None when the table is absent)."""
    table_path = processed_csv(cache_dir)
    if not table_path.exists():
        return None
    table = pd.read_csv(table_path, dtype={"patient_id": str})
    return set(table.loc[table["status"] == "ok", "patient_id"])


def load_patients(cache_dir: Path, patients: pd.DataFrame
                  ) -> tuple[dict[str, PatientArrays], dict[str, str]]:
    """Cached arrays of every patient in ``patients`` whose preprocessing succeeded.

    Returns ``(arrays by patient id, {skipped patient id: reason})``.
    """
    ok = processed_ok(cache_dir)
    loaded, skipped = {}, {}
    for row in patients.to_dict("records"):
        pid = str(row["patient_id"])
        path = cache_files(cache_dir, pid)["npz"]
        if ok is not None and pid not in ok:
            skipped[pid] = f"preprocessing failed (see {processed_csv(cache_dir)})"
        elif not path.exists():
            skipped[pid] = f"no cache file {path}"
        else:
            loaded[pid] = read_cache_file(path, row)
    return loaded, skipped


@dataclass
class TrainData:
    """Everything a run needs about its patients: table, split and cached arrays."""

    patients: pd.DataFrame  # patient_table + subset column (fit/tune/NaN)
    arrays: dict[str, PatientArrays]
    skipped: dict[str, str]

    def ids(self, subset: str | None = None, cohort: str | None = None) -> list[str]:
        """Loaded patients of a subset (fit/tune) or a cohort, sorted."""
        table = self.patients
        if subset is not None:
            table = table[table["subset"] == subset]
        if cohort is not None:
            table = table[table["cohort"] == cohort]
        return sorted(p for p in table["patient_id"] if p in self.arrays)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return next(iter(self.arrays.values())).image_pre.shape

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing parameters every cached patient shares (grid, ROI, sequences).

        Raises ValueError naming two patients whose caches disagree (e.g. a cache folder
        mixing runs with different sequences or ROI sizes)."""
        keys = ("sequences", "reference_sequence", "spacing_zyx", "roi_zyx")
        items = sorted(self.arrays.items())
        first_id, first = items[0]
        for pid, patient in items[1:]:
            for key in keys:
                if patient.preprocessing.get(key) != first.preprocessing.get(key):
                    raise ValueError(
                        f"cached patients {first_id} and {pid} differ in {key}: "
                        f"{first.preprocessing.get(key)} vs {patient.preprocessing.get(key)}; "
                        "preprocess the cohort again with one setting")
        return first.preprocessing

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self.preprocessing.get("sequences", SEQUENCES))


def prepare_data(profile: Profile | str | None, paths: Paths, tune_fraction: float = 0.2
                 ) -> TrainData:
    """Manifest -> patient table, split (saved to ``results/split.csv``), cached arrays."""
    from utils.cohort.manifest import load_manifest, patient_table

    prof = as_profile(profile)
    patients = patient_table(load_manifest(paths.manifest))
    patients["patient_id"] = patients["patient_id"].astype(str)
    split = make_split(patients, tune_fraction, prof.seed)
    save_split(split, paths.split_csv)
    folds = make_folds(patients[patients["cohort"] == "training"], seed=prof.seed)
    write_atomic(paths.folds_csv, lambda tmp: folds.to_csv(tmp, index=False))
    patients = patients.merge(split, on="patient_id", how="left").merge(
        folds, on="patient_id", how="left")
    arrays, skipped = load_patients(paths.cache_dir, patients)
    if not arrays:
        raise FileNotFoundError(f"no cached patient in {paths.cache_dir}; run "
                                "python -m utils.preprocessing first (notebook 01)")
    data = TrainData(patients, arrays, skipped)
    check_class_counts(data)
    return data


def check_class_counts(data: TrainData) -> None:
    """Refuse, before any epoch, a training cohort without both classes; warn below
    ``K_FOLDS`` patients per class (the readout's folds and the tune split then lack one)."""
    loaded = data.patients[data.patients["patient_id"].isin(data.ids(cohort="training"))]
    counts = {label: int((loaded["pcr"] == value).sum())
              for label, value in (("pCR", 1), ("non-pCR", 0))}
    found = f"{counts['pCR']} pCR and {counts['non-pCR']} non-pCR preprocessed patients"
    if min(counts.values()) < MIN_PER_CLASS:
        raise ValueError(f"the training cohort has {found}: training needs at least "
                         f"{MIN_PER_CLASS} of each class, and {K_FOLDS} of each for its "
                         f"{K_FOLDS}-fold readout and tune split")
    if min(counts.values()) < K_FOLDS:
        print(f"warning: the training cohort has {found}; its {K_FOLDS}-fold readout and "
              f"tune split want at least {K_FOLDS} of each class")


def check_no_leak(data: TrainData, ids: Iterable[str]) -> None:
    """Raise if any of ``ids`` is not a training-cohort patient."""
    require_training_only(ids, data.patients.set_index("patient_id")["cohort"])
