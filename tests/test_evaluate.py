"""Tests of the evaluation tables and :func:`utils.evaluation.evaluate.run_evaluation` on a
synthetic run (tests/evalrun.py), checked against independent computations."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from tests.evalrun import MASK_MODELS, MODELS, all_figures, evaluate_run
from utils import measures
from utils.cohort.manifest import MARKERS
from utils.config import COHORTS
from utils.evaluation import cohorttables as ct
from utils.evaluation import comparisons, rates, results, scoretable
from utils.evaluation import evaluate as ev
from utils.evaluation import integrated as ig
from utils.evaluation import labels as lb
from utils.evaluation import predictions as pr
from utils.evaluation import stats as st


# ----------------------------------------------------------------------------- independent checks
def brute_force_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and DeLong covariance from explicit pairwise placements (DeLong et al. 1988)."""
    pos, neg = y == 1, y == 0
    kernel = [(s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
              for s in scores]
    aucs = np.array([k.mean() for k in kernel])
    v10 = np.array([k.mean(axis=1) for k in kernel])  # per positive patient
    v01 = np.array([k.mean(axis=0) for k in kernel])  # per negative patient
    cov = np.cov(v10) / pos.sum() + np.cov(v01) / neg.sum()
    return aucs, np.atleast_2d(cov)


def _scores_of(evaluation: ev.Evaluation, cohort: str, *models: str) -> pd.DataFrame:
    wide = evaluation.scores.pivot_table(index=["patient_id", "cohort", "pcr"], columns="model",
                                         values="score").reset_index()
    return wide[wide["cohort"] == cohort].dropna(subset=list(models))


# ----------------------------------------------------------------------------- structure
def test_full_evaluation_has_expected_structure(evaluation: ev.Evaluation):
    models = set(MODELS) | {lb.VOLUME_GT, lb.VOLUME_PRED, lb.ORACLE, lb.IMAGE_ORACLE,
                            lb.INTEGRATED, *lb.HANDCRAFTED}
    assert set(evaluation.auc["model"]) == models
    assert len(evaluation.auc) == len(models) * len(COHORTS)
    assert set(evaluation.thresholds["method"]) == set(rates.THRESHOLD_METHODS)
    assert len(evaluation.performance) == len(models) * len(COHORTS) * 2
    families = set(evaluation.tests["family"])
    assert families == {"ablation", "handcrafted baseline", "volume baseline", "integrated"}
    seg = evaluation.segmentation
    assert set(seg["model"]) == set(MASK_MODELS)
    assert set(seg[seg["model"] == "pre_only"]["timepoint"]) == {"pre"}
    assert seg["hd95_mm"].isna().sum() == 1  # the full model's one empty predicted post mask


def test_auc_table_matches_sklearn_and_a_brute_force_delong_interval(evaluation: ev.Evaluation):
    for _, row in evaluation.auc.iterrows():
        rows = evaluation.scores[(evaluation.scores["model"] == row["model"])
                                 & (evaluation.scores["cohort"] == row["cohort"])]
        y, s = rows["pcr"].to_numpy(int), rows["score"].to_numpy(float)
        assert row["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12), row["model"]
        auc, cov = brute_force_delong(y, [s])
        half = norm.ppf(0.975) * np.sqrt(cov[0, 0])
        assert row["auc_ci_low"] == pytest.approx(max(0.0, auc[0] - half), abs=1e-12)
        assert row["auc_ci_high"] == pytest.approx(min(1.0, auc[0] + half), abs=1e-12)


def test_paired_tests_match_a_brute_force_delong_and_holm(evaluation: ev.Evaluation):
    for _, row in evaluation.tests.iterrows():
        both = _scores_of(evaluation, row["cohort"], row["model_a"], row["model_b"])
        y = both["pcr"].to_numpy(int)
        aucs, cov = brute_force_delong(y, [both[row["model_a"]].to_numpy(),
                                           both[row["model_b"]].to_numpy()])
        z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        assert row["z"] == pytest.approx(z, rel=1e-9)
        assert row["p_two_sided"] == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
        assert row["p_greater"] == pytest.approx(norm.sf(z), rel=1e-9)
    for _, group in evaluation.tests.groupby("cohort"):
        p = group["p_greater"].to_numpy()
        order = np.argsort(p)
        steps = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
        np.testing.assert_allclose(group["p_greater_holm"].to_numpy()[order], steps)


def test_dice_matches_the_mask_files(evaluation: ev.Evaluation, eval_run: Path):
    for _, row in evaluation.segmentation.iterrows():
        pred = np.load(eval_run / "masks" / row["model"] / f"{row['patient_id']}.npz")
        truth = np.load(eval_run / "cache" / f"{row['patient_id']}.npz")
        a, b = pred[f"mask_{row['timepoint']}"] > 0, truth[f"mask_{row['timepoint']}"] > 0
        assert bool(row["reference_empty"]) == (not b.any())
        if not b.any():  # an empty reference (complete response): kept, scored by convention
            assert row["dice"] == (1.0 if not a.any() else 0.0)
            continue
        assert row["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_segmentation_rows_say_how_much_of_the_tumour_the_roi_held(evaluation: ev.Evaluation,
                                                                   eval_run: Path):
    seg = evaluation.segmentation
    for _, row in seg.iterrows():
        meta = json.loads(str(np.load(eval_run / "cache" / f"{row['patient_id']}.npz")[
            "meta_json"]))["roi"]
        expected = (1.0 if meta["source"] == "mask"
                    else meta["scoring"][f"tumour_inside_{row['timepoint']}"])
        assert row["tumour_inside_roi"] == expected
    cut = seg[seg["tumour_inside_roi"] < 1.0]
    assert len(cut) and (cut["cohort"] != "training").all()
    summary = evaluation.seg_summary
    assert summary["roi_cut"].sum() == len(cut)


def test_empty_predicted_mask_gives_zero_dice_and_undefined_hd95(evaluation: ev.Evaluation):
    seg = evaluation.segmentation
    undefined = seg[seg["hd95_mm"].isna()]
    assert (undefined["dice"] == 0).all() and (undefined["timepoint"] == "post").all()
    summary = evaluation.seg_summary
    assert summary["hd95_undefined"].sum() == len(undefined)


def test_metrics_json_has_required_keys(evaluation: ev.Evaluation, tmp_path: Path):
    path = results.write_metrics(tmp_path, evaluation.metrics)
    metrics = json.loads(path.read_text())
    assert set(metrics["cohorts"]) == set(COHORTS)
    for cohort, models in metrics["cohorts"].items():
        assert lb.ORACLE not in models
        for model, entry in models.items():
            missing = set(results.METRIC_KEYS) - set(entry)
            assert not missing, f"{cohort}/{model} lacks {missing}"
        assert models["full"]["dice_pre"] is not None and models["full"]["oracle_auc"] > 0.5
        assert models["full"]["image_oracle_auc"] > 0.5
        assert models["full"]["n_seeds"] == 3 and models["paper_head"]["n_seeds"] == 1
        assert isinstance(models["full"]["n_seeds"], int)
        assert models["full"]["auc_seed_min"] <= models["full"]["auc_seed_mean"]
        assert {m for m in models if "handcrafted" in m} == set(lb.HANDCRAFTED)
        assert models["single_task"]["dice_pre"] is None  # NaN -> null
    assert "NaN" not in path.read_text()
    assert "not the paper" in metrics["meta"]["note"].lower()


def test_tables_are_written(evaluation: ev.Evaluation, tmp_path: Path):
    written = results.write_tables(tmp_path, evaluation.tables())
    assert {p.name for p in written} >= {"performance_table.csv", "paired_delong_tests.csv",
                                         "integrated_coefficients.csv", "auc_table.csv"}
    table = pd.read_csv(tmp_path / "performance_table.csv")
    assert {"auc", "auc_ci_low", "sensitivity", "specificity", "ppv", "npv",
            "accuracy"} <= set(table.columns)


def test_volume_reduction_scores_match_definition(evaluation: ev.Evaluation, eval_run: Path):
    predictions = pr.load_predictions(eval_run / "results" / "predictions.csv")
    full = predictions[predictions["model"] == "full"].set_index("patient_id")
    scores = evaluation.scores[evaluation.scores["model"] == lb.VOLUME_GT].set_index(
        "patient_id")["score"]
    expected = 1 - full["vol_post_true_ml"] / full["vol_pre_true_ml"]
    np.testing.assert_allclose(scores.loc[expected.index], expected)
    assert np.isfinite(measures.volume_reduction([0.0], [1.0])).all()


# ----------------------------------------------------------------------------- operating point
def test_operating_point_from_training_is_applied_unchanged():
    train_y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    train_s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    valid_y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    valid_s = np.array([0.1, 0.55, 0.6, 0.65, 0.7, 0.85, 0.9, 0.95])
    scores = pd.DataFrame({
        "model": "full", "patient_id": [f"P{i}" for i in range(16)],
        "cohort": ["training"] * 8 + ["internal_validation"] * 8, "centre": "A",
        "pcr": np.r_[train_y, valid_y], "score": np.r_[train_s, valid_s]})
    thresholds = ct.choose_operating_points(scores)
    chosen = thresholds.set_index("method")["threshold"]
    assert chosen["closest_topleft"] == pytest.approx(0.5)
    assert rates.choose_threshold(valid_y, valid_s) == pytest.approx(0.85)  # differs on validation
    perf = ct.performance_table(scores, thresholds)
    row = perf[(perf["cohort"] == "internal_validation")
               & (perf["method"] == "closest_topleft")].iloc[0]
    assert row["threshold"] == pytest.approx(0.5)
    expected = rates.binary_performance(valid_y, valid_s, 0.5)
    for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy",
                 "specificity_low", "specificity_high"):
        assert row[name] == pytest.approx(expected[name])
    assert row["specificity"] == pytest.approx(1 / 5)


# ----------------------------------------------------------------------------- integrated model
def test_integrated_model_is_fitted_on_training_rows_only(eval_run: Path,
                                                          evaluation: ev.Evaluation):
    from utils.cohort.manifest import load_manifest, patient_table

    patients = patient_table(load_manifest(eval_run / "manifest.csv"))
    corrupted = patients.copy()
    validation = corrupted["cohort"] != "training"
    corrupted.loc[validation, list(MARKERS)] = 1e4  # and flipped validation labels below
    scores = evaluation.scores[evaluation.scores["model"] != lb.INTEGRATED].copy()
    scores.loc[scores["cohort"] != "training", "pcr"] = 1 - scores["pcr"]
    split = pr.read_optional_csv(eval_run / "results" / "split.csv")
    other = ig.fit_integrated(ig.integrated_inputs(scores, corrupted), ig.tune_ids(split),
                              out_of_fold=True)
    pd.testing.assert_frame_equal(evaluation.integrated.coefficients, other.coefficients)
    assert other.intercept == evaluation.integrated.intercept
    assert "out-of-fold" in evaluation.integrated.fit_on
    assert evaluation.integrated.n_fit == 24  # every training patient (scores out-of-fold)


def test_integrated_model_falls_back_to_training_cohort_without_tune_subset(
        evaluation: ev.Evaluation):
    scores = evaluation.scores[evaluation.scores["model"] == "full"]
    patients = scores[["patient_id"]].assign(**dict.fromkeys(MARKERS, 1.0))
    model = ig.fit_integrated(ig.integrated_inputs(scores, patients), tune=set())
    assert "whole training cohort" in model.fit_on and model.n_fit == 24


# ----------------------------------------------------------------------------- one class
def test_single_class_cohort_gives_nan_not_a_crash(eval_run: Path, tmp_path: Path):
    predictions = pr.load_predictions(eval_run / "results" / "predictions.csv")
    predictions.loc[predictions["cohort"] == "internal_validation", "pcr"] = 0
    result = evaluate_run(eval_run, predictions=predictions)
    internal = result.auc[result.auc["cohort"] == "internal_validation"]
    assert internal["auc"].isna().all() and internal["note"].str.contains("one class").all()
    perf = result.performance[(result.performance["cohort"] == "internal_validation")]
    assert perf["sensitivity"].isna().all() and perf["specificity"].notna().all()
    tests = result.tests[result.tests["cohort"] == "internal_validation"]
    assert tests["p_two_sided"].isna().all()
    entry = result.metrics["cohorts"]["internal_validation"]["full"]
    assert entry["auc"] is None and entry["specificity"] is not None
    results.write_metrics(tmp_path, result.metrics)
    for fig in all_figures(result, eval_run):
        plt.close(fig)


def test_one_pcr_patient_gives_nan_intervals_and_tests_with_a_reason(eval_run: Path):
    predictions = pr.load_predictions(eval_run / "results" / "predictions.csv")
    internal = predictions["cohort"] == "internal_validation"
    keep = predictions.loc[internal & (predictions["pcr"] == 1), "patient_id"].iloc[0]
    predictions.loc[internal & (predictions["patient_id"] != keep), "pcr"] = 0
    scores = scoretable.score_table(pr.seed_average(predictions))
    auc = ct.auc_table(scores, n_boot=50)
    row = auc[(auc["cohort"] == "internal_validation") & (auc["model"] == "full")].iloc[0]
    assert np.isfinite(row["auc"]) and np.isnan(row["auc_ci_low"]) and np.isnan(
        row["auc_ci_high"])
    assert "fewer than two patients" in row["note"]
    tests = comparisons.paired_delong_tests(scores)
    internal_tests = tests[tests["cohort"] == "internal_validation"]
    assert internal_tests["p_two_sided"].isna().all() and internal_tests["p_greater"].isna().all()
    assert internal_tests["note"].str.contains("fewer than two patients").all()


# ----------------------------------------------------------------------------- seeds
def test_seed_average_is_the_mean_probability_and_keeps_one_row_per_patient():
    rows = pd.DataFrame({"model": "full", "seed": [0, 1, 2], "patient_id": "P1",
                         "cohort": "training", "centre": "A", "pcr": 1,
                         "score": [0.2, 0.5, 0.9]})
    averaged = pr.seed_average(pd.concat([rows, rows.iloc[[0]].assign(model="other")]))
    full = averaged[averaged["model"] == "full"].iloc[0]
    assert full["score"] == pytest.approx(np.mean([0.2, 0.5, 0.9])) and full["n_seeds"] == 3
    assert len(averaged) == 2 and averaged.loc[averaged["model"] == "other", "score"].item() == (
        pytest.approx(0.2))


def test_seed_pair_agreement_counts_same_seed_pairs_in_the_ensembles_direction():
    seed_aucs = pd.DataFrame({
        "model": ["full"] * 3 + ["post_only"] * 3, "seed": [0, 1, 2] * 2,
        "cohort": "internal_validation", "auc": [0.90, 0.80, 0.88, 0.85, 0.86, 0.70]})
    tests = pd.DataFrame({"cohort": "internal_validation", "model_a": "full",
                          "model_b": ["post_only", "handcrafted_pred", "volume_gt"],
                          "diff": [0.05, -0.02, np.nan], "auc_b": [0.80, 0.89, 0.6]})
    out = comparisons.seed_pair_agreement(tests, seed_aucs).set_index("model_b")
    # full - post_only per seed: +0.05, -0.06, +0.18 -> 2 of 3 positive like the ensemble
    assert out.loc["post_only", ["seed_pairs", "seed_pairs_agree"]].tolist() == [3, 2]
    # against a baseline's single AUC 0.89: -0.01 (seed 1: -0.09), +0.01 -> 2 of 3 negative
    assert out.loc["handcrafted_pred", ["seed_pairs", "seed_pairs_agree"]].tolist() == [3, 2]
    assert out.loc["volume_gt", ["seed_pairs", "seed_pairs_agree"]].tolist() == [0, 0]


def test_seed_auc_table_has_one_auc_per_seed(eval_run: Path):
    predictions = pr.load_predictions(eval_run / "results" / "predictions.csv")
    table = pr.seed_auc_table(predictions)
    full = table[(table["model"] == "full") & (table["cohort"] == "internal_validation")]
    assert sorted(full["seed"]) == [0, 1, 2]
    one = full.iloc[0]
    rows = predictions[(predictions["model"] == "full") & (predictions["seed"] == one["seed"])
                       & (predictions["cohort"] == "internal_validation")]
    assert one["auc"] == pytest.approx(st.roc_auc(rows["pcr"].to_numpy(), rows["score"].to_numpy()))
    summary = pr.seed_summary(table).set_index(["model", "cohort"])
    assert summary.loc[("full", "internal_validation"), "auc_seed_min"] == pytest.approx(
        full["auc"].min())


def test_handcrafted_baseline_is_compared_with_the_main_model(evaluation: ev.Evaluation):
    tests = evaluation.tests[evaluation.tests["family"] == "handcrafted baseline"]
    assert set(tests["model_b"]) == set(lb.HANDCRAFTED)
    assert evaluation.handcrafted is not None and len(evaluation.handcrafted) == 8
