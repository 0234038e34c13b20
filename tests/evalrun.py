"""A synthetic run for the evaluation tests (predictions, split, folds, markers, masks, cache)
in the contract's formats, and its evaluation (fixtures ``eval_run`` and ``evaluation`` in
conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from utils.cohort.manifest import MARKERS
from utils.config import COHORTS
from utils.evaluation import evaluate as ev
from utils.evaluation import plots
from utils.evaluation import predictions as pr
from utils.evaluation import stats as st
from utils.inference.batch import PREDICTION_COLUMNS
from utils.io import save_npz_atomic

SHAPE = (8, 16, 16)
SPACING = (4.0, 2.0, 2.0)
MODELS = ("full", "paper_head", "single_task", "pre_only", "post_only", "untied",
          "bottleneck_join")
SEEDS = {"full": 3}  # the main model has three replicas; the others one
MASK_MODELS = ("full", "pre_only")


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
                         "p_true": p_true, "z_img": st.logit(p_true) + rng.normal(0, 0.5),
                         "pcr": int(rng.random() < p_true)})
    table = pd.DataFrame(rows)
    for cohort in COHORTS:  # guarantee both classes in every cohort
        index = table.index[table["cohort"] == cohort]
        table.loc[index[0], "pcr"], table.loc[index[1], "pcr"] = 1, 0
    for marker in MARKERS:
        table[marker] = np.round(np.exp(rng.normal(1.0, 0.6, len(table)) - table["pcr"]), 3)
    return table


def _roi(patient: pd.Series) -> dict:
    """The cache's ROI record: training boxes on the mask, validation boxes placed by the
    localiser, every fourth of them cutting the tumour (scoring only)."""
    if patient["cohort"] == "training":
        return {"source": "mask"}
    number = int("".join(c for c in str(patient["patient_id"]) if c.isdigit()) or 0)
    inside = {"pre": 0.8, "post": 0.9} if number % 4 == 0 else {"pre": 1.0, "post": 1.0}
    return {"source": "roi_center_mm", "scoring": {
        "tumour_inside_pre": inside["pre"], "tumour_inside_post": inside["post"]}}


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
                    spacing_zyx=np.asarray(SPACING),
                    meta_json=np.asarray(json.dumps({"roi": _roi(patient)})))
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
            logit = st.logit(patients["p_true"]) * 2 + rng.normal(0, noise, len(patients))
            rows.append(patients.assign(model=model, seed=seed, score=1 / (1 + np.exp(-logit)),
                                        score_source=np.where(patients["cohort"] == "training",
                                                              "out_of_fold", "model"),
                                        dice_pre=np.nan, dice_post=np.nan))
    predictions = pd.concat(rows, ignore_index=True)[PREDICTION_COLUMNS]
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


def make_run(root: Path) -> Path:
    """The synthetic run in ``root`` (results/, masks/, cache/, manifest.csv, oracle.csv)."""
    write_synthetic_run(root / "results", root / "masks", root / "cache", root / "manifest.csv",
                        root / "oracle.csv")
    return root


def evaluate_run(root: Path, predictions: pd.DataFrame | None = None,
                 **kwargs) -> ev.Evaluation:
    """:func:`utils.evaluation.evaluate.run_evaluation` of the run in ``root``
    (``predictions`` replaces its predictions.csv)."""
    from utils.cohort.manifest import load_manifest, patient_table

    predictions = pr.load_predictions(root / "results" / "predictions.csv") if (
        predictions is None) else predictions
    patients = kwargs.pop("patients", patient_table(load_manifest(root / "manifest.csv")))
    return ev.run_evaluation(predictions, patients, pr.read_optional_csv(
        root / "results" / "split.csv"), pr.read_optional_csv(root / "oracle.csv"),
        root / "masks", root / "cache", n_boot=200,
        folds=pr.read_optional_csv(root / "results" / "folds.csv"), **kwargs)


def all_figures(result: ev.Evaluation, root: Path) -> list[plt.Figure]:
    """Every evaluation figure of ``result`` (the run in ``root``)."""
    cases = plots.pick_overlay_cases(result.segmentation)
    return [plots.plot_roc_curves(result.scores, result.auc, operating=result.performance),
            plots.plot_pr_curves(result.scores),
            plots.plot_ablation_aucs(result.auc, result.tests),
            plots.plot_imaging_vs_integrated(result.scores, result.auc, result.tests),
            plots.plot_segmentation(result.segmentation),
            plots.plot_overlays(cases, root / "cache", root / "masks", result.segmentation),
            plots.plot_calibration(result.calibration, result.brier),
            plots.plot_decision_curves(result.decision)]
