"""Tests of utils.preprocessing.registration on the analytic phantom of test_preprocess and on
smoke-profile phantom patients (utils.cohort.generate, rendered in memory)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests import test_preprocess as analytic
from tests.test_preprocess import PARAMS, PRE, Exam, make_exam, true_transform_point
from utils.cohort import phantom
from utils.config import get_profile
from utils.errors import RegistrationError
from utils.preprocessing import cli, registration_qc
from utils.preprocessing import pipeline as pp
from utils.preprocessing import registration as rg
from utils.preprocessing.params import PreprocessedPair, PreprocessParams

SMOKE = get_profile("smoke")
SMOKE_PARAMS = PreprocessParams.from_profile(SMOKE)
MOVED = Exam(angles_deg=(4.0, -3.0, 5.0), shift_mm=(7.0, -5.0, 4.0), seed=8)  # ~10 mm, 7 deg
APART = Exam(shift_mm=(300.0, 0.0, 0.0), fov_offset_mm=(300.0, 0.0, 0.0), seed=9)
MOTION = (np.array([4.0, -3.0, 5.0]), np.array([7.0, -5.0, 4.0]))  # degrees, mm


def run(pre: Exam, post: Exam, params: PreprocessParams = PARAMS, patient_id: str = "P",
        **kwargs) -> PreprocessedPair:
    """Preprocess two exams of the analytic phantom."""
    (pre_img, pre_mask, _), (post_img, post_mask, _) = make_exam(pre), make_exam(post)
    return pp.preprocess_pair(pre_img, post_img, pre_mask, post_mask, params,
                              patient_id=patient_id, **kwargs)


def analytic_error(pair: PreprocessedPair, pre: Exam, post: Exam) -> float:
    """Error (mm) of the transform at the analytic phantom's tumour centre."""
    point = pre.to_scanner(analytic.TUMOUR_CENTRE)
    return float(np.linalg.norm(np.array(pair.transform.TransformPoint(tuple(map(float, point))))
                                - true_transform_point(pre, post, point)))


# ---------------------------------------------------------------- smoke phantom helpers
def smoke_draw(patient_id: str) -> phantom.PatientDraw:
    return phantom.draw_patient(SMOKE, patient_id, "training", "A")


def smoke_exam(draw: phantom.PatientDraw, timepoint: str = "pre",
               t2w: phantom.Acquisition | None = None
               ) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """Sequences and T2W tumour mask of one phantom exam (centre A grids unless ``t2w``)."""
    grids = {s: phantom.CENTRES["A"][s].scaled(SMOKE.phantom_resolution) for s in ("T2W", "DWI")}
    grids["T2W"] = t2w or grids["T2W"]
    acquired = {s: phantom.acquire(draw, timepoint, s, acq) for s, acq in grids.items()}
    return {s: image for s, (image, _) in acquired.items()}, acquired["T2W"][1]


def moved_copy(draw: phantom.PatientDraw) -> phantom.PatientDraw:
    """The same patient and lesion (pre-treatment) after the rigid motion :data:`MOTION`
    (own noise: another patient id seeds it); acquire it as its ``"pre"`` exam."""
    rotation, translation = draw.poses["pre"]
    r = phantom.rotation_matrix(MOTION[0])
    return dataclasses.replace(draw, patient_id=f"{draw.patient_id}-moved", poses={
        **draw.poses, "pre": (r @ rotation, r @ translation + MOTION[1])})


def smoke_error(pair: PreprocessedPair, draw: phantom.PatientDraw) -> np.ndarray:
    """Error (x, y, z mm) of the transform at the tumour centre for :data:`MOTION`."""
    rotation, translation = draw.poses["pre"]
    centre = rotation @ draw.anatomy.tumour_centre + translation
    truth = phantom.rotation_matrix(MOTION[0]) @ centre + MOTION[1]
    return np.array(pair.transform.TransformPoint(tuple(map(float, centre)))) - truth


@pytest.fixture(scope="module")
def moved() -> tuple[PreprocessedPair, phantom.PatientDraw]:
    draw = smoke_draw("TR001")
    (pre, pre_mask), (post, post_mask) = smoke_exam(draw), smoke_exam(moved_copy(draw))
    return pp.preprocess_pair(pre, post, pre_mask, post_mask, SMOKE_PARAMS,
                              patient_id="TR001"), draw


# ---------------------------------------------------------------- recovery and identity
def test_known_rigid_motion_is_recovered_at_the_tumour(moved):
    pair, draw = moved
    voxel = np.array(SMOKE_PARAMS.spacing_zyx[::-1])
    assert np.all(np.abs(smoke_error(pair, draw)) < 0.25 * voxel), smoke_error(pair, draw)
    reg = pair.meta["registration"]
    assert reg["status"] == "ok" and reg["flags"] == [] and reg["mode"] == "strict"
    assert not reg["kept_identity"] and reg["local_ncc_after"] > reg["local_ncc_before"]
    assert reg["local_ncc_after"] > 0.95 and reg["shrink_factors"] == [4, 2, 1]


