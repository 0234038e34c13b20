"""Preprocessing of one pre-/post-chemoradiotherapy rectal MRI pair for 3D RP-Net.

Per patient (all image work in SimpleITK, arrays in NumPy (z, y, x) order):

1. read each exam's sequences (the cohort's own set, ``params.sequences``) and tumour
   mask. One sequence, ``params.reference_sequence`` (T2W by default), defines the grid,
   carries the mask and drives N4 and registration;
2. N4 bias-field correction (:mod:`utils.preprocessing.intensity`) of the reference sequence.
   The other sequences are *not* N4-corrected by default (``n4_others="none"``): in high-b
   DWI most tissue sits at the Rician noise floor and the bright signal is the tumour, so an N4 fit
   models anatomy and noise rather than coil sensitivity; its residual field is weaker (the
   phantom: 0.15-0.25 vs 0.25-0.40 log amplitude) and the per-sequence normalisation
   removes the global scale. ``"reference_field"`` applies the reference sequence's field
   (same receive coil, same session) and ``"own"`` fits N4 on each sequence itself;
3. resample each exam onto one reference grid (:mod:`utils.geometry`): the reference
   sequence's orientation and field of view at the profile's target spacing (linear for
   images, nearest neighbour for masks);
4. rigidly register post to pre on the resampled reference sequence, with QC
   (:mod:`utils.preprocessing.registration`), and resample the post images and mask straight
   from their original grids into pre space (one interpolation). The other sequences follow the
   reference's transform (assumed aligned with it within an exam);
5. robust z-score per sequence inside the body mask
   (:func:`utils.preprocessing.intensity.normalise`);
6. crop a fixed-size ROI, the same box at both time points; boxes leaving the image are
   padded, never shifted. With ``roi_center_mm`` (the localiser's prediction,
   :mod:`utils.localisation`, or a point a person gave) the box and the registration focus
   come from that centre alone, and the masks are only cropped for scoring (``meta["roi"]
   ["scoring"]``: centre error, share of the tumour inside); without it they come from the
   tumour (union of pre and registered post masks, training patients).

The registration transform ``T`` maps a physical point of the pre exam to the corresponding
point of the post exam (fixed = pre, moving = post), as ITK resampling expects. Caching a
cohort is :mod:`utils.preprocessing.run` (entries: :mod:`utils.preprocessing.cache`; CLI:
``python -m utils.preprocessing --manifest PATH --out DIR``). Parameters and the result type:
:mod:`utils.preprocessing.params`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.cohort.imageerrors import plain_itk_error
from utils.cohort.manifest import cohort_sequences, read_image
from utils.config import TIMEPOINTS, Profile
from utils.errors import InputError, RoiError
from utils.geometry import (
    geometry_of,
    image_from_geometry,
    pair_geometry_warnings,
    reference_grid,
    resample,
    resample_mask,
    sequences_outside_reference,
)
from utils.preprocessing.intensity import apply_bias_field, body_mask, n4_correct, normalise
from utils.preprocessing.params import (
    PIPELINE_VERSION,
    Images,
    PreprocessedPair,
    PreprocessParams,
)
from utils.preprocessing.registration import (
    register_exams,
    transform_from_meta,
    transform_to_meta,
)
from utils.preprocessing.registration_qc import local_region
from utils.preprocessing.roi import choose_roi, crop_padded, tumour_box, tumour_coverage


# --------------------------------------------------------------------------- N4 policy
def correct_exam(images: Images, params: PreprocessParams, threads: int = 1
                 ) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """N4 on the reference sequence, the others per the ``n4_others`` policy; returns the
    corrected images and the reference sequence's bias field."""
    if params.n4_others not in ("none", "reference_field", "own"):
        raise ValueError(f"unknown n4_others policy {params.n4_others!r}")
    reference = params.reference_sequence
    corrected_ref, bias = n4_correct(images[reference], params, threads=threads)
    corrected = {reference: corrected_ref}
    for seq in params.sequences:
        if seq == reference:
            continue
        if params.n4_others == "reference_field":
            corrected[seq] = apply_bias_field(images[seq], bias)
        elif params.n4_others == "own":
            corrected[seq] = n4_correct(images[seq], params, threads=threads)[0]
        else:
            corrected[seq] = sitk.Cast(images[seq], sitk.sitkFloat32)
    return corrected, bias


