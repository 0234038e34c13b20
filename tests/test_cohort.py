"""The phantom generator: study design, statistics, acquisition effects and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from utils import config
from utils.cohort import generate as cohort
from utils.cohort import phantom
from utils.io import sha256_file

from .conftest import tiny_profile


@pytest.fixture(scope="module")
def draws() -> list[phantom.PatientDraw]:
    """800 patients' random draws (no rendering), enough for stable statistics."""
    profile = config.with_overrides(config.get_profile("paper"), n_training=400, n_internal=200,
                                    n_external=200)
    return [phantom.draw_patient(profile, *plan) for plan in cohort.cohort_plan(profile)]


def test_paper_profile_has_the_papers_cohort_sizes_and_centres():
    plan = pd.DataFrame(cohort.cohort_plan(config.get_profile("paper")),
                        columns=["patient_id", "cohort", "centre"])
    assert plan["cohort"].value_counts().to_dict() == {
        "training": 321, "internal_validation": 160, "external_validation": 141}
    assert set(plan.loc[plan["cohort"] != "external_validation", "centre"]) == {"A"}
    assert set(plan.loc[plan["cohort"] == "external_validation", "centre"]) == {"B", "C"}
    assert plan["patient_id"].is_unique


def test_pcr_rate_is_clinical(draws):
    rate = np.mean([d.pcr for d in draws])
    assert 0.18 <= rate <= 0.32


def test_oracle_auc_and_volume_reduction_auc_are_calibrated(draws):
    labels = np.array([d.pcr for d in draws])
    oracle = roc_auc_score(labels, [d.p_true for d in draws])
    shrinkage = roc_auc_score(labels, [1 - d.anatomy.shrink ** 3 for d in draws])
    assert 0.90 <= oracle <= 0.97
    assert 0.60 <= shrinkage <= 0.80


def test_markers_carry_partly_independent_information(draws):
    labels = np.array([d.pcr for d in draws])
    fall = [np.log(d.markers["cea_pre"] / d.markers["cea_post"]) for d in draws]
    finite = np.isfinite(fall)
    auc = roc_auc_score(labels[finite], np.asarray(fall)[finite])
    assert 0.55 <= auc <= 0.85
    correlation = np.corrcoef([d.z_img for d in draws], [d.z_mark for d in draws])[0, 1]
    assert abs(correlation) < 0.1


def test_misalignment_between_exams_is_a_few_degrees_and_up_to_a_centimetre(draws):
    shifts = [np.linalg.norm(d.poses["post"][1] - d.poses["pre"][1]) for d in draws]
    angles = [np.degrees(np.arccos(np.clip((np.trace(d.poses["post"][0] @ d.poses["pre"][0].T)
                                             - 1) / 2, -1, 1))) for d in draws]
    assert np.median(shifts) > 1.0 and max(shifts) <= 13.0
    assert np.median(angles) > 1.0 and max(angles) <= 8.0


def test_residual_viable_tumour_falls_with_response(draws):
    responders = [d.anatomy.viable_fraction for d in draws if d.pcr]
    others = [d.anatomy.viable_fraction for d in draws if not d.pcr]
    assert np.mean(responders) < 0.5 * np.mean(others)


def test_generated_files_have_each_centres_geometry_and_tumour_volumes(tiny_cohort):
    table = pd.read_csv(tiny_cohort)
    resolution = tiny_profile().phantom_resolution
    for _, row in table.iterrows():
        image = sitk.ReadImage(str(tiny_cohort.parent / row["image_path"]))
        expected = phantom.CENTRES[row["centre"]][row["sequence"]].scaled(resolution)
        assert image.GetSpacing() == pytest.approx(expected.spacing)
        assert image.GetSize() == expected.size
        assert image.GetPixelID() == sitk.sitkInt16
    pre_masks = table[(table["timepoint"] == "pre") & (table["sequence"] == "T2W")]
    for _, row in pre_masks.iterrows():
        mask = sitk.ReadImage(str(tiny_cohort.parent / row["mask_path"]))
        volume_ml = sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing()) / 1000
        assert 5.0 < volume_ml < 120.0, row["patient_id"]


def test_generation_is_deterministic_and_order_independent(tmp_path):
    profile = tiny_profile()
    first = cohort.generate_patient(profile, "TR002", "training", "A", tmp_path / "a")
    cohort.generate_patient(profile, "TR001", "training", "A", tmp_path / "b")
    second = cohort.generate_patient(profile, "TR002", "training", "A", tmp_path / "b")
    for row_a, row_b in zip(first, second, strict=True):
        assert sha256_file(row_a["image_path"]) == sha256_file(row_b["image_path"])


def test_committed_manifest_checksums_are_reproduced_bit_for_bit(tmp_path):
    committed = pd.read_csv(config.ROOT / "data_manifest.csv")
    rows = cohort.generate_patient(config.get_profile("demo"), "EV002", "external_validation",
                                   "C", tmp_path)
    recorded = committed.set_index(["patient_id", "timepoint", "sequence"])
    for row in rows:
        key = ("EV002", row["timepoint"], row["sequence"])
        assert sha256_file(row["image_path"]) == recorded.loc[key, "image_sha256"]
        assert sha256_file(row["mask_path"]) == recorded.loc[key, "mask_sha256"]


def test_rerun_keeps_verified_files_and_regenerates_missing_ones(cohort_copy):
    profile = tiny_profile()
    kept = cohort_copy.parent / "TR001" / "pre_T2W.nii.gz"
    removed = cohort_copy.parent / "TR002" / "post_DWI.nii.gz"
    mtime = kept.stat().st_mtime_ns
    removed.unlink()
    cohort.generate_cohort(profile, cohort_copy.parent, workers=1, progress=False)
    assert kept.stat().st_mtime_ns == mtime
    assert removed.exists()
    assert not list(cohort_copy.parent.rglob(".*.nii.gz")), "temporary files left behind"


def test_regeneration_that_is_not_bit_stable_is_refused(cohort_copy):
    table = pd.read_csv(cohort_copy)
    table.loc[0, "image_sha256"] = "0" * 64  # as if another machine had written other bytes
    table.to_csv(cohort_copy, index=False)
    with pytest.raises(cohort.NotBitStableError, match="TR001"):
        cohort.generate_cohort(tiny_profile(), cohort_copy.parent, workers=1, progress=False)
    assert (pd.read_csv(cohort_copy)["image_sha256"] == table["image_sha256"]).all()
