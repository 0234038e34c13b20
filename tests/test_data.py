"""Tests of utils.training.dataset: split, leakage guard, balanced sampling and the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import (
    COHORT_SIZES,
    PROFILE,
    ROI,
    paths_under,
)
from utils.model.variants import VARIANTS
from utils.training.dataset import RPNetDataset
from utils.training.modelcard import correct_prior
from utils.training.patients import TrainData, check_no_leak
from utils.training.sampling import balanced_epoch, epoch_fraction
from utils.training.split import make_split


# --------------------------------------------------------------------------- split, leakage
def test_split_is_training_only_stratified_and_saved(cohort: Path, data: TrainData):
    split = pd.read_csv(paths_under(cohort, "run_a").split_csv, dtype={"patient_id": str})
    assert list(split.columns) == ["patient_id", "subset"]
    assert set(split["subset"]) == {"fit", "tune"}
    cohort_of = data.patients.set_index("patient_id")["cohort"]
    assert set(cohort_of[split["patient_id"]]) == {"training"}
    assert len(split) == COHORT_SIZES["training"]
    tune = data.patients[data.patients["subset"] == "tune"]
    n_pos = int(data.patients.query("cohort == 'training'")["pcr"].sum())
    n_neg = COHORT_SIZES["training"] - n_pos
    assert set(tune["pcr"]) == {0, 1} and len(tune) == round(0.2 * n_pos) + round(0.2 * n_neg)
    again = make_split(data.patients.drop(columns="subset"), 0.2, PROFILE.seed)
    pd.testing.assert_frame_equal(split, again)


def test_datasets_iterate_only_fit_and_tune_patients(data: TrainData):
    fit, tune = data.ids("fit"), data.ids("tune")
    assert not set(fit) & set(tune)
    ds = RPNetDataset(data.arrays, fit, "full", 4, training=True, pcr_fraction=0.5)
    seen = {p for e in range(3) for p in ds.epoch_order(e)}
    assert seen == set(fit)
    check_no_leak(data, fit + tune)
    with pytest.raises(ValueError, match="validation-cohort"):
        check_no_leak(data, [*fit, data.ids(cohort="external_validation")[0]])


# --------------------------------------------------------------------------- sampling
def test_balanced_sampling_rate():
    ids = [f"P{i:02d}" for i in range(40)]
    labels = {p: int(i < 10) for i, p in enumerate(ids)}
    epoch = balanced_epoch(ids, labels, 0.5, np.random.default_rng(0))
    positives = [p for p in epoch if labels[p]]
    assert len(positives) == 30 and len(epoch) == 60
    assert all(epoch.count(p) == 3 for p in ids[:10])
    assert all(epoch.count(p) == 1 for p in ids[10:])
    natural = balanced_epoch(ids, labels, None, np.random.default_rng(0))
    assert sorted(natural) == sorted(ids)
    assert epoch_fraction(ids, labels, 0.5) == pytest.approx(0.5)
    assert correct_prior(np.array([0.5]), 0.5, 0.25)[0] == pytest.approx(0.25)


def test_dataset_epochs_hit_the_fraction_and_whole_batches(data: TrainData):
    ds = RPNetDataset(data.arrays, data.ids("fit"), "full", 4, training=True,
                      pcr_fraction=0.5)
    order = ds.epoch_order(0)
    assert len(order) % 4 == 0
    frac = np.mean([data.arrays[p].pcr for p in order])
    assert abs(frac - 0.5) < 0.1
    fixed = RPNetDataset(data.arrays, data.ids("fit"), "full", 4, training=True,
                         pcr_fraction=0.5, steps_per_epoch=7)
    assert len(fixed) == 7 and len(fixed.epoch_order(2)) == 28


# --------------------------------------------------------------------------- dataset
def test_augmentation_is_deterministic_per_seed_epoch_index(data: TrainData):
    def dataset() -> RPNetDataset:
        return RPNetDataset(data.arrays, data.ids("fit"), "full", 4, training=True,
                            seed=5, pcr_fraction=0.5, epoch=3)

    a, b = dataset(), dataset()
    later = b[2]  # other batches first: no dependence on fetch order
    first = a[0]
    for key in first[0]:
        np.testing.assert_array_equal(first[0][key], b[0][0][key])
        np.testing.assert_array_equal(a[2][0][key], later[0][key])
    for key in first[1]:
        np.testing.assert_array_equal(first[1][key], b[0][1][key])
    b.epoch = 4
    assert not np.array_equal(first[0]["pre"], b[0][0]["pre"])
    assert set(first[0]) == {"pre", "post"}
    assert first[1]["mask_pre"].shape == (4, *ROI, 1) and first[1]["pcr"].shape == (4, 1)


def test_dataset_filters_to_variant_inputs_and_outputs(data: TrainData):
    for variant in ("pre_only", "single_task"):
        ds = RPNetDataset(data.arrays, data.ids("fit"), variant, 2)
        x, y = ds[0]
        assert set(x) == set(VARIANTS[variant].inputs)
        assert set(y) == set(VARIANTS[variant].outputs)


def test_require_training_only_names_validation_patients():
    from utils.training.split import require_training_only

    cohorts = {"TR1": "training", "IV1": "internal_validation", "EV1": "external_validation"}
    require_training_only(["TR1"], cohorts)
    with pytest.raises(ValueError, match=r"\['EV1', 'IV1'\]"):
        require_training_only(["TR1", "IV1", "EV1"], cohorts)
    with pytest.raises(ValueError, match="XX"):
        require_training_only(["XX"], cohorts)  # unknown patient: not known to be training
