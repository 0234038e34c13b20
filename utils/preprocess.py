"""Preprocessing of pre-/post-chemoradiotherapy rectal MRI pairs for 3D RP-Net.

Per patient (all image work in SimpleITK, arrays in NumPy (z, y, x) order):

1. read each exam's sequences (the cohort's own set, ``params.sequences``; the phantom has
   T2W and DWI) and tumour mask. One sequence, ``params.reference_sequence`` (T2W by
   default), defines the grid, carries the mask and drives N4 and registration;
2. N4 bias-field correction of the reference sequence, fitted on a copy shrunk to ~8 mm
   voxels inside a body mask (Otsu/2, largest component, holes filled) and applied at full
   resolution through ``GetLogBiasFieldAsImage``. The other sequences are *not*
   N4-corrected by default (``n4_others="none"``). For DWI: in high-b DWI most tissue sits
   at the Rician noise floor and the bright signal is the tumour, so an N4 fit models
   anatomy and noise rather than coil sensitivity; its residual field is weaker (the
   phantom: 0.15-0.25 vs 0.25-0.40 log amplitude) and the per-sequence normalisation
   removes the global scale. ``"reference_field"`` applies the reference sequence's field
   (same receive coil, same session) and ``"own"`` fits N4 on each sequence itself;
3. resample each exam onto one reference grid: the reference sequence's orientation and
   field of view at the profile's target spacing (linear for images, nearest neighbour for
   masks);
4. rigidly register post to pre on the resampled reference sequence
   (``utils.registration``: Euler3D from a MOMENTS start, Mattes MI inside the pre body
   mask, 3-level pyramid capped for thin slabs, seeded random sampling, one ITK thread:
   bit-identical re-runs) and resample the post images and mask straight from their
   original grids into pre space (one interpolation). QC: identity kept when as good;
   metric, body-mask Dice within both fields of view and the edge correlation around the
   tumour before/after; flags (worse than the start, Dice < 0.85, local correlation
   < 0.85, > 30 mm beyond the initial centring, > 20 deg). A flagged result is retried
   once with a conservative set-up; then ``params.registration="strict"`` makes it an
   error, ``"flag"`` records the flags (``"identity"``: no registration). The other
   sequences follow the reference's transform (assumed aligned with it within an exam);
5. robust z-score per sequence inside the body mask (median, (p95 - p5) / 3.29), clipped
   to percentiles, so that centres with different scanner scaling and SNR agree;
6. crop a fixed-size ROI centred on the tumour (union of pre and registered post masks),
   the same box at both time points; boxes leaving the image are padded, never shifted;
7. cache one ``.npz`` per patient keyed by the parameters and the input files' checksums.

The registration transform ``T`` maps a physical point of the pre exam to the corresponding
point of the post exam (fixed = pre, moving = post), as ITK resampling expects.

CLI: ``python -m utils.preprocess --manifest PATH --out DIR [--profile NAME] [--workers N]
[--registration {strict,flag,identity}]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .config import (
    REFERENCE_SEQUENCE,
    SEQUENCE_NAME,
    SEQUENCES,
    TIMEPOINTS,
    Profile,
    get_paths,
    get_profile,
)
from .errors import InputError, PreprocessError, RoiError
from .errors import RegistrationError as RegistrationError
from .geometry import pair_geometry_warnings, sequences_outside_reference
from .imagecheck import plain_itk_error
from .io import (
    checksum,
    save_npz_atomic,
    sha256_file,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .manifest import ManifestError, cohort_sequences, read_image, require_valid
from .registration import FALLBACK_REGISTRATION as FALLBACK_REGISTRATION  # re-exported
from .registration import MODES as REGISTRATION_MODES
from .registration import dice as dice
from .registration import local_region, register_exams, transform_from_meta, transform_to_meta
from .registration import register_rigid as register_rigid
from .registration import registration_flags as registration_flags
from .registration import transform_summary as transform_summary

PIPELINE_VERSION = "2"
Images = Mapping[str, sitk.Image]


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class PreprocessParams:
    """Every setting that changes the cached output (all of it enters the cache key)."""

    spacing_zyx: tuple[float, float, float]
    roi_zyx: tuple[int, int, int]
    # the cohort's sequences in channel order (reference first) and the reference grid's
    sequences: tuple[str, ...] = SEQUENCES
    reference_sequence: str = REFERENCE_SEQUENCE
    # N4 bias-field correction
    n4_shrink_mm: float = 8.0  # coarse voxel of the fit (shrink ~4 on 2 mm, ~6 on 1.25 mm)
    n4_iterations: tuple[int, ...] = (10, 10)  # per fitting level
    n4_convergence: float = 1e-3
    n4_control_points: int = 4
    n4_spline_order: int = 2
    n4_others: str = "none"  # non-reference sequences: "none" | "reference_field" | "own"
    # body mask: threshold = factor * Otsu threshold
    body_threshold_factor: float = 0.5
    # rigid registration (utils.registration)
    registration: str = "strict"  # "strict" (QC flags raise) | "flag" | "identity" (none)
    reg_init: str = "moments"  # "identity" | "geometry" | "moments" | "best" (lowest metric)
    reg_shrink: tuple[int, ...] = (4, 2, 1)
    reg_sigmas_vox: tuple[float, ...] = (2.0, 1.0, 0.0)
    reg_sampling: tuple[float, ...] = (0.5, 0.2, 0.05)  # random fraction per level
    reg_iterations: int = 100
    reg_bins: int = 32
    reg_learning_rate: float = 2.0  # regular-step gradient descent, scales from index shift
    reg_min_step: float = 0.01
    reg_relaxation: float = 0.8
    reg_scales: str = "index"  # optimizer scales from "index" or "physical" shift
    reg_fallback: bool = True  # retry a QC-flagged registration with FALLBACK_REGISTRATION
    reg_seed: int = 2021
    reg_local_margin_mm: float = 30.0  # local QC box: tumour bounding box grown by this
    # registration QC thresholds
    qc_min_body_dice: float = 0.85  # counted where both fields of view overlap
    qc_max_translation_mm: float = 30.0  # beyond the initial (centre-of-mass) alignment
    qc_max_rotation_deg: float = 20.0
    qc_metric_tolerance: float = 0.03  # Mattes MI; identity is kept when this close to the result
    qc_min_local_ncc: float = 0.85  # pre/post T2W edge correlation in the local QC box
    qc_min_local_coverage: float = 0.25  # share of the local QC box inside the post exam
    qc_min_overlap: float = 0.1  # fields of view after the initial alignment (of the smaller)
    # intensity normalisation: (x - median) / ((p95 - p5) / 3.29), clipped below at the
    # body's 0.5th percentile and above at clip_z_max robust SDs (see normalise)
    scale_percentiles: tuple[float, float] = (5.0, 95.0)
    clip_percentiles: tuple[float, float] = (0.5, 100.0)
    clip_z_max: float = 30.0

    @classmethod
    def from_profile(cls, profile: Profile | str | None = None, **changes: Any) -> PreprocessParams:
        """Parameters for a profile (target spacing, ROI size), with optional changes."""
        prof = profile if isinstance(profile, Profile) else get_profile(profile)
        base = cls(spacing_zyx=prof.spacing_zyx, roi_zyx=prof.roi_zyx)
        return dataclasses.replace(base, **changes)

    def __post_init__(self) -> None:
        """Plain tuples (lists from JSON or a CLI are accepted) and consistent values."""
        fix = {"spacing_zyx": tuple(float(v) for v in self.spacing_zyx),
               "roi_zyx": tuple(int(v) for v in self.roi_zyx),
               "sequences": tuple(str(v) for v in self.sequences)}
        for name, value in fix.items():
            object.__setattr__(self, name, value)
        if len(self.spacing_zyx) != 3 or min(self.spacing_zyx) <= 0:
            raise ValueError(f"spacing_zyx must be three positive mm values, not "
                             f"{self.spacing_zyx}")
        if len(self.roi_zyx) != 3 or min(self.roi_zyx) < 1:
            raise ValueError(f"roi_zyx must be three positive voxel counts, not {self.roi_zyx}")
        bad = [s for s in self.sequences if not SEQUENCE_NAME.fullmatch(s)]
        if bad or len(set(self.sequences)) != len(self.sequences) or not self.sequences:
            raise ValueError(f"sequences must be distinct names of letters, digits, '_', '-' "
                             f"and '+', not {list(self.sequences)}")
        if self.reference_sequence not in self.sequences:
            raise ValueError(f"reference sequence {self.reference_sequence!r} is not among "
                             f"the sequences {list(self.sequences)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in
                dataclasses.asdict(self).items()}

    def digest(self) -> str:
        text = json.dumps({"version": PIPELINE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def _as_params(profile: Profile | str | PreprocessParams | None) -> PreprocessParams:
    return profile if isinstance(profile, PreprocessParams) else PreprocessParams.from_profile(
        profile)


# --------------------------------------------------------------------------- result type
@dataclass
class PreprocessedPair:
    """One patient's preprocessed ROI crops plus what is needed to map results back.

    ``meta`` is JSON-serialisable and self-sufficient for :func:`roi_to_original`
    (reference grid, original T2W geometries, transform, ROI start).
    """

    patient_id: str
    image_pre: np.ndarray  # float32 (z, y, x, C)
    image_post: np.ndarray  # float32 (z, y, x, C), registered into pre space
    mask_pre: np.ndarray | None  # uint8 (z, y, x) or None without masks
    mask_post: np.ndarray | None
    spacing_zyx: tuple[float, float, float]
    meta: dict[str, Any]
    transform: sitk.Transform  # pre physical point -> post physical point
    qc_images: dict[str, sitk.Image] = field(default_factory=dict)  # bias fields, body masks
    timing_s: dict[str, float] = field(default_factory=dict)  # per step; not cached (not
    # deterministic): it goes to the QC table, so identical inputs give identical cache files

    def arrays(self) -> dict[str, np.ndarray]:
        """The cache arrays of docs/CONTRACTS.md (masks are required there)."""
        if self.mask_pre is None or self.mask_post is None:
            raise InputError(self.patient_id, "cannot cache a pair without tumour masks")
        return {"image_pre": self.image_pre, "image_post": self.image_post,
                "mask_pre": self.mask_pre, "mask_post": self.mask_post,
                "spacing_zyx": np.asarray(self.spacing_zyx, dtype=np.float64),
                "meta_json": np.array(json.dumps(self.meta, sort_keys=True))}


# --------------------------------------------------------------------------- geometry helpers
def geometry(image: sitk.Image) -> dict[str, list]:
    """The grid of an image as plain lists (x, y, z order, as SimpleITK)."""
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def image_from_geometry(geom: Mapping[str, Sequence], pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """An all-zero image on the grid ``geom`` (from :func:`geometry`)."""
    image = sitk.Image([int(s) for s in geom["size"]], pixel)
    image.SetSpacing([float(s) for s in geom["spacing"]])
    image.SetOrigin([float(s) for s in geom["origin"]])
    image.SetDirection([float(s) for s in geom["direction"]])
    return image


def reference_grid(image: sitk.Image, spacing_zyx: Sequence[float]) -> sitk.Image:
    """The image's orientation and field of view at the target spacing (empty uint8 image).

    The origin moves by half a voxel difference so that the new grid covers the same
    physical extent as the original (voxel centres, not corners, sit on the origin).
    """
    old_sp = np.array(image.GetSpacing())
    new_sp = np.array(spacing_zyx[::-1], dtype=float)
    extent = old_sp * np.array(image.GetSize())
    size = np.maximum(1, np.round(extent / new_sp)).astype(int)
    shift = (new_sp - old_sp) / 2.0
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ shift
    return image_from_geometry({"size": size.tolist(), "spacing": new_sp.tolist(),
                                "origin": origin.tolist(), "direction": image.GetDirection()})


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
             interpolator: int = sitk.sitkLinear, pixel: int = sitk.sitkFloat32,
             default: float = 0.0) -> sitk.Image:
    """``image`` sampled on ``reference``'s grid at ``transform(point)``."""
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    return sitk.Resample(image, reference, tx, interpolator, default, pixel)


