"""Tests of utils.evaluate on a synthetic run (predictions, split, markers, masks, cache)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from utils import evaluate as ev
from utils import stats as st
from utils.config import COHORTS, ROOT
from utils.figures import save_figure
from utils.io import save_npz_atomic
from utils.manifest import MARKERS

SHAPE = (8, 16, 16)
SPACING = (4.0, 2.0, 2.0)
MODELS = ("full", "paper_head", "single_task", "pre_only", "post_only", "untied",
          "bottleneck_join")
SEEDS = {"full": 3}  # the main model has three replicas; the others one
MASK_MODELS = ("full", "pre_only")


# ----------------------------------------------------------------------------- synthetic run
def _sphere(centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    dist = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, SPACING, strict=True))
    return (np.sqrt(dist) <= radius_mm).astype(np.uint8)


def _volume(mask: np.ndarray) -> float:
    return float(mask.sum() * np.prod(SPACING) / 1000.0)


def _patients(n_per_cohort: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for cohort in COHORTS:
        n = 2 * n_per_cohort if cohort == "training" else n_per_cohort
        for i in range(n):
            p_true = float(rng.beta(1.2, 2.5))
            rows.append({"patient_id": f"{cohort[:2].upper()}{i:03d}", "cohort": cohort,
                         "centre": "A" if cohort != "external_validation" else "B",
                         "p_true": p_true, "z_img": ev.logit(p_true) + rng.normal(0, 0.5),
                         "pcr": int(rng.random() < p_true)})
    table = pd.DataFrame(rows)
    for cohort in COHORTS:  # guarantee both classes in every cohort
        index = table.index[table["cohort"] == cohort]
        table.loc[index[0], "pcr"], table.loc[index[1], "pcr"] = 1, 0
    for marker in MARKERS:
        table[marker] = np.round(np.exp(rng.normal(1.0, 0.6, len(table)) - table["pcr"]), 3)
    return table


def _write_masks(patient: pd.Series, rng: np.random.Generator, cache_dir: Path,
                 masks_dir: Path, empty_post: bool) -> dict[str, float]:
    centre = (3.5 + rng.uniform(-0.5, 0.5), 7.5 + rng.uniform(-1, 1), 7.5 + rng.uniform(-1, 1))
    radius_pre = rng.uniform(7, 10)
    radius_post = radius_pre * (0.45 if patient["pcr"] else 0.8) * rng.uniform(0.85, 1.15)
    truth = {"pre": _sphere(centre, radius_pre), "post": _sphere(centre, radius_post)}
    image = {t: np.stack([m * 2.0 + rng.normal(0, 0.3, SHAPE), rng.normal(0, 1, SHAPE)], -1)
             .astype(np.float32) for t, m in truth.items()}
    save_npz_atomic(cache_dir / f"{patient['patient_id']}.npz", image_pre=image["pre"],
                    image_post=image["post"], mask_pre=truth["pre"], mask_post=truth["post"],
                    spacing_zyx=np.asarray(SPACING), meta_json=np.asarray("{}"))
    shift = (centre[0], centre[1] + rng.uniform(-1, 1), centre[2])
    pred = {"pre": _sphere(shift, radius_pre * rng.uniform(0.85, 1.1)),
            "post": _sphere(shift, radius_post * rng.uniform(0.8, 1.2))}
    if empty_post:
        pred["post"] = np.zeros(SHAPE, np.uint8)
    for model in MASK_MODELS:
        arrays = {"mask_pre": pred["pre"]} if model == "pre_only" else {
            "mask_pre": pred["pre"], "mask_post": pred["post"]}
        save_npz_atomic(masks_dir / model / f"{patient['patient_id']}.npz",
                        spacing_zyx=np.asarray(SPACING), **arrays)
    return {f"vol_{t}_{k}_ml": _volume(m) for k, masks in (("true", truth), ("pred", pred))
            for t, m in masks.items()}


def write_synthetic_run(results_dir: Path, masks_dir: Path, cache_dir: Path,
                        manifest_path: Path, oracle_path: Path | None, n_per_cohort: int = 12,
                        seed: int = 0) -> pd.DataFrame:
    """A synthetic run in the contract's formats: predictions.csv and split.csv in
    ``results_dir``, predicted masks, cache files, a manifest and oracle.csv. Returns the
    patient table (with p_true)."""
    rng = np.random.default_rng(seed)
    patients = _patients(n_per_cohort, rng)
    volumes = [_write_masks(p, rng, cache_dir, masks_dir, empty_post=i == 1)
               for i, (_, p) in enumerate(patients.iterrows())]
    patients = pd.concat([patients, pd.DataFrame(volumes)], axis=1)
    rows = []
    for k, model in enumerate(MODELS):
        noise = 0.5 + 0.4 * k
        for seed in range(SEEDS.get(model, 1)):
            logit = ev.logit(patients["p_true"]) * 2 + rng.normal(0, noise, len(patients))
            rows.append(patients.assign(model=model, seed=seed, score=1 / (1 + np.exp(-logit)),
                                        score_source=np.where(patients["cohort"] == "training",
                                                              "out_of_fold", "model"),
                                        dice_pre=np.nan, dice_post=np.nan))
    predictions = pd.concat(rows, ignore_index=True)[ev.PREDICTION_COLUMNS]
    results_dir.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(results_dir / "predictions.csv", index=False)
    training = patients[patients["cohort"] == "training"]["patient_id"]
    pd.DataFrame({"patient_id": training, "subset": ["tune" if i % 2 else "fit"
                                                     for i in range(len(training))]}
                 ).to_csv(results_dir / "split.csv", index=False)
    pd.DataFrame({"patient_id": training, "fold": np.arange(len(training)) % 3}
                 ).to_csv(results_dir / "folds.csv", index=False)
    manifest = patients.assign(timepoint="pre", sequence="T2W", image_path="x.nii.gz",
                               mask_path="m.nii.gz")
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest.drop(columns=["p_true"]).to_csv(manifest_path, index=False)
    if oracle_path is not None:
        patients[["patient_id", "cohort", "centre", "pcr", "p_true", "z_img"]].to_csv(
            oracle_path, index=False)
    return patients


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_run")
    write_synthetic_run(root / "results", root / "masks", root / "cache", root / "manifest.csv",
                        root / "oracle.csv")
    return root


def _evaluate(root: Path, predictions: pd.DataFrame | None = None, **kwargs) -> ev.Evaluation:
    from utils.manifest import load_manifest, patient_table

    predictions = ev.load_predictions(root / "results" / "predictions.csv") if (
        predictions is None) else predictions
    patients = kwargs.pop("patients", patient_table(load_manifest(root / "manifest.csv")))
    return ev.run_evaluation(predictions, patients, ev.read_optional_csv(
        root / "results" / "split.csv"), ev.read_optional_csv(root / "oracle.csv"),
        root / "masks", root / "cache", n_boot=200,
        folds=ev.read_optional_csv(root / "results" / "folds.csv"), **kwargs)


@pytest.fixture(scope="module")
def evaluation(run_dir: Path) -> ev.Evaluation:
    return _evaluate(run_dir)


# ----------------------------------------------------------------------------- structure
def test_full_evaluation_has_expected_structure(evaluation: ev.Evaluation):
    models = set(MODELS) | {ev.VOLUME_GT, ev.VOLUME_PRED, ev.ORACLE, ev.IMAGE_ORACLE,
                            ev.INTEGRATED, *ev.HANDCRAFTED}
    assert set(evaluation.auc["model"]) == models
    assert len(evaluation.auc) == len(models) * len(COHORTS)
    assert evaluation.auc["auc"].between(0, 1).all()
    assert (evaluation.auc["auc_ci_low"] <= evaluation.auc["auc"]).all()
    assert (evaluation.auc["auc"] <= evaluation.auc["auc_ci_high"]).all()
    assert set(evaluation.thresholds["method"]) == set(st.THRESHOLD_METHODS)
    assert len(evaluation.performance) == len(models) * len(COHORTS) * 2
    families = set(evaluation.tests["family"])
    assert families == {"ablation", "handcrafted baseline", "volume baseline", "integrated"}
    assert evaluation.tests["p_two_sided"].between(0, 1).all()
    assert (evaluation.tests["p_greater_holm"] >= evaluation.tests["p_greater"] - 1e-12).all()
    seg = evaluation.segmentation
    assert set(seg["model"]) == set(MASK_MODELS)
    assert set(seg[seg["model"] == "pre_only"]["timepoint"]) == {"pre"}
    assert seg["dice"].between(0, 1).all()
    assert seg["hd95_mm"].isna().sum() == 1  # the full model's one empty predicted post mask


def test_empty_predicted_mask_gives_zero_dice_and_undefined_hd95(evaluation: ev.Evaluation):
    seg = evaluation.segmentation
    undefined = seg[seg["hd95_mm"].isna()]
    assert (undefined["dice"] == 0).all() and (undefined["timepoint"] == "post").all()
    summary = evaluation.seg_summary
    assert summary["hd95_undefined"].sum() == len(undefined)


def test_metrics_json_has_required_keys(evaluation: ev.Evaluation, tmp_path: Path):
    path = ev.write_metrics(tmp_path, evaluation.metrics)
    metrics = json.loads(path.read_text())
    assert set(metrics["cohorts"]) == set(COHORTS)
    for cohort, models in metrics["cohorts"].items():
        assert ev.ORACLE not in models
        for model, entry in models.items():
            missing = set(ev.METRIC_KEYS) - set(entry)
            assert not missing, f"{cohort}/{model} lacks {missing}"
        assert models["full"]["dice_pre"] is not None and models["full"]["oracle_auc"] > 0.5
        assert models["full"]["image_oracle_auc"] > 0.5
        assert models["full"]["n_seeds"] == 3 and models["paper_head"]["n_seeds"] == 1
        assert isinstance(models["full"]["n_seeds"], int)
        assert models["full"]["auc_seed_min"] <= models["full"]["auc_seed_mean"]
        assert {m for m in models if "handcrafted" in m} == set(ev.HANDCRAFTED)
        assert models["single_task"]["dice_pre"] is None  # NaN -> null
    assert "NaN" not in path.read_text()
    assert "not the paper" in metrics["meta"]["note"].lower()


def test_tables_are_written(evaluation: ev.Evaluation, tmp_path: Path):
    written = ev.write_tables(tmp_path, evaluation.tables())
    assert {p.name for p in written} >= {"performance_table.csv", "paired_delong_tests.csv",
                                         "integrated_coefficients.csv", "auc_table.csv"}
    table = pd.read_csv(tmp_path / "performance_table.csv")
    assert {"auc", "auc_ci_low", "sensitivity", "specificity", "ppv", "npv",
            "accuracy"} <= set(table.columns)


def test_volume_reduction_scores_match_definition(evaluation: ev.Evaluation, run_dir: Path):
    predictions = ev.load_predictions(run_dir / "results" / "predictions.csv")
    full = predictions[predictions["model"] == "full"].set_index("patient_id")
    scores = evaluation.scores[evaluation.scores["model"] == ev.VOLUME_GT].set_index(
        "patient_id")["score"]
    expected = 1 - full["vol_post_true_ml"] / full["vol_pre_true_ml"]
    np.testing.assert_allclose(scores.loc[expected.index], expected)
    assert np.isfinite(ev.volume_reduction([0.0], [1.0])).all()


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
    thresholds = ev.choose_operating_points(scores)
    chosen = thresholds.set_index("method")["threshold"]
    assert chosen["closest_topleft"] == pytest.approx(0.5)
    assert st.choose_threshold(valid_y, valid_s) == pytest.approx(0.85)  # differs on validation
    perf = ev.performance_table(scores, thresholds)
    row = perf[(perf["cohort"] == "internal_validation")
               & (perf["method"] == "closest_topleft")].iloc[0]
    assert row["threshold"] == pytest.approx(0.5)
    expected = st.binary_performance(valid_y, valid_s, 0.5)
    for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy",
                 "specificity_low", "specificity_high"):
        assert row[name] == pytest.approx(expected[name])
    assert row["specificity"] == pytest.approx(1 / 5)


# ----------------------------------------------------------------------------- integrated model
def test_integrated_model_is_fitted_on_training_rows_only(run_dir: Path,
                                                          evaluation: ev.Evaluation):
    from utils.manifest import load_manifest, patient_table

    patients = patient_table(load_manifest(run_dir / "manifest.csv"))
    corrupted = patients.copy()
    validation = corrupted["cohort"] != "training"
    corrupted.loc[validation, list(MARKERS)] = 1e4  # and flipped validation labels below
    scores = evaluation.scores[evaluation.scores["model"] != ev.INTEGRATED].copy()
    scores.loc[scores["cohort"] != "training", "pcr"] = 1 - scores["pcr"]
    split = ev.read_optional_csv(run_dir / "results" / "split.csv")
    other = ev.fit_integrated(ev.integrated_inputs(scores, corrupted), ev.tune_ids(split),
                              out_of_fold=True)
    pd.testing.assert_frame_equal(evaluation.integrated.coefficients, other.coefficients)
    assert other.intercept == evaluation.integrated.intercept
    assert "out-of-fold" in evaluation.integrated.fit_on
    assert evaluation.integrated.n_fit == 24  # every training patient (scores out-of-fold)


def test_integrated_model_falls_back_to_training_cohort_without_tune_subset(
        evaluation: ev.Evaluation):
    scores = evaluation.scores[evaluation.scores["model"] == "full"]
    patients = scores[["patient_id"]].assign(**dict.fromkeys(MARKERS, 1.0))
    model = ev.fit_integrated(ev.integrated_inputs(scores, patients), tune=set())
    assert "whole training cohort" in model.fit_on and model.n_fit == 24


# ----------------------------------------------------------------------------- one class
def test_single_class_cohort_gives_nan_not_a_crash(run_dir: Path, tmp_path: Path):
    predictions = ev.load_predictions(run_dir / "results" / "predictions.csv")
    predictions.loc[predictions["cohort"] == "internal_validation", "pcr"] = 0
    result = _evaluate(run_dir, predictions=predictions)
    internal = result.auc[result.auc["cohort"] == "internal_validation"]
    assert internal["auc"].isna().all() and internal["note"].str.contains("one class").all()
    perf = result.performance[(result.performance["cohort"] == "internal_validation")]
    assert perf["sensitivity"].isna().all() and perf["specificity"].notna().all()
    tests = result.tests[result.tests["cohort"] == "internal_validation"]
    assert tests["p_two_sided"].isna().all()
    entry = result.metrics["cohorts"]["internal_validation"]["full"]
    assert entry["auc"] is None and entry["specificity"] is not None
    ev.write_metrics(tmp_path, result.metrics)
    for fig in _all_figures(result, run_dir):
        plt.close(fig)


# ----------------------------------------------------------------------------- figures
def _all_figures(result: ev.Evaluation, root: Path) -> list[plt.Figure]:
    operating = result.performance
    cases = ev.pick_overlay_cases(result.segmentation)
    return [ev.plot_roc_curves(result.scores, result.auc, operating=operating),
            ev.plot_pr_curves(result.scores),
            ev.plot_ablation_aucs(result.auc, result.tests),
            ev.plot_imaging_vs_integrated(result.scores, result.auc, result.tests),
            ev.plot_segmentation(result.segmentation),
            ev.plot_overlays(cases, root / "cache", root / "masks", result.segmentation),
            ev.plot_calibration(result.calibration, result.brier),
            ev.plot_decision_curves(result.decision)]


def test_figures_are_saved(evaluation: ev.Evaluation, run_dir: Path, tmp_path: Path):
    for index, fig in enumerate(_all_figures(evaluation, run_dir)):
        written = save_figure(fig, f"fig04_test{index}", tmp_path, pdf=False)
        plt.close(fig)
        assert written[0].stat().st_size > 1000
    cases = ev.pick_overlay_cases(evaluation.segmentation)
    assert list(cases["case"]) == ["best", "median", "worst"]
    assert cases["dice"].is_monotonic_decreasing


# ----------------------------------------------------------------------------- Grad-CAM
@pytest.fixture(scope="module")
def tiny_rpnet():
    from utils.model import build_rpnet, head_vector_model, set_readout

    model = build_rpnet((8, 16, 16, 2), "full", depth=3, base_filters=2, seed=1,
                        pcr_gradient=True)
    width = head_vector_model(model).output.shape[-1]
    set_readout(model, np.linspace(-1, 1, width), 0.0)  # a readout that uses every feature
    return model


def test_grad_cam_on_rpnet_has_input_shape_and_is_non_negative(tiny_rpnet):
    rng = np.random.default_rng(0)
    inputs = {b: rng.normal(size=(8, 16, 16, 2)).astype(np.float32) for b in ("pre", "post")}
    features = ev.branch_feature_tensors(tiny_rpnet, "encoder")
    assert set(features) == {"pre", "post"}
    maps = ev.grad_cam_3d(tiny_rpnet, inputs, features)
    for cam in maps.values():
        assert cam.shape == (8, 16, 16) and np.isfinite(cam).all() and cam.min() >= 0
    assert max(cam.max() for cam in maps.values()) == pytest.approx(1.0)
    bottleneck = ev.grad_cam_3d(tiny_rpnet, inputs, key="bottleneck", target_class=0)
    assert bottleneck["pre"].shape == (8, 16, 16)


def test_grad_cam_is_highest_where_the_model_looks():
    import keras

    image = keras.Input((4, 8, 8, 1), name="pre")
    features = keras.layers.Conv3D(2, 1, activation="relu", kernel_initializer="ones",
                                   name="features")(image)
    pooled = keras.layers.GlobalAveragePooling3D()(features)
    pcr = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones", name="pcr")(
        pooled)
    model = keras.Model(image, {"pcr": pcr})
    x = np.zeros((4, 8, 8, 1), np.float32)
    x[1:3, 1:3, 5:7] = 1.0  # the only signal: the model's evidence comes from here
    cam = ev.grad_cam_3d(model, {"pre": x}, {"pre": model.get_layer("features").output})["pre"]
    inside, outside = cam[1:3, 1:3, 5:7], cam[:, 4:, :3]
    assert inside.min() > 0.5 and outside.max() < 0.1


# ----------------------------------------------------------------------------- README
def test_readme_results_table_labels_paper_and_phantom(evaluation: ev.Evaluation):
    table = ev.readme_results_table(evaluation.metrics)
    assert "0.95 (0.91–0.98)" in table and "0.92 (0.87–0.96)" in table
    assert "0.97 (0.93–0.99)" in table
    assert "phantom (synthetic), demo profile" in table
    assert "3 seeds: mean" in table
    text = f"intro\n{ev.README_MARKERS[0]}\nold\n{ev.README_MARKERS[1]}\nrest\n"
    replaced = ev.replace_readme_section(text, table)
    assert ev.readme_section(replaced) == table and replaced.endswith("rest\n")


def test_readme_results_table_matches_metrics_json():
    metrics_path = ROOT / "results" / "metrics.json"
    if not metrics_path.exists():
        pytest.skip("results/metrics.json does not exist yet: run notebooks/04_evaluation.ipynb "
                    "on the demo profile (make reproduce)")
    section = ev.readme_section((ROOT / "README.md").read_text(encoding="utf-8"))
    assert section is not None, "README.md lacks the <!-- results:start/end --> markers"
    assert section == ev.readme_results_table(json.loads(metrics_path.read_text()))


def test_figure_table_lists_every_fig04_file():
    table = ev.figure_table()
    for stem in ev.FIGURES:
        assert f"`figures/{stem}.png`" in table
    assert all(line.count("|") == 5 for line in table.strip().splitlines())


# ----------------------------------------------------------------------------- seeds
def test_seed_average_is_the_mean_logit_and_keeps_one_row_per_patient():
    rows = pd.DataFrame({"model": "full", "seed": [0, 1, 2], "patient_id": "P1",
                         "cohort": "training", "centre": "A", "pcr": 1,
                         "score": [0.2, 0.5, 0.9]})
    averaged = ev.seed_average(pd.concat([rows, rows.iloc[[0]].assign(model="other")]))
    full = averaged[averaged["model"] == "full"].iloc[0]
    expected = 1 / (1 + np.exp(-np.mean(ev.logit([0.2, 0.5, 0.9]))))
    assert full["score"] == pytest.approx(expected) and full["n_seeds"] == 3
    assert len(averaged) == 2 and averaged.loc[averaged["model"] == "other", "score"].item() == (
        pytest.approx(0.2))


def test_seed_auc_table_has_one_auc_per_seed(run_dir: Path):
    predictions = ev.load_predictions(run_dir / "results" / "predictions.csv")
    table = ev.seed_auc_table(predictions)
    full = table[(table["model"] == "full") & (table["cohort"] == "internal_validation")]
    assert sorted(full["seed"]) == [0, 1, 2]
    one = full.iloc[0]
    rows = predictions[(predictions["model"] == "full") & (predictions["seed"] == one["seed"])
                       & (predictions["cohort"] == "internal_validation")]
    assert one["auc"] == pytest.approx(st.roc_auc(rows["pcr"].to_numpy(), rows["score"].to_numpy()))
    summary = ev.seed_summary(table).set_index(["model", "cohort"])
    assert summary.loc[("full", "internal_validation"), "auc_seed_min"] == pytest.approx(
        full["auc"].min())


def test_handcrafted_baseline_is_compared_with_the_main_model(evaluation: ev.Evaluation):
    tests = evaluation.tests[evaluation.tests["family"] == "handcrafted baseline"]
    assert set(tests["model_b"]) == set(ev.HANDCRAFTED)
    assert evaluation.handcrafted is not None and len(evaluation.handcrafted) == 8


def test_input_attribution_has_input_shape_and_is_non_negative(tiny_rpnet):
    rng = np.random.default_rng(1)
    inputs = {b: rng.normal(size=(8, 16, 16, 2)).astype(np.float32) for b in ("pre", "post")}
    maps = ev.input_attribution(tiny_rpnet, inputs)
    assert all(m.shape == (8, 16, 16) and m.min() >= 0 for m in maps.values())
    assert max(m.max() for m in maps.values()) == pytest.approx(1.0)


def test_grad_cam_refuses_a_detached_head():
    from utils.model import build_rpnet

    with pytest.raises(ValueError, match="detached"):
        ev.branch_feature_tensors(build_rpnet((8, 16, 16, 2), "full", depth=3, base_filters=2))


def test_one_pcr_patient_gives_nan_intervals_and_tests_with_a_reason(run_dir: Path):
    predictions = ev.load_predictions(run_dir / "results" / "predictions.csv")
    internal = predictions["cohort"] == "internal_validation"
    keep = predictions.loc[internal & (predictions["pcr"] == 1), "patient_id"].iloc[0]
    predictions.loc[internal & (predictions["patient_id"] != keep), "pcr"] = 0
    scores = ev.score_table(ev.seed_average(predictions))
    auc = ev.auc_table(scores, n_boot=50)
    row = auc[(auc["cohort"] == "internal_validation") & (auc["model"] == "full")].iloc[0]
    assert np.isfinite(row["auc"]) and np.isnan(row["auc_ci_low"]) and np.isnan(
        row["auc_ci_high"])
    assert "fewer than two patients" in row["note"]
    tests = ev.paired_delong_tests(scores)
    internal_tests = tests[tests["cohort"] == "internal_validation"]
    assert internal_tests["p_two_sided"].isna().all() and internal_tests["p_greater"].isna().all()
    assert internal_tests["note"].str.contains("fewer than two patients").all()
