"""Tests of utils.training.readout (cross-validated logistic readout), utils.training.split's
folds and utils.evaluation.baseline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from utils.evaluation import baseline as bl
from utils.evaluation.labels import HANDCRAFTED_PRED
from utils.training import readout as ro
from utils.training.split import make_folds


def _patients(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)],
                         "pcr": (rng.random(n) < 0.3).astype(int)})


def test_folds_are_stratified_and_independent_of_row_order():
    patients = _patients()
    folds = make_folds(patients, k=5, seed=1)
    shuffled = make_folds(patients.sample(frac=1, random_state=3), k=5, seed=1)
    pd.testing.assert_frame_equal(folds, shuffled)
    merged = folds.merge(patients, on="patient_id")
    per_fold = merged.groupby("fold")["pcr"].agg(["size", "sum"])
    assert per_fold["size"].max() - per_fold["size"].min() <= 1
    assert per_fold["sum"].max() - per_fold["sum"].min() <= 1
    assert not folds.equals(make_folds(patients, k=5, seed=2))
    with pytest.raises(ValueError, match="k >= 2"):
        make_folds(patients, k=1)


def test_raw_space_coefficients_match_a_standardised_sklearn_pipeline():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4)) * [1, 10, 0.1, 3] + [0, 5, -2, 1]
    y = (x[:, 0] + 0.1 * x[:, 1] + rng.normal(size=80) > 0.5).astype(int)
    coef, intercept = ro.fit_logistic(x, y, 0.3)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
    expected = pipeline.fit(x, y).predict_proba(x)[:, 1]
    np.testing.assert_allclose(1 / (1 + np.exp(-(x @ coef + intercept))), expected, rtol=1e-6)


def test_out_of_fold_scores_never_see_their_own_label():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    y = (x[:, 0] > 0).astype(int)
    folds = np.arange(50) % 5
    before = ro.out_of_fold(x, y, folds, 1.0)
    flipped = y.copy()
    flipped[folds == 2] = 1 - flipped[folds == 2]
    after = ro.out_of_fold(x, flipped, folds, 1.0)
    np.testing.assert_array_equal(before[folds == 2], after[folds == 2])
    assert not np.allclose(before[folds != 2], after[folds != 2])


def test_readout_keeps_the_informative_group_and_zeroes_the_rest():
    rng = np.random.default_rng(2)
    n = 120
    tumour = rng.normal(size=(n, 3))
    noise = rng.normal(size=(n, 40))
    y = (tumour @ [1.5, -1.0, 0.5] + rng.normal(0, 0.7, n) > 0).astype(int)
    x = np.hstack([noise[:, :20], noise[:, 20:], tumour])
    groups = [("encoder", 20), ("bottleneck", 20), ("tumour", 3)]
    readout = ro.fit_readout(x, y, np.arange(n) % 5, groups)
    assert readout.features == "tumour"
    assert np.all(readout.coef[:40] == 0) and np.all(readout.coef[40:] != 0)
    assert set(readout.cv["features"]) == {"tumour", "tumour+encoder", "tumour+bottleneck",
                                           "tumour+encoder+bottleneck"}
    assert readout.oof_auc > 0.8 and readout.card()["k_folds"] == 5
    assert ro.candidate_sets([("all", 5)]).keys() == {"all"}
    with pytest.raises(ValueError, match="pCR and non-pCR"):
        ro.fit_readout(x, np.zeros(n, int), np.arange(n) % 5, groups)


def test_nested_score_of_a_fold_ignores_that_folds_labels_in_selection_too():
    rng = np.random.default_rng(3)
    n = 80
    x = rng.normal(size=(n, 12))
    y = (x[:, 0] + rng.normal(0, 1.0, n) > 0.3).astype(int)
    folds = np.arange(n) % 4
    groups = [("encoder", 6), ("tumour", 6)]
    before = ro.fit_readout(x, y, folds, groups, c_grid=(0.01, 1.0, 10.0))
    flipped = y.copy()
    flipped[folds == 1] = 1 - flipped[folds == 1]
    after = ro.fit_readout(x, flipped, folds, groups, c_grid=(0.01, 1.0, 10.0))
    np.testing.assert_array_equal(before.oof[folds == 1], after.oof[folds == 1])


def test_null_labels_nested_estimate_is_at_chance_where_the_selected_one_is_not():
    """The leakage test of the readout's selection: on labels that nothing predicts, the
    training-cohort score (nested out-of-fold) averages AUC 0.5 over repetitions, while the
    selected configuration's own CV AUC, the estimate a leaky selection would report, is
    biased upwards; this test fails if the training scores are made non-nested."""
    rng = np.random.default_rng(11)
    groups = [("tumour", 6), ("encoder", 10), ("bottleneck", 10)]
    nested, selected = [], []
    for _ in range(16):
        n = 60
        x = rng.normal(size=(n, 26))
        y = rng.permutation(np.r_[np.ones(18, int), np.zeros(n - 18, int)])
        readout = ro.fit_readout(x, y, np.arange(n) % 5, groups,
                                 c_grid=(1e-3, 1e-2, 0.1, 1.0, 10.0))
        nested.append(roc_auc_score(y, readout.oof))
        selected.append(readout.selected_cv_auc)
    assert abs(np.mean(nested) - 0.5) < 0.05, np.mean(nested)
    assert np.mean(selected) - np.mean(nested) > 0.05, (np.mean(selected), np.mean(nested))


def test_model_card_stores_the_chosen_weights_with_their_names():
    rng = np.random.default_rng(4)
    n = 100
    x = rng.normal(size=(n, 5)) * [1, 1, 1, 3, 0.5]
    y = (x[:, 3] - x[:, 4] * 4 + rng.normal(0, 1, n) > 0).astype(int)
    names = ["join_encoder_tumour_mean[0]", "join_encoder_tumour_mean[1]",
             "join_encoder_tumour_mean[2]", "log V pre", "log V post/pre"]
    readout = ro.fit_readout(x, y, np.arange(n) % 5, [("encoder", 3), ("tumour", 2)],
                             names=names)
    weights = pd.DataFrame(readout.card()["weights"])
    assert readout.features == "tumour" and set(weights["feature"]) == {"log V pre",
                                                                        "log V post/pre"}
    np.testing.assert_allclose(weights["standardised"],
                               weights["coef"] * x[:, [names.index(f) for f in
                                                      weights["feature"]]].std(axis=0))
    assert (weights["standardised"].abs().diff().dropna() <= 0).all()


# ----------------------------------------------------------------------------- baseline
def test_tumour_features_on_known_values():
    spacing = (2.0, 1.0, 1.0)  # 2 mm^3 voxels
    image = np.zeros((4, 10, 10, 2), np.float32)
    pre = np.zeros((4, 10, 10), np.uint8)
    post = np.zeros_like(pre)
    pre[:, :5, :5] = 1  # 100 voxels = 0.2 mL
    post[0, :2, :5] = 255  # 10 voxels = 0.02 mL, stored as {0, 255}
    image[0, :2, :5, 1] = [[6, 6, 6, 6, 6], [1, 1, 1, 1, 1]]
    features = bl.tumour_features(image, pre, post, spacing, dwi_channel=1)
    assert features["log_volume_ratio"] == pytest.approx(np.log(0.12 / 0.3))
    assert features["post_dwi_mean"] == pytest.approx(3.5)
    assert features["post_dwi_bright"] == pytest.approx(0.5)
    empty = bl.tumour_features(image, pre, np.zeros_like(post), spacing, dwi_channel=1)
    assert empty["post_dwi_mean"] == pytest.approx(35 / 100)  # falls back to the tumour bed


def test_handcrafted_model_is_fitted_on_training_rows_only():
    rng = np.random.default_rng(3)
    n = 90
    cohorts = np.array(["training"] * 60 + ["internal_validation"] * 30)
    table = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "cohort": cohorts,
                          "centre": "A", "pcr": (rng.random(n) < 0.4).astype(int),
                          **{f: rng.normal(size=n) for f in bl.FEATURES}})
    table["post_dwi_mean"] -= 2 * table["pcr"]
    folds = make_folds(table[table["cohort"] == "training"], k=5)
    rows, coef = bl.handcrafted_scores(table, folds, HANDCRAFTED_PRED)
    corrupted = table.copy()
    validation = corrupted["cohort"] != "training"
    corrupted.loc[validation, "pcr"] = 1 - corrupted.loc[validation, "pcr"]
    corrupted.loc[validation, list(bl.FEATURES)] *= 10
    other_rows, other_coef = bl.handcrafted_scores(corrupted, folds, HANDCRAFTED_PRED)
    pd.testing.assert_frame_equal(coef, other_coef)
    training = rows["cohort"] == "training"
    np.testing.assert_allclose(rows.loc[training, "score"], other_rows.loc[training, "score"])
    assert coef.set_index("feature").loc["post_dwi_mean", "coefficient"] < 0


def test_readout_weights_table_has_one_column_per_seed_and_zero_where_unchosen(tmp_path):
    from utils.training.curves import readout_weights

    cards = {"full": [("log V post/pre", -1.5), ("mean DWI post in post", -0.4)],
             "full_seed1": [("log V post/pre", -1.1), ("join_encoder_tumour_mean[2]", 0.9)],
             "post_only": [("log V", 3.0)]}
    for run, weights in cards.items():
        card = {"variant": run.split("_seed")[0], "seed": int(run[-1]) if "seed" in run else 0,
                "readout": {"weights": [{"feature": f, "coef": w, "standardised": w}
                                        for f, w in weights]}}
        (tmp_path / f"{run}.json").write_text(json.dumps(card))
    table = readout_weights(tmp_path, "full", top=2)
    assert list(table.columns) == ["seed 0", "seed 1"]
    assert list(table.index) == ["log V post/pre", "join_encoder_tumour_mean[2]"]
    assert table.loc["join_encoder_tumour_mean[2]", "seed 0"] == 0.0
    assert table.loc["log V post/pre"].tolist() == [-1.5, -1.1]