def resample_mask(mask: sitk.Image, reference: sitk.Image,
                  transform: sitk.Transform | None = None) -> sitk.Image:
    """Nearest-neighbour resampling of a label image, binarised to uint8 {0, 1}."""
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    return resample(binary, reference, transform, sitk.sitkNearestNeighbor, sitk.sitkUInt8)


# --------------------------------------------------------------------------- body mask
def _fill_holes_in_plane(mask: sitk.Image) -> sitk.Image:
    """Fill holes, treating the first and last slice as closed (caps of ones).

    Plain 3-D filling leaves cavities that run through the whole stack (rectal lumen,
    bladder) unfilled because they touch the z faces; capping the stack fills them.
    """
    capped = sitk.ConstantPad(mask, [0, 0, 1], [0, 0, 1], 1)
    filled = sitk.BinaryFillhole(capped, fullyConnected=False, foregroundValue=1)
    return sitk.Crop(filled, [0, 0, 1], [0, 0, 1])


def body_mask(image: sitk.Image, threshold_factor: float = 0.5) -> sitk.Image:
    """Body (foreground) mask: ``factor`` x Otsu threshold, largest component, hole fill.

    Half the Otsu threshold keeps dark tissue (muscle, rectal wall) that Otsu alone can
    split off when the body is dominated by bright fat.
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.Execute(img)
    mask = sitk.Cast(img > threshold_factor * otsu.GetThreshold(), sitk.sitkUInt8)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.Cast(labels == 1, sitk.sitkUInt8)
    filled = _fill_holes_in_plane(mask)
    filled.CopyInformation(image)
    return filled


# --------------------------------------------------------------------------- N4
def _shrink_factors(image: sitk.Image, coarse_mm: float) -> list[int]:
    """Per-axis integer shrink giving coarse voxels of about ``coarse_mm`` (>= 4 voxels)."""
    factors = np.round(coarse_mm / np.array(image.GetSpacing())).astype(int)
    return [int(max(1, min(f, s // 4 or 1))) for f, s in zip(factors, image.GetSize(),
                                                             strict=True)]


def n4_correct(image: sitk.Image, params: PreprocessParams,
               mask: sitk.Image | None = None, threads: int = 1
               ) -> tuple[sitk.Image, sitk.Image]:
    """N4-correct ``image``; returns ``(corrected, bias_field)`` at full resolution.

    The field is fitted on a shrunk copy inside ``mask`` (default: :func:`body_mask`) and
    evaluated on the full grid with ``GetLogBiasFieldAsImage``; corrected = image / field.
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    factors = _shrink_factors(img, params.n4_shrink_mm)
    small = sitk.Shrink(img, factors)
    if mask is None:
        small_mask = body_mask(small, params.body_threshold_factor)
    else:
        small_mask = resample_mask(mask, small)
    small_mask = sitk.Cast((small_mask > 0) & (small > 0), sitk.sitkUInt8)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in params.n4_iterations])
    n4.SetConvergenceThreshold(params.n4_convergence)
    n4.SetNumberOfControlPoints([params.n4_control_points] * 3)
    n4.SetSplineOrder(params.n4_spline_order)
    n4.SetNumberOfThreads(threads)
    n4.Execute(small, small_mask)
    bias = sitk.Exp(n4.GetLogBiasFieldAsImage(img))
    return img / bias, bias