# --------------------------------------------------------------------------- per pair
@contextmanager
def itk_threads(n: int) -> Iterator[None]:
    """Run ITK with ``n`` threads (global default), restoring the previous value after.

    One thread makes every filter (N4's B-spline fit, registration metric) reduce in a
    fixed order, so results are bit-identical between runs and between worker processes.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _check_inputs(patient_id: str, images: Images, label: str,
                  sequences: Sequence[str], reference: str) -> None:
    """The exam has exactly the expected sequences, each a 3-D image."""
    if set(images) != set(sequences):
        raise InputError(patient_id, f"{label} exam has sequences {sorted(images)}, expected "
                         f"{list(sequences)}")
    for seq in sequences:
        if images[seq].GetDimension() != 3:
            raise InputError(patient_id, f"{label} {seq} is not a 3-D image")
    apart = sequences_outside_reference(images, reference)
    if apart:
        raise InputError(patient_id, f"{label} exam: {sorted(apart)} do not overlap the "
                         f"{reference} field of view in physical space (different origin or "
                         "orientation in the header?)")


def _prepare_exam(images: Images, params: PreprocessParams, threads: int
                  ) -> dict[str, Any]:
    """N4, reference grid, the resampled reference sequence and body mask of one exam."""
    corrected, bias = correct_exam(images, params, threads)
    ref = reference_grid(images[params.reference_sequence], params.spacing_zyx)
    reference_image = resample(corrected[params.reference_sequence], ref)
    return {"corrected": corrected, "bias": bias, "ref": ref, "reference_image": reference_image,
            "body": body_mask(reference_image, params.body_threshold_factor)}


def _to_reference(exam: Mapping[str, Any], ref: sitk.Image, tx: sitk.Transform | None
                  ) -> dict[str, sitk.Image]:
    """All corrected sequences of an exam sampled on ``ref`` (through ``tx``)."""
    return {seq: resample(image, ref, tx) for seq, image in exam["corrected"].items()}


def _normalise_exam(images: Mapping[str, sitk.Image], body: sitk.Image,
                    params: PreprocessParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Channels in ``params.sequences`` order, each normalised inside the body mask."""
    arrays, stats = [], {}
    for seq in params.sequences:
        arr, stats[seq] = normalise(images[seq], body, params.clip_percentiles,
                                    params.scale_percentiles, params.clip_z_max)
        arrays.append(arr)
    return np.stack(arrays, axis=-1), stats


def _mask_array(mask: sitk.Image | None, ref: sitk.Image, tx: sitk.Transform | None = None
                ) -> np.ndarray | None:
    """A label image resampled onto ``ref`` (through ``tx``) as a uint8 array, or None."""
    if mask is None:
        return None
    return sitk.GetArrayFromImage(resample_mask(mask, ref, tx))


