"""Intensity steps of preprocessing: body mask, N4 bias-field correction, normalisation.

N4 is fitted on a copy shrunk to ~8 mm voxels inside a body mask (Otsu/2, largest
component, holes filled) and applied at full resolution through ``GetLogBiasFieldAsImage``.
Normalisation is a robust z-score inside the body mask (median, (p95 - p5) / 3.29), clipped,
so that centres with different scanner scaling and SNR agree. Which sequences are
N4-corrected is :func:`utils.preprocessing.pipeline.correct_exam`'s policy (``params.n4_others``).
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from utils.geometry import resample, resample_mask

if TYPE_CHECKING:
    from utils.preprocessing.params import PreprocessParams


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