def apply_bias_field(image: sitk.Image, bias: sitk.Image) -> sitk.Image:
    """Divide ``image`` by a bias field defined on another grid (resampled linearly)."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    field_on_img = resample(bias, img, default=1.0)
    return img / sitk.Maximum(field_on_img, 1e-3)


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


# --------------------------------------------------------------------------- normalisation
def normalise(image: sitk.Image, mask: sitk.Image, clip_percentiles: Sequence[float],
              scale_percentiles: Sequence[float] = (5.0, 95.0), clip_z_max: float = 30.0
              ) -> tuple[np.ndarray, dict[str, float]]:
    """Robust z-score inside ``mask``: (x - median) / scale, clipped.

    scale = (p95 - p5) / 3.29, the SD for Gaussian data. A wide percentile range measures
    tissue contrast; the IQR of a fat-dominated pelvis measures mostly noise, so it would
    make the normalised values depend on each centre's SNR. Clip rule: below at the body's
    ``clip_percentiles[0]`` percentile (air, coil dropout), above at the smaller of the
    ``clip_percentiles[1]`` percentile and ``clip_z_max`` robust SDs. Lesions are a small
    fraction of the body, so an upper percentile clip (the former 99.5th) saturates the
    hyperintense tumour on DWI (10-25 robust SD on the phantom); the z cap removes only
    extreme outliers. Returns the float32 (z, y, x) array and the statistics (``clip_lo``
    is the normalised background used for padding).
    """
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = arr[sitk.GetArrayViewFromImage(mask) > 0]
    if inside.size < 10:
        raise ValueError("body mask is (almost) empty")
    lo_q, hi_q = (float(q) for q in scale_percentiles)
    p_lo, s_lo, med, s_hi, p_hi = np.percentile(
        inside, [clip_percentiles[0], lo_q, 50.0, hi_q, clip_percentiles[1]])
    z_range = NormalDist().inv_cdf(hi_q / 100) - NormalDist().inv_cdf(lo_q / 100)
    scale = float(s_hi - s_lo) / z_range or float(np.std(inside)) or 1.0
    lo, hi = (p_lo - med) / scale, min((p_hi - med) / scale, clip_z_max)
    out = np.clip((arr - med) / scale, lo, hi).astype(np.float32)
    return out, {"median": float(med), "scale": scale, "clip_lo": float(lo),
                 "clip_hi": float(hi)}


# --------------------------------------------------------------------------- ROI
def roi_start(center_zyx: Sequence[float], roi_zyx: Sequence[int]) -> np.ndarray:
    """Start index of a box of size ``roi_zyx`` centred on a continuous index."""
    center = np.asarray(center_zyx, dtype=float)
    size = np.asarray(roi_zyx, dtype=float)
    return np.floor(center - (size - 1) / 2 + 0.5).astype(int)


def tumour_box(mask_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (lo, hi) index bounds of the non-zero voxels."""
    idx = np.argwhere(mask_zyx > 0)
    return idx.min(axis=0), idx.max(axis=0)