def preprocess_pair(pre_images: Images, post_images: Images,
                    pre_mask: sitk.Image | None = None, post_mask: sitk.Image | None = None,
                    profile: Profile | str | PreprocessParams | None = None,
                    roi_center_mm: Sequence[float] | None = None, patient_id: str = "new",
                    threads: int = 1, check_registration: bool = True,
                    files: Mapping[str, str] | None = None,
                    roi_extent_mm: Sequence[float] | None = None) -> PreprocessedPair:
    """Preprocess one pre/post pair (the inference entry point; also used for training).

    ``*_images`` map sequence name -> image; masks are optional (inference). With
    ``roi_center_mm`` (physical x, y, z in mm, pre space) the ROI and the registration focus
    come from it and the masks are cropped for scoring only, so the images do not depend on
    them (``roi_extent_mm``, an expected tumour extent, sizes the local registration QC box);
    else the ROI is centred on the pre (and registered post) tumour mask.
    Raises :class:`RegistrationError` if the exams do not overlap or the registration QC
    fails in ``params.registration`` mode ``"strict"`` (``check_registration=False`` makes
    it ``"flag"``: the flags are only recorded in ``meta``). ``files`` (``input_files``
    keys) are named in registration errors.
    """
    params = (profile if isinstance(profile, PreprocessParams)
              else PreprocessParams.from_profile(profile))
    for label, images in (("pre", pre_images), ("post", post_images)):
        _check_inputs(patient_id, images, label, params.sequences, params.reference_sequence)
    with itk_threads(threads):
        return _preprocess_pair(pre_images, post_images, pre_mask, post_mask, params,
                                roi_center_mm, patient_id, threads, check_registration, files,
                                roi_extent_mm)


def _check_roi_inputs(patient_id: str, mask_pre: np.ndarray | None,
                      roi_center_mm: Sequence[float] | None, params: PreprocessParams) -> None:
    """Fail before the expensive steps when the ROI cannot be placed."""
    if mask_pre is None or not mask_pre.any():
        if roi_center_mm is None:
            raise RoiError(patient_id, "no tumour mask voxels and no roi_center_mm to centre "
                           "the ROI")
        return
    lo, hi = tumour_box(mask_pre)
    if np.any(hi - lo + 1 > np.asarray(params.roi_zyx)):
        raise RoiError(patient_id, f"tumour extent {(hi - lo + 1).tolist()} voxels (z, y, x) "
                       f"does not fit in the ROI box {list(params.roi_zyx)}")


def _normalise_pair(pre: Mapping[str, Any], post: Mapping[str, Any], tx: sitk.Transform,
                    params: PreprocessParams) -> tuple[list[np.ndarray], dict[str, Any],
                                                       sitk.Image]:
    """Both exams on the pre reference grid, normalised; also the post body mask there."""
    ref = pre["ref"]
    pre_ref = {**_to_reference(pre, ref, None), params.reference_sequence: pre["reference_image"]}
    post_body = resample_mask(post["body"], ref, tx)
    image_pre, norm_pre = _normalise_exam(pre_ref, pre["body"], params)
    image_post, norm_post = _normalise_exam(_to_reference(post, ref, tx), post_body, params)
    return [image_pre, image_post], {"pre": norm_pre, "post": norm_post}, post_body


def _crop_pair(patient_id: str, ref: sitk.Image, params: PreprocessParams,
               images: Sequence[np.ndarray], norm: Mapping[str, Any],
               masks: Sequence[np.ndarray | None], roi_center_mm: Sequence[float] | None
               ) -> tuple[list[np.ndarray], list[np.ndarray | None], dict[str, Any]]:
    """The same ROI box on both time points; outside the image pad with ``clip_lo``."""
    mask_pre, mask_post = masks
    union = None if mask_pre is None else (mask_pre | (0 if mask_post is None else mask_post))
    roi = choose_roi(patient_id, ref, params.roi_zyx,
                     None if roi_center_mm is not None else union, roi_center_mm)
    crops, padding = [], None
    for image, timepoint in zip(images, TIMEPOINTS, strict=True):
        pad = [norm[timepoint][seq]["clip_lo"] for seq in params.sequences]
        crop, padding = crop_padded(image, roi["start_zyx"], params.roi_zyx, pad)
        crops.append(crop)
    roi.update(padding_zyx=padding, padded=bool(np.any(np.asarray(padding) > 0)))
    cropped = [None if m is None else crop_padded(m, roi["start_zyx"], params.roi_zyx, 0)[0]
               for m in masks]
    if roi["source"] == "mask" and int(cropped[0].sum()) != int(mask_pre.sum()):
        raise RoiError(patient_id, "the ROI crop cut the pre-treatment tumour")
    if roi["source"] != "mask":
        roi["scoring"] = tumour_coverage(ref, roi["center_zyx"], masks, cropped)
    return crops, cropped, roi


