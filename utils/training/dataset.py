"""Training data: cached patients, the fit/tune split, balanced sampling and the Keras dataset.

One sample is one patient: both time points of the preprocessing cache
(``data/cache/<profile>/<patient>.npz``, docs/CONTRACTS.md), ``x = {"pre", "post"}`` (z, y, x, C)
and ``y = {"mask_pre", "mask_post"}`` (z, y, x, 1) plus ``"pcr"`` (1,), filtered to the variant's
inputs and outputs. All cached crops are loaded into memory once (a few MB per 100 patients).

Model selection never sees a validation cohort. :func:`make_split` divides the TRAINING cohort
only, by patient and stratified by pCR, into ``fit`` (gradient updates) and ``tune`` (checkpoint
selection, learning-rate plateaus, early stopping); it is saved as ``results/split.csv``;
:func:`check_no_leak` guards every use.

Class imbalance: balanced sampling, as the authors' 5x oversampling of pCR patients. Every
epoch holds every fit patient once plus repeated pCR patients, so that pCR patients make up
``pcr_fraction`` (default 0.5) of the epoch (:func:`balanced_epoch`). The order and the
augmentation (:mod:`utils.training.augment`) of an epoch depend only on ``(seed, epoch)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from utils.config import SEQUENCES, Paths, Profile, as_profile, cache_files, processed_csv
from utils.io import write_atomic
from utils.model.rpnet import VARIANTS
from utils.preprocessing.cache import CACHE_ARRAYS, CacheError, load_cached
from utils.repro import derive_seed, derived_rng
from utils.training.augment import AugmentConfig, augment_patient, sample_rng
from utils.training.readout import make_folds


# --------------------------------------------------------------------------- cache
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


# --------------------------------------------------------------------------- split
def make_split(patients: pd.DataFrame, tune_fraction: float = 0.2, seed: int = 2021
               ) -> pd.DataFrame:
    """Patient-level fit/tune split of the TRAINING cohort only, stratified by pCR.

    Within each pCR stratum patients are ordered by a hash of (seed, patient id) and the first
    ``round(n * tune_fraction)`` go to ``tune`` (at least one when the stratum has two or more
    patients). Validation cohorts never appear. Returns ``patient_id, subset``.
    """
    train = patients[patients["cohort"] == "training"]
    if train.empty:
        raise ValueError("the patient table has no training-cohort patient to split")
    rows = []
    for _, group in train.groupby("pcr", sort=True):
        ids = sorted(map(str, group["patient_id"]), key=lambda p: derive_seed(seed, "split", p))
        n_tune = round(len(ids) * tune_fraction)
        n_tune = max(n_tune, 1) if len(ids) >= 2 and tune_fraction > 0 else n_tune
        rows += [(pid, "tune" if i < n_tune else "fit") for i, pid in enumerate(ids)]
    split = pd.DataFrame(rows, columns=["patient_id", "subset"])
    return split.sort_values("patient_id").reset_index(drop=True)


def save_split(split: pd.DataFrame, path: Path) -> Path:
    return write_atomic(path, lambda tmp: split.to_csv(tmp, index=False))


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
                                "python -m utils.preprocess first (notebook 01)")
    return TrainData(patients, arrays, skipped)


def check_no_leak(data: TrainData, ids: Iterable[str]) -> None:
    """Raise if any of ``ids`` is not a training-cohort patient."""
    require_training_only(ids, data.patients.set_index("patient_id")["cohort"])


def require_training_only(ids: Iterable[str], cohort_of: Mapping[str, str]) -> None:
    """Raise, naming them, if any of ``ids`` (split, folds, fit batches) is not a
    training-cohort patient according to ``cohort_of`` (patient id -> cohort)."""
    bad = sorted(p for p in set(ids) if cohort_of.get(p) != "training")
    if bad:
        raise ValueError(f"validation-cohort patients would reach training or model selection: "
                         f"{bad[:10]}")


# --------------------------------------------------------------------------- sampling
def balanced_epoch(ids: Sequence[str], labels: Mapping[str, int], pcr_fraction: float | None,
                   rng: np.random.Generator) -> list[str]:
    """One shuffled epoch: every patient once, pCR patients repeated to ``pcr_fraction``.

    With ``n_neg`` non-responders the epoch holds ``round(f * n_neg / (1 - f))`` pCR samples
    (each pCR patient ``k`` or ``k + 1`` times). ``None`` (or a single class): no resampling.
    """
    pos = [p for p in ids if labels[p] == 1]
    neg = [p for p in ids if labels[p] != 1]
    items = list(ids)
    if pcr_fraction is not None and pos and neg:
        n_pos = max(1, round(pcr_fraction * len(neg) / (1 - pcr_fraction)))
        reps, extra = divmod(n_pos, len(pos))
        items = neg + pos * reps + list(rng.choice(pos, extra, replace=False))
    return [items[i] for i in rng.permutation(len(items))]


def epoch_fraction(ids: Sequence[str], labels: Mapping[str, int], pcr_fraction: float | None
                   ) -> float:
    """Expected fraction of pCR samples in a training epoch."""
    pos = sum(labels[p] == 1 for p in ids)
    if pcr_fraction is None or pos == 0 or pos == len(ids):
        return pos / max(len(ids), 1)
    n_pos = max(1, round(pcr_fraction * (len(ids) - pos) / (1 - pcr_fraction)))
    return n_pos / (n_pos + len(ids) - pos)


# --------------------------------------------------------------------------- dataset
def _targets(arrays: Sequence[Mapping[str, np.ndarray]], pcr: Sequence[int],
             outputs: Sequence[str]) -> dict[str, np.ndarray]:
    y: dict[str, np.ndarray] = {}
    for name in outputs:
        if name == "pcr":
            y[name] = np.asarray(pcr, dtype=np.float32).reshape(-1, 1)
        else:
            y[name] = np.stack([a[name] for a in arrays]).astype(np.float32)[..., None]
    return y


class RPNetDataset(keras.utils.PyDataset):
    """Batches of patients for one variant (works under the TF, JAX and torch backends).

    ``training=True``: balanced, shuffled, augmented epochs whose content depends only on
    ``(seed, epoch, batch index)``; the epoch counter is :attr:`epoch` (:class:`EpochSync` sets
    it from Keras' epoch; :meth:`on_epoch_end` advances it). The batch order is the dataset's:
    fit it with ``shuffle=False``. Epoch length is a whole number of batches:
    ``steps_per_epoch`` if given, else the balanced epoch rounded up. ``training=False``:
    every patient once in sorted order, no augmentation (the last batch may be short).
    """

    def __init__(self, arrays: Mapping[str, PatientArrays], ids: Sequence[str], variant: str,
                 batch_size: int, *, training: bool = False, seed: int = 0,
                 augment: AugmentConfig | None = None, pcr_fraction: float | None = None,
                 steps_per_epoch: int | None = None, epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not ids:
            raise ValueError("a dataset needs at least one patient")
        missing = [p for p in ids if p not in arrays]
        if missing:
            raise KeyError(f"patients without cached arrays: {missing[:10]}")
        self.arrays, self.ids = arrays, sorted(ids)
        self.spec, self.batch_size, self.training = VARIANTS[variant], batch_size, training
        self.seed, self.augment = seed, augment if augment is not None else AugmentConfig()
        self.pcr_fraction, self.steps_per_epoch, self.epoch = pcr_fraction, steps_per_epoch, epoch
        self._labels = {p: arrays[p].pcr for p in self.ids}
        self._order: tuple[int, list[str]] | None = None

    def epoch_order(self, epoch: int | None = None) -> list[str]:
        """Patient ids of every sample of an epoch, in batch order."""
        epoch = self.epoch if epoch is None else epoch
        if not self.training:
            return list(self.ids)
        cached = self._order
        if cached is not None and cached[0] == epoch:
            return cached[1]
        order = self._balanced_rounds(epoch)
        self._order = (epoch, order)
        return order

    def _balanced_rounds(self, epoch: int) -> list[str]:
        first = balanced_epoch(self.ids, self._labels, self.pcr_fraction,
                               derived_rng(self.seed, "order", epoch, 0))
        n_batches = self.steps_per_epoch or math.ceil(len(first) / self.batch_size)
        order, rounds = list(first), 1
        while len(order) < n_batches * self.batch_size:
            order += balanced_epoch(self.ids, self._labels, self.pcr_fraction,
                                    derived_rng(self.seed, "order", epoch, rounds))
            rounds += 1
        return order[:n_batches * self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.epoch_order()) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        epoch = self.epoch
        start = index * self.batch_size
        ids = self.epoch_order(epoch)[start:start + self.batch_size]
        samples = [self._sample(pid, epoch, start + i) for i, pid in enumerate(ids)]
        x = {tp: np.stack([s[f"image_{tp}"] for s in samples]) for tp in self.spec.inputs}
        return x, _targets(samples, [self._labels[p] for p in ids], self.spec.outputs)

    def _sample(self, pid: str, epoch: int, position: int) -> dict[str, np.ndarray]:
        p = self.arrays[pid]
        if self.training and self.augment.enabled:
            return augment_patient(p, sample_rng(self.seed, epoch, position), self.augment)
        return {"image_pre": p.image_pre, "image_post": p.image_post,
                "mask_pre": p.mask_pre, "mask_post": p.mask_post}

    def on_epoch_end(self) -> None:
        if self.training:
            self.epoch += 1


class EpochSync(keras.callbacks.Callback):
    """Sets a dataset's epoch from Keras' epoch number before each epoch, so that the batches
    of epoch ``e`` are the same in an uninterrupted and in a resumed ``fit``.

    Keras epoch ``e`` (0-based) draws the dataset's epoch ``e + 1``: the earlier loop called
    ``fit`` once per epoch, and Keras advances a PyDataset once (``on_epoch_end``) before the
    first batch of every ``fit``; the same numbering keeps its results reproducible."""

    def __init__(self, dataset: RPNetDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.dataset.epoch = epoch + 1


def stacked_inputs(data: TrainData, ids: Sequence[str], variant: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All of ``ids`` as one unaugmented batch (x, y) for a variant."""
    spec = VARIANTS[variant]
    arrays = [data.arrays[p] for p in ids]
    x = {tp: np.stack([a.image(tp) for a in arrays]) for tp in spec.inputs}
    masks = [{"mask_pre": a.mask_pre, "mask_post": a.mask_post} for a in arrays]
    return x, _targets(masks, [a.pcr for a in arrays], spec.outputs)