def crop_padded(array: np.ndarray, start: Sequence[int], size: Sequence[int],
                pad_value: float | Sequence[float] = 0.0
                ) -> tuple[np.ndarray, list[list[int]]]:
    """Crop ``array[start:start+size]`` on the first three axes, padding outside the image.

    ``pad_value`` may be one value per trailing channel. Returns the crop and the padding
    ``[[before, after], ...]`` per axis (all zero when the box lies inside the image).
    """
    start, size = np.asarray(start, int), np.asarray(size, int)
    shape = np.asarray(array.shape[:3])
    lo, hi = np.maximum(start, 0), np.minimum(start + size, shape)
    if np.any(hi <= lo):
        raise ValueError(f"ROI box {start.tolist()}+{size.tolist()} misses the image "
                         f"{shape.tolist()}")
    out = np.empty((*size.tolist(), *array.shape[3:]), dtype=array.dtype)
    out[...] = np.asarray(pad_value, dtype=array.dtype)
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    out[dst] = array[src]
    padding = [[int(lo[i] - start[i]), int(start[i] + size[i] - hi[i])] for i in range(3)]
    return out, padding


def choose_roi(patient_id: str, reference: sitk.Image, roi_zyx: Sequence[int],
               tumour_zyx: np.ndarray | None, roi_center_mm: Sequence[float] | None
               ) -> dict[str, Any]:
    """ROI box on the reference grid from the tumour mask or a physical centre point."""
    info: dict[str, Any] = {"size_zyx": [int(s) for s in roi_zyx]}
    if tumour_zyx is not None and tumour_zyx.any():
        lo, hi = tumour_box(tumour_zyx)
        extent = hi - lo + 1
        info.update(source="mask", tumour_lo_zyx=lo.tolist(), tumour_hi_zyx=hi.tolist(),
                    tumour_extent_zyx=extent.tolist())
        if np.any(extent > np.asarray(roi_zyx)):
            raise RoiError(patient_id, f"tumour extent {extent.tolist()} voxels (z, y, x) does "
                           f"not fit in the ROI box {list(roi_zyx)}")
        center = (lo + hi) / 2.0
    elif roi_center_mm is not None:
        index_xyz = reference.TransformPhysicalPointToContinuousIndex(
            [float(v) for v in roi_center_mm])
        center = np.asarray(index_xyz)[::-1]
        info.update(source="roi_center_mm", center_mm=[float(v) for v in roi_center_mm])
    else:
        raise RoiError(patient_id, "no tumour mask voxels and no roi_center_mm to centre the ROI")
    start = roi_start(center, roi_zyx)
    if tumour_zyx is not None and tumour_zyx.any():
        assert np.all(start <= lo) and np.all(start + np.asarray(roi_zyx) > hi)
    info.update(center_zyx=center.tolist(), start_zyx=start.tolist())
    return info


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
    if mask is None:
        return None
    return sitk.GetArrayFromImage(resample_mask(mask, ref, tx))