def _preprocess_pair(pre_images: Images, post_images: Images, pre_mask: sitk.Image | None,
                     post_mask: sitk.Image | None, params: PreprocessParams,
                     roi_center_mm: Sequence[float] | None, patient_id: str, threads: int,
                     check_registration: bool, files: Mapping[str, str] | None = None,
                     roi_extent_mm: Sequence[float] | None = None) -> PreprocessedPair:
    """The steps of :func:`preprocess_pair` once its inputs are checked and threads set."""
    clock = {"start": time.perf_counter()}
    reference = params.reference_sequence
    ref = reference_grid(pre_images[reference], params.spacing_zyx)
    mask_pre = _mask_array(pre_mask, ref)
    roi_mask = None if roi_center_mm is not None else mask_pre  # a given centre wins
    _check_roi_inputs(patient_id, roi_mask, roi_center_mm, params)
    pre, post = (_prepare_exam(images, params, threads) for images in (pre_images, post_images))
    clock["n4_resample"] = time.perf_counter()
    local = local_region(ref, roi_mask, roi_center_mm, params, roi_extent_mm)
    tx, reg_qc = register_exams(patient_id, pre, post, params, threads, check_registration,
                                local, files)
    clock["registration"] = time.perf_counter()
    images, norm, post_body = _normalise_pair(pre, post, tx, params)
    masks = [mask_pre, _mask_array(post_mask, ref, tx)]
    clock["normalise"] = time.perf_counter()
    crops, cropped, roi = _crop_pair(patient_id, ref, params, images, norm, masks,
                                     roi_center_mm)
    stamps = list(clock.values())
    timing = {f"{k}_s": round(b - a, 4) for k, a, b in zip(list(clock)[1:], stamps, stamps[1:],
                                                             strict=False)}
    warnings = pair_geometry_warnings(pre_images, post_images, reference, params.roi_zyx,
                                      params.spacing_zyx)
    meta = {"patient_id": patient_id, "pipeline_version": PIPELINE_VERSION,
            "params": params.to_dict(), "sequences": list(params.sequences),
            "reference_sequence": reference, "reference": geometry_of(ref),
            "original": {"pre": geometry_of(pre_images[reference]),
                         "post": geometry_of(post_images[reference])},
            "transform": transform_to_meta(tx), "registration": reg_qc, "roi": roi,
            "normalisation": norm, "warnings": warnings}
    qc_images = {"bias_pre": pre["bias"], "bias_post": post["bias"],
                 "body_pre": pre["body"], "body_post_in_pre": post_body}
    return PreprocessedPair(patient_id, crops[0], crops[1], cropped[0], cropped[1],
                            tuple(params.spacing_zyx), meta, tx, qc_images, timing)


