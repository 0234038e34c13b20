"""Measures that every stage uses: a mask's volume, Dice overlap, largest slice, the
volume-reduction score, and the AUC of a score.

Masks are NumPy arrays in (z, y, x) order with ``spacing_zyx`` in mm, or SimpleITK images
(spacing taken from the image), binarised as ``value > threshold`` (default 0: any label).
Surface distances and the per-patient tables are :mod:`utils.evaluation.segmetrics`'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

MaskLike = np.ndarray | sitk.Image
VOLUME_FLOOR_ML = 1e-3  # 1 mm^3: an empty pre-treatment mask still gives a finite score


def as_binary(mask: MaskLike, spacing_zyx: Sequence[float] | None, threshold: float,
               require_spacing: bool = True) -> tuple[np.ndarray, tuple[float, ...]]:
    """Boolean (z, y, x) array and spacing (z, y, x) in mm from an array or SimpleITK image."""
    if isinstance(mask, sitk.Image):
        spacing = tuple(float(v) for v in reversed(mask.GetSpacing()))
        if spacing_zyx is not None and not np.allclose(spacing, spacing_zyx):
            raise ValueError(f"spacing_zyx {tuple(spacing_zyx)} differs from the image's "
                             f"spacing {spacing}")
        array = sitk.GetArrayFromImage(mask)
    else:
        if spacing_zyx is None and require_spacing:
            raise ValueError("spacing_zyx (mm) is required for NumPy masks")
        spacing_zyx = (1.0, 1.0, 1.0) if spacing_zyx is None else spacing_zyx
        spacing, array = tuple(float(v) for v in spacing_zyx), np.asarray(mask)
    if array.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"need a 3-D (z, y, x) mask and 3 spacings, got shape {array.shape} "
                         f"and spacing {spacing}")
    return array > threshold, spacing


def to_image(mask: np.ndarray, spacing_zyx: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(v) for v in reversed(spacing_zyx)])
    return image


def dice(a: MaskLike, b: MaskLike, threshold: float = 0.0) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) (SimpleITK ``LabelOverlapMeasuresImageFilter``);
    1.0 when both masks are empty, 0.0 when exactly one is. Spacing is not needed."""
    mask_a = as_binary(a, None, threshold, require_spacing=False)[0]
    mask_b = as_binary(b, None, threshold, require_spacing=False)[0]
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"masks have different shapes: {mask_a.shape} vs {mask_b.shape}")
    if not mask_a.any() or not mask_b.any():
        return float(mask_a.any() == mask_b.any())
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    unit = (1.0, 1.0, 1.0)  # Dice does not depend on spacing
    overlap.Execute(to_image(mask_a, unit), to_image(mask_b, unit))
    return float(overlap.GetDiceCoefficient())


def volume_ml(mask: MaskLike, spacing_zyx: Sequence[float] | None = None,
              threshold: float = 0.0) -> float:
    """Volume in ml: number of voxels × voxel volume (mm^3) / 1000."""
    binary, spacing = as_binary(mask, spacing_zyx, threshold)
    return float(binary.sum() * np.prod(spacing) / 1000.0)


def largest_slice(mask: MaskLike) -> int:
    """Index along z of the slice with the most foreground (> 0) voxels of a (z, y, x) mask
    (array or SimpleITK image): the tumour's largest slice; the middle slice when the mask
    is empty."""
    array = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else mask
    areas = (np.asarray(array) > 0).reshape(len(array), -1).sum(axis=1)
    return int(np.argmax(areas)) if areas.any() else len(array) // 2


def volume_reduction(vol_pre_ml, vol_post_ml, floor_ml: float = VOLUME_FLOOR_ML) -> np.ndarray:
    """Volume-reduction score 1 - V_post / V_pre (higher = more shrinkage = more likely pCR);
    V_pre is floored at ``floor_ml`` so that an empty pre-treatment mask gives a finite
    score."""
    pre = np.maximum(np.asarray(vol_pre_ml, dtype=float), floor_ml)
    return 1.0 - np.asarray(vol_post_ml, dtype=float) / pre


def sigmoid(t) -> np.ndarray:
    """The logistic function 1 / (1 + exp(-t))."""
    return 1.0 / (1.0 + np.exp(-t))


def auc_or_nan(y_true, score) -> float:
    """Area under the ROC curve (sklearn ``roc_auc_score``: the Mann-Whitney probability that
    a random positive scores above a random negative, ties 1/2), or NaN when ``y_true`` does
    not hold both classes."""
    y = np.asarray(y_true).ravel()
    return float(roc_auc_score(y, np.asarray(score, float).ravel())) if np.unique(y).size == 2 \
        else float("nan")