def preprocess_pair(pre_images: Images, post_images: Images,
                    pre_mask: sitk.Image | None = None, post_mask: sitk.Image | None = None,
                    profile: Profile | str | PreprocessParams | None = None,
                    roi_center_mm: Sequence[float] | None = None, patient_id: str = "new",
                    threads: int = 1, check_registration: bool = True,
                    files: Mapping[str, str] | None = None) -> PreprocessedPair:
    """Preprocess one pre/post pair (the inference entry point; also used for training).

    ``*_images`` map sequence name -> image; masks are optional (inference). Without a
    pre mask the ROI is centred on ``roi_center_mm`` (physical x, y, z in mm, pre space);
    the alternative is a coarse first pass of the segmentation head on a larger box.
    Raises :class:`RegistrationError` if the exams do not overlap or the registration QC
    fails in ``params.registration`` mode ``"strict"`` (``check_registration=False`` makes
    it ``"flag"``: the flags are only recorded in ``meta``). ``files`` (``input_files``
    keys) are named in registration errors.
    """
    params = _as_params(profile)
    for label, images in (("pre", pre_images), ("post", post_images)):
        _check_inputs(patient_id, images, label, params.sequences, params.reference_sequence)
    with itk_threads(threads):
        return _preprocess_pair(pre_images, post_images, pre_mask, post_mask, params,
                                roi_center_mm, patient_id, threads, check_registration, files)


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
    roi = choose_roi(patient_id, ref, params.roi_zyx, union, roi_center_mm)
    crops, padding = [], None
    for image, tp in zip(images, TIMEPOINTS, strict=True):
        pad = [norm[tp][seq]["clip_lo"] for seq in params.sequences]
        crop, padding = crop_padded(image, roi["start_zyx"], params.roi_zyx, pad)
        crops.append(crop)
    roi.update(padding_zyx=padding, padded=bool(np.any(np.asarray(padding) > 0)))
    cropped = [None if m is None else crop_padded(m, roi["start_zyx"], params.roi_zyx, 0)[0]
               for m in masks]
    if mask_pre is not None and int(cropped[0].sum()) != int(mask_pre.sum()):
        raise RoiError(patient_id, "the ROI crop cut the pre-treatment tumour")
    return crops, cropped, roi


def _preprocess_pair(pre_images: Images, post_images: Images, pre_mask: sitk.Image | None,
                     post_mask: sitk.Image | None, params: PreprocessParams,
                     roi_center_mm: Sequence[float] | None, patient_id: str, threads: int,
                     check_registration: bool, files: Mapping[str, str] | None = None
                     ) -> PreprocessedPair:
    clock = {"start": time.perf_counter()}
    reference = params.reference_sequence
    ref = reference_grid(pre_images[reference], params.spacing_zyx)
    mask_pre = _mask_array(pre_mask, ref)
    _check_roi_inputs(patient_id, mask_pre, roi_center_mm, params)
    pre, post = (_prepare_exam(images, params, threads) for images in (pre_images, post_images))
    clock["n4_resample"] = time.perf_counter()
    local = local_region(ref, mask_pre, roi_center_mm, params)
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
            "reference_sequence": reference, "reference": geometry(ref),
            "original": {"pre": geometry(pre_images[reference]),
                         "post": geometry(post_images[reference])},
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
    rows = patient_rows[patient_rows["timepoint"] == timepoint]
    if rows.empty:
        raise InputError(patient_id, f"no {timepoint} rows in the manifest")
    return rows


def _read(patient_id: str, path: Any) -> sitk.Image:
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
    for tp in TIMEPOINTS:
        rows = _exam_rows(patient_rows, patient_id, tp)
        for _, row in rows.iterrows():
            files[f"{tp}_{row['sequence']}"] = row["image_file"]
        masks = [m for m in rows["mask_file"] if isinstance(m, str) and m]
        if masks:
            files[f"{tp}_mask"] = masks[0]
    return files