def test_registration_is_bit_identical_on_a_rerun(moved):
    pair, draw = moved
    (pre, pre_mask), (post, post_mask) = smoke_exam(draw), smoke_exam(moved_copy(draw))
    again = pp.preprocess_pair(pre, post, pre_mask, post_mask, SMOKE_PARAMS,
                               patient_id="TR001")
    assert again.transform.GetParameters() == pair.transform.GetParameters()
    assert again.meta["registration"] == pair.meta["registration"]


def test_an_aligned_pair_keeps_identity():
    out = run(PRE, Exam(seed=3), patient_id="P-same")
    reg = out.meta["registration"]
    assert reg["kept_identity"] and reg["flags"] == [] and reg["status"] == "ok"
    assert np.allclose(out.transform.GetParameters(), 0.0)
    assert reg["metric_after"] == reg["metric_before"]


def test_different_voxel_sizes_and_fewer_post_slices_register():
    """Post on another scanner grid covering 54 of the pre exam's 84 mm in z."""
    draw = smoke_draw("TR002")
    other = phantom.Acquisition((1.7, 1.7, 4.5), (120, 110, 12), 2600.0, 16.0, 0.4)
    (pre, pre_mask), (post, post_mask) = smoke_exam(draw), smoke_exam(moved_copy(draw), t2w=other)
    pair = pp.preprocess_pair(pre, post, pre_mask, post_mask, SMOKE_PARAMS, patient_id="TR002")
    reg = pair.meta["registration"]
    assert reg["flags"] == [] and reg["dice_after"] > 0.95
    voxel = np.array(SMOKE_PARAMS.spacing_zyx[::-1])
    assert np.all(np.abs(smoke_error(pair, draw)) < 0.25 * voxel), smoke_error(pair, draw)


def test_a_300_mm_table_offset_registers():
    out = run(PRE, APART, patient_id="P-300")
    reg = out.meta["registration"]
    assert reg["flags"] == [] and reg["translation_mm"] > 290
    assert reg["translation_from_init_mm"] < PARAMS.qc_max_translation_mm
    assert reg["metric_before"] is None  # identity: no overlap, no metric
    assert analytic_error(out, PRE, APART) < 0.5 * min(PARAMS.spacing_zyx)


def test_exams_apart_are_an_error_naming_patient_and_files_before_itk(monkeypatch):
    def itk_must_not_run(*args):
        raise AssertionError("ITK registration ran")

    monkeypatch.setattr(sitk.ImageRegistrationMethod, "Execute", itk_must_not_run)
    files = {"pre_T2W": "P-apart/pre_T2W.nii.gz", "post_T2W": "P-apart/post_T2W.nii.gz"}
    params = dataclasses.replace(PARAMS, reg_init="identity")
    with pytest.raises(RegistrationError) as error:
        run(PRE, APART, params, patient_id="P-apart", files=files)
    message = str(error.value)
    assert message.startswith("patient P-apart: the two exams do not overlap in physical space")
    assert "post T2W (P-apart/post_T2W.nii.gz)" in message and "ITK" not in message


def test_itk_exceptions_become_plain_errors(monkeypatch):
    def itk_fails(*args):
        raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute: "
                           "/build/itkMattes.hxx:307:\nITK ERROR: MattesMutualInformationImage"
                           "ToImageMetricv4(0x5630): Too many samples map outside moving image "
                           "buffer. There are only 12 valid points.\n")

    monkeypatch.setattr(sitk.ImageRegistrationMethod, "Execute", itk_fails)
    fixed, moving = make_exam(PRE)[0]["T2W"], make_exam(MOVED)[0]["T2W"]
    with pytest.raises(RegistrationError) as error:
        rg.register_rigid(fixed, moving, PARAMS, names=rg.Names("P-itk"))
    assert str(error.value) == (
        "patient P-itk: too few overlapping voxels between the two exams [pre T2W vs post T2W]"
        " (ITK: Too many samples map outside moving image buffer. There are only 12 valid "
        "points.)")


# ---------------------------------------------------------------- local check and modes
@pytest.fixture(scope="module")
def wrong_patient() -> PreprocessedPair:
    """TR001's pre exam with TR002's post exam, in mode "flag"."""
    (pre, pre_mask), (post, post_mask) = (smoke_exam(smoke_draw("TR001")),
                                          smoke_exam(smoke_draw("TR002"), "post"))
    return pp.preprocess_pair(pre, post, pre_mask, post_mask,
                              dataclasses.replace(SMOKE_PARAMS, registration="flag"),
                              patient_id="TR001")


