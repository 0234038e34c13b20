"""Tests of the per-pair pipeline (utils.preprocessing.pipeline, .intensity, .roi) on small
analytic pelvis phantoms (fast, self-contained). The cache and batch run: test_cache.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

from utils.config import SEQUENCES, get_profile, with_overrides
from utils.errors import RegistrationError, RoiError
from utils.geometry import image_from_geometry, resample, resample_mask
from utils.preprocessing import pipeline as pp
from utils.preprocessing import registration, registration_qc
from utils.preprocessing.intensity import n4_correct, normalise
from utils.preprocessing.params import PreprocessedPair, PreprocessParams
from utils.preprocessing.roi import crop_padded, tumour_box

# Target grid and ROI of the tests: coarser than any profile, so each pair takes < 1 s.
PROFILE = with_overrides(get_profile("smoke"), name="test", spacing_zyx=(4.0, 3.0, 3.0),
                         roi_zyx=(12, 24, 24))
PARAMS = PreprocessParams.from_profile(PROFILE)
T2W_GRID = {"spacing": (2.5, 2.5, 4.0), "size": (80, 80, 20)}
DWI_GRID = {"spacing": (5.0, 5.0, 5.0), "size": (40, 40, 16)}
# relative signal (T2W, DWI) and label of each tissue, painted in this order
TISSUES = {"fat": (0.95, 0.04, 1), "muscle": (0.30, 0.10, 2), "bladder": (1.0, 0.05, 3),
           "wall": (0.42, 0.18, 4), "lumen": (0.12, 0.04, 5), "tumour": (0.58, 0.85, 6)}
TUMOUR_CENTRE = np.array([8.0, 30.0, 4.0])  # patient mm (x, y, z)
TUMOUR_RADII = np.array([11.0, 10.0, 13.0])


# ---------------------------------------------------------------- synthetic phantom
def rotation(deg_xyz: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix R = Rz Ry Rx, the convention of sitk.Euler3DTransform."""
    ax, ay, az = np.deg2rad(deg_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclasses.dataclass(frozen=True)
class Exam:
    """How one exam sees the analytic patient: pose (scanner = R p + t) and scanner."""

    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fov_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1000.0
    snr: float = 25.0  # T2W
    snr_dwi: float = 10.0
    bias: float = 0.25
    seed: int = 0
    tumour_radii: tuple[float, float, float] = tuple(TUMOUR_RADII)

    @property
    def rot(self) -> np.ndarray:
        return rotation(self.angles_deg)

    def to_scanner(self, p: np.ndarray) -> np.ndarray:
        return p @ self.rot.T + np.asarray(self.shift_mm)


def _soft(distance: np.ndarray, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(distance / width, -50, 50)))


def _ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    radii = np.asarray(radii, float)
    return (np.linalg.norm((p - np.asarray(centre)) / radii, axis=-1) - 1.0) * radii.min()


def _distances(p: np.ndarray, exam: Exam) -> dict[str, np.ndarray]:
    x, y = p[..., 0], p[..., 1]
    radial = np.hypot(x - 0.0, y - 30.0)
    return {"fat": (np.hypot(x / 100.0, y / 82.0) - 1.0) * 82.0,
            "muscle": np.minimum(_ellipsoid(p, (-58, 5, 0), (14, 35, 400)),
                                 _ellipsoid(p, (58, 5, 0), (14, 35, 400))),
            "bladder": _ellipsoid(p, (0, -38, 22), (26, 26, 26)),
            "wall": radial - 13.0, "lumen": radial - 9.0,
            "tumour": _ellipsoid(p, TUMOUR_CENTRE, exam.tumour_radii)}


