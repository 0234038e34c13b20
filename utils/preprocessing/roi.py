"""The ROI box: placed on a given centre (or the tumour), cropped with padding, never shifted.

Indices are (z, y, x) on the reference grid. A box leaving the image is padded, so the
tumour stays centred and the crop's padding is recorded (``padding_zyx``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from utils.errors import RoiError


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
    if info["source"] == "mask" and (np.any(start > lo) or np.any(start + roi_zyx <= hi)):
        raise RuntimeError(f"patient {patient_id}: ROI box from {start.tolist()} misses part "
                           f"of the tumour {lo.tolist()}-{hi.tolist()} (a bug in roi_start)")
    info.update(center_zyx=center.tolist(), start_zyx=start.tolist())
    return info


def tumour_coverage(reference: sitk.Image, center_zyx: Sequence[float],
                    masks: Sequence[np.ndarray | None], cropped: Sequence[np.ndarray | None]
                    ) -> dict[str, Any]:
    """Scoring of a ROI placed without the masks: the distance (mm) from its centre to the
    pre tumour's centroid and the share of each exam's tumour inside the box ({} without a
    pre tumour). Never used to place anything."""
    if masks[0] is None or not masks[0].any():
        return {}
    centroid = np.argwhere(masks[0] > 0).mean(axis=0)
    points = [np.asarray(reference.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in np.asarray(c, float)[::-1]])) for c in (centroid, center_zyx)]
    inside = {tp: (None if full is None or not full.any()
                   else round(float(crop.sum()) / float(full.sum()), 4))
              for tp, full, crop in zip(("pre", "post"), masks, cropped, strict=True)}
    return {"tumour_centroid_mm": [round(float(v), 3) for v in points[0]],
            "centre_error_mm": round(float(np.linalg.norm(points[1] - points[0])), 3),
            "tumour_inside_pre": inside["pre"], "tumour_inside_post": inside["post"],
            "whole_tumour_inside": all(v in (None, 1.0) for v in inside.values())}
