"""Quality control of a rigid registration: the measures and the reasons to reject it.

Measures of one transform (:func:`transform_measures`): body-mask Dice where both fields of
view overlap, and the Pearson correlation of the edges (:func:`edges`) of pre and
registered post T2W in a box around the tumour (:func:`local_region`);
:func:`transform_summary` gives its size (translation, rotation). :func:`registration_flags`
turns a registration's QC values into the reasons to reject it, against the ``qc_*``
thresholds of :class:`~utils.preprocessing.params.PreprocessParams`. The registration
itself is :mod:`utils.preprocessing.registration`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from utils import measures
from utils.geometry import box_overlap, corners, physical_box

if TYPE_CHECKING:
    from utils.preprocessing.params import PreprocessParams

MIN_LOCAL_VOXELS = 50  # fewer covered voxels in the local box: no local correlation
EDGE_SIGMA_MM = 2.5  # smoothing of the gradient magnitude compared by the local check


def fov_overlap(fixed: sitk.Image, moving: sitk.Image, tx: sitk.Transform) -> float:
    """Overlap of the two fields of view (moving mapped into fixed space through ``tx``,
    axis-aligned boxes), as a fraction of the smaller one."""
    inverse = tx.GetInverse()
    moved = np.array([inverse.TransformPoint(tuple(map(float, p))) for p in corners(moving)])
    return box_overlap(physical_box(fixed), (moved.min(axis=0), moved.max(axis=0)))


def fov_dice(fixed_mask: sitk.Image, moving_mask: sitk.Image, tx: sitk.Transform
              ) -> float | None:
    """Body-mask Dice where the moving field of view (through ``tx``) covers the fixed grid
    (None if it covers none of it)."""
    binary = sitk.Cast(moving_mask > 0, sitk.sitkUInt8)
    moved = sitk.Resample(binary, fixed_mask, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    fov = sitk.Resample(binary * 0 + 1, fixed_mask, tx, sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt8)
    region = sitk.GetArrayViewFromImage(fov) > 0
    if not region.any():
        return None
    inside = [sitk.GetArrayViewFromImage(m) > 0 for m in (fixed_mask, moved)]
    return measures.dice(inside[0] & region, inside[1] & region)


def edges(image: sitk.Image) -> sitk.Image:
    """Gradient magnitude after Gaussian smoothing (:data:`EDGE_SIGMA_MM`): the structure
    (organ and wall boundaries) that the local check compares, whatever the intensities."""
    return sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32),
                                                   EDGE_SIGMA_MM)


def local_similarity(fixed: sitk.Image, moving: sitk.Image, tx: sitk.Transform,
                     region: sitk.Image) -> tuple[float | None, float]:
    """Pearson correlation of ``fixed`` and ``moving(tx(p))`` inside ``region`` (where the
    moving exam covers it), and the covered share of the region."""
    moved = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, math.nan, sitk.sitkFloat32)
    inside = sitk.GetArrayViewFromImage(region) > 0
    a = sitk.GetArrayViewFromImage(fixed)[inside].astype(np.float64)
    b = sitk.GetArrayViewFromImage(moved)[inside].astype(np.float64)
    valid = np.isfinite(b)
    coverage = float(valid.mean()) if valid.size else 0.0
    a, b = a[valid], b[valid]
    if a.size < MIN_LOCAL_VOXELS or a.std() == 0 or b.std() == 0:
        return None, coverage
    return float(np.corrcoef(a, b)[0, 1]), coverage


def local_region(reference: sitk.Image, tumour_zyx: np.ndarray | None,
                 centre_mm: Sequence[float] | None, params: PreprocessParams,
                 extent_mm: Sequence[float] | None = None) -> sitk.Image | None:
    """The local QC box on ``reference`` (uint8): the tumour's bounding box grown by
    ``reg_local_margin_mm``; else the box of ``extent_mm`` (x, y, z; an expected tumour
    extent) around ``centre_mm`` grown the same way; else the ROI box around ``centre_mm``;
    else None."""
    shape = np.array(reference.GetSize()[::-1])
    spacing_zyx = np.array(reference.GetSpacing()[::-1])
    if tumour_zyx is not None and np.any(tumour_zyx):
        idx = np.argwhere(tumour_zyx > 0)
        grow = np.ceil(params.reg_local_margin_mm / spacing_zyx)
        lo, hi = idx.min(axis=0) - grow, idx.max(axis=0) + grow + 1
    elif centre_mm is not None and extent_mm is not None:
        index = reference.TransformPhysicalPointToContinuousIndex([float(v) for v in centre_mm])
        half = (np.asarray(extent_mm, float)[::-1] / 2 + params.reg_local_margin_mm) / spacing_zyx
        lo, hi = np.floor(np.array(index[::-1]) - half), np.ceil(np.array(index[::-1]) + half) + 1
    elif centre_mm is not None:
        index = reference.TransformPhysicalPointToContinuousIndex([float(v) for v in centre_mm])
        size = np.array(params.roi_zyx)
        lo = np.floor(np.array(index[::-1]) - (size - 1) / 2 + 0.5)
        hi = lo + size
    else:
        return None
    lo, hi = (np.clip(v, 0, shape).astype(int) for v in (lo, hi))
    array = np.zeros(shape, np.uint8)
    array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = 1
    region = sitk.GetImageFromArray(array)
    region.CopyInformation(reference)
    return region


def transform_measures(tx: sitk.Transform, masks: tuple[sitk.Image | None, sitk.Image | None],
              local: tuple[sitk.Image, sitk.Image, sitk.Image] | None) -> dict[str, Any]:
    """Body-mask Dice (both fields of view) and local edge correlation of one transform;
    ``local``: (fixed edges, moving edges, region)."""
    out: dict[str, Any] = {}
    if masks[0] is not None and masks[1] is not None:
        out["dice"] = fov_dice(masks[0], masks[1], tx)
    if local is not None:
        out["local_ncc"], out["local_coverage"] = local_similarity(local[0], local[1], tx,
                                                                  local[2])
    return out


def transform_summary(tx: sitk.Euler3DTransform, initial: sitk.Transform | None = None
                      ) -> dict[str, float]:
    """Translation (mm) and rotation angle (degrees) of a rigid transform about its centre;
    with ``initial``, also how far the centre moved beyond it (``translation_from_init_mm``)."""
    matrix = np.array(tx.GetMatrix()).reshape(3, 3)
    angle = math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1) / 2, -1, 1))))
    out = {"translation_mm": float(np.linalg.norm(tx.GetTranslation())), "rotation_deg": angle}
    if initial is not None:
        centre = tuple(float(c) for c in tx.GetCenter())
        out["translation_from_init_mm"] = float(np.linalg.norm(
            np.subtract(tx.TransformPoint(centre), initial.TransformPoint(centre))))
    return out


def registration_flags(qc: Mapping[str, Any], params: PreprocessParams) -> list[str]:
    """Reasons to reject a registration (empty when it passes)."""
    flags = []
    start, end = qc.get("metric_initial", qc["metric_before"]), qc["metric_after"]
    if end is None:
        flags.append("the metric cannot be evaluated at the result (no overlap)")
    elif start is not None and end > start + params.qc_metric_tolerance:
        flags.append(f"metric ended worse than at the initial alignment ({start:.4f} -> "
                     f"{end:.4f})")
    if qc.get("dice_after") is not None and qc["dice_after"] < params.qc_min_body_dice:
        flags.append(f"body-mask Dice {qc['dice_after']:.3f} < {params.qc_min_body_dice}")
    moved = min(qc["translation_mm"], qc.get("translation_from_init_mm", math.inf))
    if moved > params.qc_max_translation_mm:
        flags.append(f"translation {moved:.1f} mm beyond the initial alignment > "
                     f"{params.qc_max_translation_mm} mm")
    if qc["rotation_deg"] > params.qc_max_rotation_deg:
        flags.append(f"rotation {qc['rotation_deg']:.1f} deg > {params.qc_max_rotation_deg} deg")
    flags += _local_flags(qc, params)
    return flags


def _local_flags(qc: Mapping[str, Any], params: PreprocessParams) -> list[str]:
    if "local_coverage_after" not in qc:
        return []
    if qc["local_coverage_after"] < params.qc_min_local_coverage:
        return [f"the post exam covers {qc['local_coverage_after']:.0%} of the region around "
                f"the tumour (< {params.qc_min_local_coverage:.0%})"]
    ncc = qc.get("local_ncc_after")
    if ncc is None or ncc < params.qc_min_local_ncc:
        shown = "undefined" if ncc is None else f"{ncc:.3f}"
        return [f"local correlation around the tumour {shown} < {params.qc_min_local_ncc}"]
    return []