def _grid(spacing, size, origin) -> np.ndarray:
    axes = [origin[i] + spacing[i] * np.arange(size[i]) for i in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([xx, yy, zz], axis=-1)


def _image(array: np.ndarray, spacing, origin) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    return image


def acquire(exam: Exam, sequence: str) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(image int16, tumour mask uint8, tissue label uint8) of one sequence of one exam."""
    grid = T2W_GRID if sequence == "T2W" else DWI_GRID
    spacing, size = np.array(grid["spacing"]), np.array(grid["size"])
    centre = np.array([0.0, 20.0, 0.0]) + np.asarray(exam.fov_offset_mm)
    origin = centre - spacing * (size - 1) / 2
    scanner = _grid(spacing, size, origin)
    patient = (scanner - np.asarray(exam.shift_mm)) @ exam.rot  # R^T (s - t)
    idx = SEQUENCES.index(sequence)
    signal = np.zeros(scanner.shape[:-1])
    labels = np.zeros(scanner.shape[:-1], np.uint8)
    for name, dist in _distances(patient, exam).items():
        member = _soft(dist, 0.3 * spacing.min())
        signal = signal * (1 - member) + member * TISSUES[name][idx]
        labels[member >= 0.5] = TISSUES[name][2]
    rng = np.random.default_rng(exam.seed * 7 + idx)
    u = (scanner - centre) / 100.0
    coeffs = rng.uniform(-1, 1, 5) * exam.bias
    signal *= np.exp(coeffs[0] * u[..., 0] + coeffs[1] * u[..., 1] + coeffs[2] * u[..., 2]
                     + coeffs[3] * u[..., 0] ** 2 + coeffs[4] * u[..., 0] * u[..., 1])
    sigma = TISSUES["tumour"][idx] / (exam.snr if sequence == "T2W" else exam.snr_dwi)
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape),
                     rng.normal(0, sigma, signal.shape))
    pixels = np.clip(np.rint(noisy * exam.scale), 0, 32767).astype(np.int16)
    mask = (labels == TISSUES["tumour"][2]).astype(np.uint8)
    return (_image(pixels, spacing, origin), _image(mask, spacing, origin),
            _image(labels, spacing, origin))


def make_exam(exam: Exam) -> tuple[dict[str, sitk.Image], sitk.Image, sitk.Image]:
    """Sequences dict, T2W tumour mask and T2W tissue labels of one exam."""
    t2w, mask, labels = acquire(exam, "T2W")
    dwi = acquire(exam, "DWI")[0]
    return {"T2W": t2w, "DWI": dwi}, mask, labels


def true_transform_point(pre: Exam, post: Exam, point: np.ndarray) -> np.ndarray:
    """Where a pre-scanner point lies in post-scanner coordinates (the ideal ``T``)."""
    patient = (point - np.asarray(pre.shift_mm)) @ pre.rot
    return post.to_scanner(patient)


PRE = Exam(seed=1)
POST = Exam(angles_deg=(3.0, -2.0, 4.0), shift_mm=(6.0, -4.0, 3.5), fov_offset_mm=(3, -5, 2),
            seed=2, tumour_radii=(9.0, 8.0, 11.0))


@pytest.fixture(scope="module")
def exams():
    return {"pre": make_exam(PRE), "post": make_exam(POST)}


@pytest.fixture(scope="module")
def pair(exams) -> PreprocessedPair:
    (pre, pre_mask, _), (post, post_mask, _) = exams["pre"], exams["post"]
    return pp.preprocess_pair(pre, post, pre_mask, post_mask, PARAMS, patient_id="P-reg")


# ---------------------------------------------------------------- registration
def test_registration_recovers_known_rigid_transform(pair):
    spacing = min(PARAMS.spacing_zyx)
    corners = np.array(np.meshgrid([-40, 40], [-40, 40], [-20, 20])).reshape(3, -1).T
    points = PRE.to_scanner(TUMOUR_CENTRE) + corners
    errors = [np.linalg.norm(np.array(pair.transform.TransformPoint(tuple(map(float, p))))
                             - true_transform_point(PRE, POST, p)) for p in points]
    assert max(errors) < spacing, f"max point error {max(errors):.2f} mm"
    reg = pair.meta["registration"]
    assert reg["status"] == "ok" and reg["flags"] == [] and reg["attempt"] == 1
    assert reg["metric_after"] < reg["metric_before"]
    assert reg["dice_after"] > reg["dice_before"]
    assert 6.0 < reg["translation_mm"] < 12.0


def test_registered_masks_share_centroid(pair):
    pre_c = np.argwhere(pair.mask_pre).mean(axis=0)
    post_c = np.argwhere(pair.mask_post).mean(axis=0)
    assert np.all(np.abs(pre_c - post_c) < 1.0), (pre_c, post_c)


def test_registration_is_deterministic(exams, pair):
    (pre, pre_mask, _), (post, post_mask, _) = exams["pre"], exams["post"]
    again = pp.preprocess_pair(pre, post, pre_mask, post_mask, PARAMS, patient_id="P-reg")
    assert again.transform.GetParameters() == pair.transform.GetParameters()
    np.testing.assert_array_equal(again.image_post, pair.image_post)


def test_transform_round_trips_through_meta_and_file(pair, tmp_path):
    from_meta = registration.transform_from_meta(json.loads(json.dumps(pair.meta)))
    assert np.allclose(from_meta.GetParameters(), pair.transform.GetParameters())
    sitk.WriteTransform(pair.transform, str(tmp_path / "t.tfm"))
    read = sitk.ReadTransform(str(tmp_path / "t.tfm"))
    point = (10.0, 20.0, 5.0)
    assert np.allclose(read.TransformPoint(point), pair.transform.TransformPoint(point))


def test_failed_registration_is_an_error_naming_the_patient(exams):
    (pre, pre_mask, _), (post, post_mask, _) = exams["pre"], exams["post"]
    strict = dataclasses.replace(PARAMS, qc_max_rotation_deg=1.0)  # POST is rotated ~5 deg
    with pytest.raises(RegistrationError, match="patient P-bad: registration QC failed") as err:
        pp.preprocess_pair(pre, post, pre_mask, post_mask, strict, patient_id="P-bad")
    assert registration.LIKELY_CAUSES in str(err.value)
    assert "another patient (swapped file?)" in str(err.value)


def test_flagged_registration_is_retried_with_the_fallback(exams, monkeypatch):
    (pre, pre_mask, _), (post, post_mask, _) = exams["pre"], exams["post"]
    real, calls = registration_qc.registration_flags, []

    def flag_first(qc, params):
        calls.append(1)
        return ["made-up failure"] if len(calls) == 1 else real(qc, params)

    monkeypatch.setattr(registration_qc, "registration_flags", flag_first)
    out = pp.preprocess_pair(pre, post, pre_mask, post_mask, PARAMS, patient_id="P-retry")
    reg = out.meta["registration"]
    assert reg["attempt"] == 2 and reg["earlier_flags"] == ["made-up failure"]
    assert reg["status"] == "ok" and len(calls) == 2


def test_registration_flags_without_raising_when_asked():
    qc = {"metric_before": -0.5, "metric_after": -0.4, "dice_before": 0.9, "dice_after": 0.5,
          "translation_mm": 40.0, "rotation_deg": 25.0}
    flags = registration_qc.registration_flags(qc, PARAMS)
    assert len(flags) == 4
    assert registration_qc.registration_flags({**qc, "metric_after": -0.8, "dice_after": 0.95,
                                               "translation_mm": 5.0, "rotation_deg": 3.0},
                                              PARAMS) == []


# ---------------------------------------------------------------- N4
def _cv(image: sitk.Image, region: np.ndarray) -> float:
    values = sitk.GetArrayViewFromImage(image)[region]
    return float(values.std() / values.mean())


def test_n4_lowers_cv_of_a_homogeneous_region():
    spacing, size = np.array([2.5, 2.5, 4.0]), np.array([80, 80, 20])
    origin = -spacing * (size - 1) / 2
    p = _grid(spacing, size, origin)
    inside = np.hypot(p[..., 0] / 90, p[..., 1] / 75) < 1
    u = p / 100.0
    field = np.exp(0.35 * u[..., 0] - 0.25 * u[..., 1] + 0.15 * u[..., 2] + 0.3 * u[..., 0] ** 2)
    rng = np.random.default_rng(0)
    signal = inside * 800.0 * field + rng.normal(0, 8.0, inside.shape)
    image = _image(np.abs(signal).astype(np.float32), spacing, origin)
    core = np.hypot(p[..., 0] / 80, p[..., 1] / 65) < 1
    corrected, bias = n4_correct(image, PARAMS)
    before, after = _cv(image, core), _cv(corrected, core)
    assert after < 0.4 * before, (before, after)
    assert bias.GetSize() == image.GetSize()


# ---------------------------------------------------------------- normalisation
def _roi_labels(labels: sitk.Image, pair: PreprocessedPair) -> np.ndarray:
    ref = image_from_geometry(pair.meta["reference"])
    array = sitk.GetArrayFromImage(resample(labels, ref, None, sitk.sitkNearestNeighbor,
                                            sitk.sitkUInt8))
    return crop_padded(array, pair.meta["roi"]["start_zyx"], PARAMS.roi_zyx)[0]


def test_normalised_tissue_values_agree_across_centres():
    """Centre B scales intensities 3.6x and has lower SNR (like the phantom's centres).

    Tolerances (normalised units = robust SD of the body): T2W every tissue within 0.15;
    DWI tumour within 20 % (high-b DWI of normal tissue sits at the Rician noise floor,
    so its values follow the SNR whatever the normalisation: within 0.5 there).
    """
    centres = {"A": (1000.0, 22.0, 10.0, 0.3), "B": (3600.0, 16.0, 8.0, 0.4)}
    medians = {}
    for name, (scale, snr, snr_dwi, bias) in centres.items():
        pre = Exam(scale=scale, snr=snr, snr_dwi=snr_dwi, bias=bias, seed=11)
        post = dataclasses.replace(pre, shift_mm=(2.0, 1.0, 0.0), seed=12)
        (pre_img, pre_mask, labels), (post_img, post_mask, _) = make_exam(pre), make_exam(post)
        out = pp.preprocess_pair(pre_img, post_img, pre_mask, post_mask, PARAMS,
                                 patient_id=f"centre-{name}")
        roi_labels = _roi_labels(labels, out)
        medians[name] = {(t, c): float(np.median(out.image_pre[..., c][roi_labels == lab]))
                         for t, (_, _, lab) in TISSUES.items() for c in range(len(SEQUENCES))
                         if (roi_labels == lab).sum() >= 30}
    a, b = medians["A"], medians["B"]
    assert {("tumour", 0), ("tumour", 1), ("fat", 0), ("wall", 0)} <= a.keys() == b.keys()
    for key in a:
        diff = abs(a[key] - b[key])
        if key[1] == 0:
            assert diff < 0.15, (key, a[key], b[key])
        elif key[0] == "tumour":
            assert diff < 0.2 * abs(a[key]), (key, a[key], b[key])
        else:
            assert diff < 0.5, (key, a[key], b[key])
    assert a[("tumour", 0)] < a[("fat", 0)] - 1.0 and a[("tumour", 1)] > 2.0  # contrast kept


def test_normalise_is_scale_invariant():
    rng = np.random.default_rng(0)
    array = rng.gamma(3.0, 100.0, size=(8, 16, 16)).astype(np.float32)
    mask = sitk.GetImageFromArray(np.ones(array.shape, np.uint8))
    a, _ = normalise(sitk.GetImageFromArray(array), mask, (0.5, 99.5))
    b, _ = normalise(sitk.GetImageFromArray(array * 4.0), mask, (0.5, 99.5))
    np.testing.assert_allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------- ROI
def test_crop_keeps_the_whole_tumour(pair, exams):
    ref = image_from_geometry(pair.meta["reference"])
    full = sitk.GetArrayFromImage(resample_mask(exams["pre"][1], ref))
    assert pair.mask_pre.sum() == full.sum() > 0
    assert pair.image_pre.shape == (*PARAMS.roi_zyx, len(SEQUENCES))
    assert pair.image_pre.dtype == np.float32 and pair.mask_pre.dtype == np.uint8
    assert pair.meta["roi"]["padded"] is False
    lo, hi = tumour_box(pair.mask_pre)
    centre = (lo + hi) / 2
    assert np.all(np.abs(centre - (np.array(PARAMS.roi_zyx) - 1) / 2) <= 1.0)


def test_crop_near_the_edge_is_padded_and_recorded():
    edge = Exam(fov_offset_mm=(-70.0, 0.0, 0.0), seed=5)  # tumour 21 mm from the x edge
    post = dataclasses.replace(edge, shift_mm=(1.0, 0.0, 0.0), seed=6)
    (pre, pre_mask, _), (post_img, post_mask, _) = make_exam(edge), make_exam(post)
    out = pp.preprocess_pair(pre, post_img, pre_mask, post_mask, PARAMS, patient_id="P-edge")
    roi = out.meta["roi"]
    assert roi["padded"] is True
    (_, _), (_, _), (x_before, x_after) = roi["padding_zyx"]
    assert x_after > 0 and x_before == 0
    pad_t2w = out.meta["normalisation"]["pre"]["T2W"]["clip_lo"]
    assert np.all(out.image_pre[:, :, -x_after:, 0] == np.float32(pad_t2w))
    assert out.mask_pre.sum() > 0 and out.image_pre.shape[:3] == PARAMS.roi_zyx


def test_crop_padded_does_not_shift():
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    crop, padding = crop_padded(array, (-2, 1, 4), (4, 4, 4), pad_value=-1.0)
    assert padding == [[2, 0], [0, 0], [0, 1]]
    np.testing.assert_array_equal(crop[2:, :, :3], array[0:2, 1:5, 4:7])
    assert np.all(crop[:2] == -1) and np.all(crop[:, :, 3] == -1)


def test_tumour_larger_than_the_box_is_an_error_naming_the_patient(exams):
    (pre, pre_mask, _), (post, post_mask, _) = exams["pre"], exams["post"]
    small = dataclasses.replace(PARAMS, roi_zyx=(4, 6, 6))
    with pytest.raises(RoiError, match=r"patient P-big.*does not fit"):
        pp.preprocess_pair(pre, post, pre_mask, post_mask, small, patient_id="P-big")


def test_inference_without_masks_uses_the_given_centre(exams, pair):
    (pre, _, _), (post, _, _) = exams["pre"], exams["post"]
    ref = image_from_geometry(pair.meta["reference"])
    centre_zyx = np.asarray(pair.meta["roi"]["center_zyx"])
    centre_mm = ref.TransformContinuousIndexToPhysicalPoint(tuple(centre_zyx[::-1].tolist()))
    out = pp.preprocess_pair(pre, post, None, None, PARAMS, roi_center_mm=centre_mm)
    assert out.mask_pre is None and out.meta["roi"]["source"] == "roi_center_mm"
    assert out.meta["roi"]["start_zyx"] == pair.meta["roi"]["start_zyx"]
    np.testing.assert_allclose(out.image_pre, pair.image_pre, atol=1e-5)
    with pytest.raises(RoiError, match="patient new"):
        pp.preprocess_pair(pre, post, None, None, PARAMS)


def test_a_given_centre_makes_the_images_independent_of_the_masks(exams, pair):
    """Validation patients: the ROI and the registration QC box come from the localiser's
    placement; with or without the ground-truth masks the images, box and transform are
    identical, and the masks only add the scoring (centre error, share inside)."""
    (pre, pre_mask, _), (post, post_mask, _) = exams["pre"], exams["post"]
    ref = image_from_geometry(pair.meta["reference"])
    shifted = np.add(pair.meta["roi"]["center_zyx"], (0.0, 3.0, -2.0))
    centre_mm = ref.TransformContinuousIndexToPhysicalPoint(tuple(shifted[::-1].tolist()))
    extent_mm = (30.0, 30.0, 20.0)
    kwargs = {"roi_center_mm": centre_mm, "roi_extent_mm": extent_mm}
    scored = pp.preprocess_pair(pre, post, pre_mask, post_mask, PARAMS, **kwargs)
    blind = pp.preprocess_pair(pre, post, None, None, PARAMS, **kwargs)
    np.testing.assert_array_equal(scored.image_pre, blind.image_pre)
    np.testing.assert_array_equal(scored.image_post, blind.image_post)
    assert scored.meta["transform"] == blind.meta["transform"]
    assert scored.meta["registration"] == blind.meta["registration"]
    assert scored.meta["roi"]["start_zyx"] == blind.meta["roi"]["start_zyx"]
    assert scored.meta["roi"]["start_zyx"] != pair.meta["roi"]["start_zyx"]  # not the mask's
    scoring = scored.meta["roi"]["scoring"]
    spacing = np.asarray(PARAMS.spacing_zyx)
    expected = np.linalg.norm(np.asarray([0.0, 3.0, -2.0]) * spacing)
    assert abs(scoring["centre_error_mm"] - expected) < 1.5 * spacing.max()
    assert 0 < scoring["tumour_inside_pre"] <= 1.0
    assert "scoring" in blind.meta["roi"] and blind.meta["roi"]["scoring"] == {}


def test_a_centre_that_cuts_the_tumour_is_scored_not_refused(exams, pair):
    (pre, pre_mask, _), (post, post_mask, _) = exams["pre"], exams["post"]
    ref = image_from_geometry(pair.meta["reference"])
    lo = np.asarray(pair.meta["roi"]["tumour_lo_zyx"], float)
    edge_mm = ref.TransformContinuousIndexToPhysicalPoint(tuple(lo[::-1].tolist()))
    small = dataclasses.replace(PARAMS, roi_zyx=(4, 8, 8))
    out = pp.preprocess_pair(pre, post, pre_mask, post_mask, small, roi_center_mm=edge_mm)
    scoring = out.meta["roi"]["scoring"]
    assert scoring["tumour_inside_pre"] < 1.0 and scoring["whole_tumour_inside"] is False


# ---------------------------------------------------------------- back to original space
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.astype(bool).sum() + b.astype(bool).sum())


@pytest.mark.parametrize("timepoint", ["pre", "post"])
def test_roi_to_original_overlaps_the_ground_truth(pair, exams, timepoint):
    truth = exams[timepoint][1]
    roi_mask = pair.mask_pre if timepoint == "pre" else pair.mask_post
    back = pp.roi_to_original(roi_mask, pair, timepoint)
    assert back.GetSize() == truth.GetSize() and back.GetOrigin() == truth.GetOrigin()
    score = _dice(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(truth))
    assert score > 0.8, score
    # the meta dict alone (as stored in the cache) gives the same result
    from_meta = pp.roi_to_original(roi_mask, json.loads(json.dumps(pair.meta)), timepoint)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_meta), sitk.GetArrayFromImage(back))


def test_roi_to_original_post_needs_the_inverse_transform(pair, exams):
    """Mapping post without the transform (as if it were pre) overlaps clearly worse."""
    truth = sitk.GetArrayFromImage(exams["post"][1])
    meta = json.loads(json.dumps(pair.meta))
    meta["original"]["pre"] = meta["original"]["post"]
    naive = pp.roi_to_original(pair.mask_post, meta, "pre")
    right = pp.roi_to_original(pair.mask_post, pair, "post")
    assert _dice(sitk.GetArrayFromImage(right), truth) > _dice(
        sitk.GetArrayFromImage(naive), truth) + 0.1


# ---------------------------------------------------------------- the phantom cohort
def test_phantom_patient_end_to_end(tmp_path):
    """One smoke-profile phantom patient (utils.cohort.generate): registration within one target
    voxel of the known repositioning, and masks mapped back overlap the originals."""
    from utils.cohort import generate as cohort
    from utils.cohort import phantom

    profile = get_profile("smoke")
    rows = cohort.generate_patient(profile, "TR001", "training", "A", tmp_path)
    files = {(r["timepoint"], r["sequence"]): r for r in rows}
    images = {timepoint: {seq: sitk.ReadImage(str(files[timepoint, seq]["image_path"]))
                          for seq in SEQUENCES} for timepoint in ("pre", "post")}
    masks = {timepoint: sitk.ReadImage(str(files[timepoint, "T2W"]["mask_path"]))
             for timepoint in ("pre", "post")}
    out = pp.preprocess_pair(images["pre"], images["post"], masks["pre"], masks["post"],
                             profile, patient_id="TR001")
    draw = phantom.draw_patient(profile, "TR001", "training", "A")
    (r_pre, t_pre), (r_post, t_post) = draw.poses["pre"], draw.poses["post"]
    centre = r_pre @ draw.anatomy.tumour_centre + t_pre
    corners = np.array(np.meshgrid([-40, 40], [-40, 40], [-20, 20])).reshape(3, -1).T
    errors = [np.linalg.norm(np.array(out.transform.TransformPoint(tuple(map(float, p))))
                             - (r_post @ (r_pre.T @ (p - t_pre)) + t_post))
              for p in centre + corners]
    assert max(errors) < max(profile.spacing_zyx), errors
    for timepoint, roi_mask in (("pre", out.mask_pre), ("post", out.mask_post)):
        back = sitk.GetArrayFromImage(pp.roi_to_original(roi_mask, out, timepoint))
        assert _dice(back, sitk.GetArrayFromImage(masks[timepoint])) > 0.8