def test_another_patients_post_exam_is_flagged_by_the_local_check(wrong_patient):
    reg = wrong_patient.meta["registration"]
    assert reg["local_ncc_after"] < SMOKE_PARAMS.qc_min_local_ncc
    assert any(f.startswith("local correlation around the tumour") for f in reg["flags"])
    assert reg["dice_after"] > SMOKE_PARAMS.qc_min_body_dice  # the body outline looks fine


def test_mode_flag_records_the_flags_without_raising(wrong_patient):
    reg = wrong_patient.meta["registration"]
    assert reg["mode"] == "flag" and reg["status"] == "failed" and reg["attempt"] == 2
    assert reg["earlier_flags"]
    assert registration_qc.registration_flags(reg, SMOKE_PARAMS) == reg["flags"]
    json.dumps(wrong_patient.meta, allow_nan=False)  # plain JSON: no NaN or infinity


def test_mode_identity_gives_the_identity_transform():
    out = run(PRE, MOVED, dataclasses.replace(PARAMS, registration="identity"),
              patient_id="P-id")
    reg = out.meta["registration"]
    assert reg["mode"] == "identity" and reg["iterations"] == 0 and reg["kept_identity"]
    assert np.allclose(out.transform.GetParameters(), 0.0)
    assert reg["flags"]  # the ~10 mm motion is visible in the QC, but no error


def test_check_registration_false_behaves_like_flag():
    params = dataclasses.replace(PARAMS, qc_max_rotation_deg=1.0)
    out = run(PRE, MOVED, params, patient_id="P-check", check_registration=False)
    reg = out.meta["registration"]
    assert reg["mode"] == "flag" and reg["status"] == "failed"


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="registration mode"):
        run(PRE, MOVED, dataclasses.replace(PARAMS, registration="loose"))


# ---------------------------------------------------------------- thin slabs
def test_pyramid_is_capped_for_thin_slabs_only():
    def image(z: int) -> sitk.Image:
        return sitk.Image([64, 64, z], sitk.sitkFloat32)

    assert rg.pyramid(PARAMS, image(16), image(40)) == list(zip(
        PARAMS.reg_shrink, PARAMS.reg_sigmas_vox, PARAMS.reg_sampling, strict=True))
    assert [lv[0] for lv in rg.pyramid(PARAMS, image(10), image(40))] == [2, 1]
    assert rg.pyramid(PARAMS, image(40), image(6)) == [(1, 0.0, 0.05)]


def test_a_thin_slab_registers(monkeypatch):
    monkeypatch.setitem(analytic.T2W_GRID, "size", (80, 80, 6))  # 24 mm slabs, both exams
    post = dataclasses.replace(MOVED, angles_deg=(0.0, 0.0, 3.0), shift_mm=(4.0, -3.0, 1.0))
    out = run(PRE, post, patient_id="P-slab")
    reg = out.meta["registration"]
    assert reg["shrink_factors"] == [1] and reg["flags"] == []
    assert analytic_error(out, PRE, post) < min(PARAMS.spacing_zyx)


# ---------------------------------------------------------------- command lines
def test_preprocessing_cli_passes_the_registration_mode(monkeypatch, tmp_path):
    seen = {}

    def fake(manifest, out, profile, workers, params=None, progress=True, placements=None):
        seen["mode"] = params.registration
        return pd.DataFrame({"status": ["ok"]})

    monkeypatch.setattr(cli, "run_preprocessing", fake)
    assert cli.main(["--manifest", "m.csv", "--out", str(tmp_path), "--profile", "smoke",
                       "--registration", "flag", "--no-progress"]) == 0
    assert seen == {"mode": "flag"}
    with pytest.raises(SystemExit):
        cli.main(["--registration", "sometimes"])


def test_prediction_cli_passes_the_registration_mode(monkeypatch, tmp_path):
    from utils.inference import predict as pr

    seen = {}

    def fake(pre, post, model, profile, centre, pre_mask, post_mask, params=None,
             registration=None, localiser=None):
        seen["mode"] = registration
        return {"pcr_probability": 0.5, "roi_source": "given centre", "mask_pre": None,
                "mask_post": None, "reference_sequence": "T2W"}

    monkeypatch.setattr(pr, "predict_patient", fake)
    args = ["--pre", "T2W=a.nii", "--pre", "DWI=b.nii", "--post", "T2W=c.nii", "--post",
            "DWI=d.nii", "--model", "m.keras", "--out", str(tmp_path), "--center", "0,0,0"]
    assert pr.main([*args, "--registration", "identity"]) == 0
    assert seen == {"mode": "identity"}