# --------------------------------------------------------------------------- back-mapping
def roi_to_original(mask_roi_zyx: np.ndarray, pair: PreprocessedPair | Mapping[str, Any],
                    timepoint: str = "pre") -> sitk.Image:
    """Put a (z, y, x) ROI mask back onto the ORIGINAL T2W grid of one exam (uint8).

    pre: un-crop onto the reference grid and resample nearest-neighbour to the original
    T2W grid. post: the ROI lives in pre space, so each post-grid point ``q`` is looked up
    at ``T^-1(q)`` (``T`` maps pre points to post points). Float inputs are thresholded
    at 0.5. ``pair`` may be a :class:`PreprocessedPair` or its ``meta`` dict (cache).
    """
    if timepoint not in TIMEPOINTS:
        raise ValueError(f"timepoint must be one of {TIMEPOINTS}, not {timepoint!r}")
    meta = pair.meta if isinstance(pair, PreprocessedPair) else pair
    roi = np.asarray(mask_roi_zyx)
    roi = (roi >= 0.5) if roi.dtype.kind == "f" else (roi > 0)
    ref = image_from_geometry(meta["reference"])
    full = np.zeros(ref.GetSize()[::-1], dtype=np.uint8)
    start = np.asarray(meta["roi"]["start_zyx"], int)
    lo, hi = np.maximum(start, 0), np.minimum(start + roi.shape, full.shape)
    full[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = roi[
        tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))]
    ref_mask = sitk.GetImageFromArray(full)
    ref_mask.CopyInformation(ref)
    target = image_from_geometry(meta["original"][timepoint])
    tx = None if timepoint == "pre" else transform_from_meta(meta).GetInverse()
    return resample(ref_mask, target, tx, sitk.sitkNearestNeighbor, sitk.sitkUInt8)


# --------------------------------------------------------------------------- manifest I/O
def _exam_rows(patient_rows: pd.DataFrame, patient_id: str, timepoint: str) -> pd.DataFrame:
    """One time point's manifest rows of a patient (an InputError when there are none)."""
    rows = patient_rows[patient_rows["timepoint"] == timepoint]
    if rows.empty:
        raise InputError(patient_id, f"no {timepoint} rows in the manifest")
    return rows


def read_input(patient_id: str, path: Any) -> sitk.Image:
    """One input image; a missing path or any reader failure becomes an InputError."""
    if not isinstance(path, str | os.PathLike) or not str(path) or str(path) == "nan":
        raise InputError(patient_id, f"missing file path {path!r}")
    try:
        return read_image(path)
    except Exception as exc:  # any reader failure becomes an InputError
        raise InputError(patient_id, f"cannot read {path}: {plain_itk_error(exc)}") from exc


def input_files(patient_rows: pd.DataFrame) -> dict[str, str]:
    """``{"pre_T2W": path, ..., "pre_mask": path, ...}`` for one patient's rows."""
    patient_id = str(patient_rows["patient_id"].iloc[0])
    files: dict[str, str] = {}
    for timepoint in TIMEPOINTS:
        rows = _exam_rows(patient_rows, patient_id, timepoint)
        for _, row in rows.iterrows():
            files[f"{timepoint}_{row['sequence']}"] = row["image_file"]
        masks = [m for m in rows["mask_file"] if isinstance(m, str) and m]
        if masks:
            files[f"{timepoint}_mask"] = masks[0]
    return files


def preprocess_patient(patient_rows: pd.DataFrame,
                       profile: Profile | str | PreprocessParams | None = None,
                       threads: int = 1, **kwargs: Any) -> PreprocessedPair:
    """Read one patient's manifest rows (pre/post x sequences, masks) and preprocess them.

    With a profile (not :class:`PreprocessParams`) the sequences are the rows' own, the
    reference first; ``run_preprocessing`` sets them once from the whole manifest.
    """
    patient_id = str(patient_rows["patient_id"].iloc[0])
    params = (profile if isinstance(profile, PreprocessParams) else PreprocessParams.from_profile(
        profile, sequences=cohort_sequences(patient_rows)))
    files = input_files(patient_rows)
    images = {timepoint: {seq: read_input(patient_id, files[f"{timepoint}_{seq}"])
                          for seq in params.sequences if f"{timepoint}_{seq}" in files}
              for timepoint in TIMEPOINTS}
    masks = {timepoint: read_input(patient_id, files[f"{timepoint}_mask"])
             if f"{timepoint}_mask" in files else None for timepoint in TIMEPOINTS}
    return preprocess_pair(images["pre"], images["post"], masks["pre"], masks["post"],
                           params, patient_id=patient_id, threads=threads, files=files,
                           **kwargs)