def preprocess_patient(patient_rows: pd.DataFrame,
                       profile: Profile | str | PreprocessParams | None = None,
                       threads: int = 1, **kwargs: Any) -> PreprocessedPair:
    """Read one patient's manifest rows (pre/post x sequences, masks) and preprocess them.

    With a profile (not :class:`PreprocessParams`) the sequences are the rows' own, the
    reference first; ``run_preprocessing`` sets them once from the whole manifest.
    """
    patient_id = str(patient_rows["patient_id"].iloc[0])
    if not isinstance(profile, PreprocessParams):
        profile = PreprocessParams.from_profile(profile, sequences=cohort_sequences(
            patient_rows))
    params = profile
    files = input_files(patient_rows)
    images = {tp: {s: _read(patient_id, files[f"{tp}_{s}"]) for s in params.sequences
                   if f"{tp}_{s}" in files} for tp in TIMEPOINTS}
    masks = {tp: _read(patient_id, files[f"{tp}_mask"]) if f"{tp}_mask" in files else None
             for tp in TIMEPOINTS}
    return preprocess_pair(images["pre"], images["post"], masks["pre"], masks["post"],
                           profile, patient_id=patient_id, threads=threads, files=files,
                           **kwargs)


# --------------------------------------------------------------------------- cache
def cache_key(params: PreprocessParams, checksums: Mapping[str, str]) -> str:
    """Hash of the parameters, pipeline version and input files' SHA-256."""
    text = json.dumps({"params": params.digest(), "inputs": dict(sorted(checksums.items()))},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cache_paths(out_dir: Path, patient_id: str) -> dict[str, Path]:
    return {"npz": out_dir / f"{patient_id}.npz", "sidecar": out_dir / f"{patient_id}.json",
            "tfm": out_dir / f"{patient_id}_post_to_pre.tfm"}


def _cached_row(paths: Mapping[str, Path], key: str) -> dict[str, Any] | None:
    """The stored table row if the sidecar key matches and its outputs are intact."""
    try:
        row = json.loads(paths["sidecar"].read_text())
    except (OSError, ValueError):
        return None
    if row.get("cache_key") != key:
        return None
    if row.get("status") != "ok":
        return row
    intact = all(paths[kind].exists() and sha256_file(paths[kind]) == row.get(f"{kind}_sha256")
                 for kind in ("npz", "tfm"))
    return row if intact else None


CACHE_ARRAYS = ("image_pre", "image_post", "mask_pre", "mask_post", "spacing_zyx")


class CacheError(ValueError):
    """A damaged or unreadable cache file; the message names the patient and the file."""


def load_cached(path: str | os.PathLike) -> dict[str, Any]:
    """A cached patient: the arrays plus ``meta`` (parsed ``meta_json``); no pickle.

    A damaged file raises :class:`CacheError` naming the patient (the file's stem) and the
    file; ``run_preprocessing`` recomputes such an entry (its checksum no longer matches).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {name: data[name] for name in data.files}
        out["meta"] = json.loads(str(out.pop("meta_json")))
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, KeyError, ValueError...
        raise CacheError(f"patient {path.stem}: cache file {path} is damaged or unreadable "
                         f"({type(exc).__name__}: {exc}); rerun preprocessing to recompute "
                         "it") from exc
    return out


def _qc_row(pair: PreprocessedPair) -> dict[str, Any]:
    reg, roi = pair.meta["registration"], pair.meta["roi"]
    return {"reg_metric_before": reg["metric_before"], "reg_metric_after": reg["metric_after"],
            "reg_dice_before": reg.get("dice_before"), "reg_dice_after": reg.get("dice_after"),
            "reg_translation_mm": reg["translation_mm"], "reg_rotation_deg": reg["rotation_deg"],
            "reg_iterations": reg["iterations"], "reg_attempt": reg["attempt"],
            "reg_mode": reg["mode"], "reg_kept_identity": reg.get("kept_identity"),
            "reg_translation_from_init_mm": reg.get("translation_from_init_mm"),
            "reg_local_ncc_before": reg.get("local_ncc_before"),
            "reg_local_ncc_after": reg.get("local_ncc_after"),
            "reg_flags": "; ".join(reg["flags"]),
            "roi_start_zyx": json.dumps(roi["start_zyx"]),
            "tumour_extent_zyx": json.dumps(roi.get("tumour_extent_zyx")),
            "padded": roi["padded"], "padding_zyx": json.dumps(roi["padding_zyx"]),
            "vol_pre_vox": int(pair.mask_pre.sum()), "vol_post_vox": int(pair.mask_post.sum()),
            "sequences": " ".join(pair.meta["sequences"]),
            "warnings": "; ".join(pair.meta["warnings"])}


def _write_outputs(pair: PreprocessedPair, paths: Mapping[str, Path], row: dict[str, Any]
                   ) -> None:
    """npz, transform, then the sidecar (last: it is what marks the patient as done).

    The sidecar holds both files' checksums, so a damaged file is recomputed on reuse. The
    transform is also inside the npz's ``meta_json``; the ``.tfm`` is for other ITK tools.
    """
    save_npz_atomic(paths["npz"], **pair.arrays())
    write_atomic(paths["tfm"], lambda tmp: sitk.WriteTransform(pair.transform, str(tmp)))
    row.update(npz_sha256=sha256_file(paths["npz"]), tfm_sha256=sha256_file(paths["tfm"]))
    write_json_atomic(paths["sidecar"], row)


def check_cache(patient_rows: pd.DataFrame, params: PreprocessParams,
                out_dir: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """Hash one patient's inputs and look its cache entry up.

    Returns ``(row, key)``: ``key`` is None when ``row`` is already final (a verified cache
    entry, ``cached=True``, or missing inputs, ``status="error"``); otherwise ``row`` is
    the start of the row that :func:`compute_to_cache` completes.
    """
    t0 = time.perf_counter()
    first = patient_rows.iloc[0]
    patient_id = str(first["patient_id"])
    row: dict[str, Any] = {"patient_id": patient_id,
                           "cohort": first.get("cohort"), "centre": first.get("centre")}
    try:
        files = input_files(patient_rows)
        missing = [p for p in files.values() if not Path(str(p)).exists()]
        if missing:
            raise InputError(patient_id, f"missing input file(s): {', '.join(map(str, missing))}")
        key = cache_key(params, {role: checksum(p) for role, p in files.items()})
    except PreprocessError as exc:
        return {**row, "status": "error", "error_type": type(exc).__name__, "error": str(exc),
                "cached": False, "seconds": time.perf_counter() - t0}, None
    cached = _cached_row(_cache_paths(Path(out_dir), patient_id), key)
    if cached is not None:
        return {**cached, "cached": True, "seconds": time.perf_counter() - t0}, None
    return {**row, "cache_key": key}, key


def compute_to_cache(patient_rows: pd.DataFrame, params: PreprocessParams,
                     out_dir: str | os.PathLike, row: dict[str, Any], threads: int = 1
                     ) -> dict[str, Any]:
    """Preprocess one patient and write its cache entry; returns the completed table row.

    Errors are reported in the row (``status="error"``), not raised. Known preprocessing
    errors are cached too (same inputs and parameters give the same failure); unexpected
    ones are not, so a re-run retries them.
    """
    t0 = time.perf_counter()
    row = dict(row)
    patient_id = row["patient_id"]
    paths = _cache_paths(Path(out_dir), patient_id)
    try:
        pair = preprocess_patient(patient_rows, params, threads=threads)
        pair.meta["cache_key"] = row["cache_key"]
        row.update(status="ok", error_type="", error="", cache_file=paths["npz"].name,
                   **_qc_row(pair))
        _write_outputs(pair, paths, row)
        row["step_seconds"] = json.dumps(pair.timing_s)
    except PreprocessError as exc:
        row.update(status="error", error_type=type(exc).__name__, error=str(exc))
        write_json_atomic(paths["sidecar"], row)
    except Exception as exc:  # report, never drop, a patient
        detail = (plain_itk_error(exc) if "ITK" in str(exc) or "itk::" in str(exc)
                  else traceback.format_exception_only(type(exc), exc)[-1].strip())
        row.update(status="error", error_type=type(exc).__name__,
                   error=f"patient {patient_id}: unexpected {detail}")
    return {**row, "cached": False, "seconds": time.perf_counter() - t0}


def process_to_cache(patient_rows: pd.DataFrame, params: PreprocessParams,
                     out_dir: str | os.PathLike, threads: int = 1) -> dict[str, Any]:
    """Preprocess one patient into ``out_dir`` unless a verified cache entry exists."""
    row, key = check_cache(patient_rows, params, out_dir)
    return row if key is None else compute_to_cache(patient_rows, params, out_dir, row, threads)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files left by an interrupted run (``.<name>.<random>.<ext>``).

    Assumes one run at a time per cache folder (a concurrent run's temporaries would go).
    """
    for pattern in (".*.npz", ".*.json", ".*.tfm", ".processed.*.csv"):
        for tmp in out_dir.glob(pattern):
            tmp.unlink(missing_ok=True)


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


TABLE_COLUMNS = ["patient_id", "cohort", "centre", "status", "error_type", "error", "cached",
                 "seconds", "cache_file", "cache_key", "reg_metric_before", "reg_metric_after",
                 "reg_dice_before", "reg_dice_after", "reg_translation_mm", "reg_rotation_deg",
                 "reg_iterations", "reg_attempt", "reg_mode", "reg_kept_identity",
                 "reg_translation_from_init_mm", "reg_local_ncc_before", "reg_local_ncc_after",
                 "reg_flags", "roi_start_zyx", "tumour_extent_zyx", "padded",
                 "padding_zyx", "vol_pre_vox", "vol_post_vox", "sequences", "warnings",
                 "step_seconds"]


def _run_all(groups: list[pd.DataFrame], params: PreprocessParams, out_dir: Path,
             workers: int, progress: bool) -> list[dict[str, Any]]:
    """Cache look-ups here (cheap), then the patients still to do on ``workers`` processes."""
    from tqdm import tqdm

    bar = tqdm(total=len(groups), desc="preprocess", unit="patient", disable=not progress)
    rows, todo = [], []
    for group in groups:
        row, key = check_cache(group, params, out_dir)
        if key is None:
            rows.append(row)
            bar.update()
        else:
            todo.append((group, row))
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        for group, row in todo:
            rows.append(compute_to_cache(group, params, out_dir, row))
            bar.update()
    elif todo:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(1,)) as pool:
            futures = [pool.submit(compute_to_cache, g, params, out_dir, r) for g, r in todo]
            for future in as_completed(futures):
                rows.append(future.result())
                bar.update()
    bar.close()
    return rows


def run_preprocessing(manifest_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      profile: Profile | str | None = None, workers: int | None = None,
                      params: PreprocessParams | None = None, progress: bool = True
                      ) -> pd.DataFrame:
    """Preprocess every patient of a manifest into ``out_dir`` (default: the profile cache).

    The manifest is validated first (table and files, :func:`utils.manifest.require_valid`):
    any problem raises :class:`~utils.manifest.ManifestError` listing them all, before
    anything is written. The sequences are the manifest's (reference first). Patients run
    in parallel (``workers`` processes, default all cores, one ITK thread each). Writes
    and returns ``processed.csv``: one row per patient with QC status, registration
    metrics, geometry warnings, padding and any error; failures are printed, never dropped.
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    params = params or PreprocessParams.from_profile(prof)
    workers = workers or os.cpu_count() or 1
    df = require_valid(manifest_path, reference=params.reference_sequence, workers=workers)
    params = dataclasses.replace(params, sequences=cohort_sequences(
        df, params.reference_sequence))
    out = Path(out_dir) if out_dir is not None else get_paths(prof.name).cache_dir
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    groups = [g for _, g in df.groupby("patient_id", sort=True)]
    rows = _run_all(groups, params, out, workers, progress)
    table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    table = table.sort_values("patient_id").reset_index(drop=True)
    write_text_atomic(out / "processed.csv", table.to_csv(index=False))
    _report_failures(table)
    return table


def _report_failures(table: pd.DataFrame) -> None:
    failed = table[table["status"] != "ok"]
    ok = len(table) - len(failed)
    print(f"preprocessed {ok}/{len(table)} patients "
          f"({int(table['cached'].fillna(False).sum())} from cache)")
    for _, row in failed.iterrows():
        print(f"  FAILED {row['patient_id']}: {row['error']}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest CSV (default: the profile's manifest)")
    parser.add_argument("--out", type=Path, default=None, help="cache folder")
    parser.add_argument("--profile", default=None, help="smoke | demo | paper")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--registration", choices=REGISTRATION_MODES, default="strict",
                        help="strict: a registration failing QC is an error; flag: record "
                        "the QC flags and continue; identity: do not register")
    add_params_arguments(parser)
    args = parser.parse_args(argv)
    prof = get_profile(args.profile)
    manifest = args.manifest or get_paths(prof.name).manifest
    try:
        params = params_from_arguments(args, PreprocessParams.from_profile(
            prof, registration=args.registration))
        table = run_preprocessing(manifest, args.out, prof, args.workers, params=params,
                                  progress=not args.no_progress)
    except (ManifestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if (table["status"] == "ok").all() else 1


def _triple(text: str, kind: type) -> tuple:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three values z,y,x, not {text!r}")
    return tuple(kind(p) for p in parts)


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """The geometry and sequence options shared by the preprocessing and prediction CLIs."""
    parser.add_argument("--spacing", type=lambda t: _triple(t, float), default=None,
                        metavar="Z,Y,X", help="target voxel spacing in mm (default: profile)")
    parser.add_argument("--roi", default=None, metavar="Z,Y,X[mm]",
                        help="ROI size in voxels (16,40,40) or millimetres (80,80,80mm), "
                        "default: profile")
    parser.add_argument("--reference-sequence", default=None,
                        help=f"sequence whose grid the masks follow (default "
                        f"{REFERENCE_SEQUENCE})")


def roi_voxels(roi: str, spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    """``"16,40,40"`` voxels, or ``"80,80,80mm"`` converted at ``spacing_zyx`` (rounded up)."""
    if roi.strip().lower().endswith("mm"):
        mm = _triple(roi.strip()[:-2], float)
        return tuple(math.ceil(m / s - 1e-6) for m, s in zip(mm, spacing_zyx,
                                                                    strict=True))
    return _triple(roi, int)


def params_from_arguments(args: argparse.Namespace, base: PreprocessParams
                          ) -> PreprocessParams:
    """``base`` with the CLI's ``--spacing``, ``--roi`` and ``--reference-sequence``."""
    changes: dict[str, Any] = {}
    if args.spacing is not None:
        changes["spacing_zyx"] = args.spacing
    spacing = changes.get("spacing_zyx", base.spacing_zyx)
    if args.roi is not None:
        changes["roi_zyx"] = roi_voxels(args.roi, spacing)
    if args.reference_sequence:
        changes["reference_sequence"] = args.reference_sequence
        if args.reference_sequence not in base.sequences:
            changes["sequences"] = (args.reference_sequence, *base.sequences)
    return dataclasses.replace(base, **changes)


if __name__ == "__main__":
    raise SystemExit(main())
