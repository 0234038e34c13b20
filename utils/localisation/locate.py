"""From a coarse tumour probability map to an ROI placement: the most probable component's
probability-weighted centroid (physical mm), whether one was found, its volume and extent.

NumPy, SciPy and SimpleITK only (prediction imports it without loading a network).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from utils.preprocessing.params import CENTRE_COLUMNS, EXTENT_COLUMNS


def component_centre(prob: np.ndarray, threshold: float = 0.5
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Continuous (z, y, x) index of the most probable component above ``threshold``
    (probability-weighted centroid; components ranked by summed probability) and its
    boolean mask; with none above, the most probable voxel and None."""
    labels, n = ndimage.label(prob >= threshold)
    if n == 0:
        return np.asarray(np.unravel_index(int(np.argmax(prob)), prob.shape), float), None
    mass = ndimage.sum(prob, labels, index=range(1, n + 1))
    component = labels == int(np.argmax(mass)) + 1
    return np.asarray(ndimage.center_of_mass(np.where(component, prob, 0.0))), component


def locate(prob: np.ndarray, grid: sitk.Image, threshold: float = 0.5) -> dict[str, Any]:
    """The ROI centre (physical mm), whether a component was found, its volume and extent
    (mm along the grid axes x, y, z) from one coarse probability map on ``grid``."""
    index, component = component_centre(prob, threshold)
    point = grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in index[::-1]])
    spacing_xyz = np.asarray(grid.GetSpacing())
    if component is None:
        voxels, extent = 0, np.zeros(3)
    else:
        idx = np.argwhere(component)
        voxels, extent = len(idx), (np.ptp(idx, axis=0)[::-1] + 1) * spacing_xyz
    return {**dict(zip(CENTRE_COLUMNS, (round(float(v), 4) for v in point), strict=True)),
            "found": component is not None, "max_probability": round(float(prob.max()), 4),
            "component_ml": round(voxels * float(np.prod(spacing_xyz)) / 1000.0, 3),
            **dict(zip(EXTENT_COLUMNS, (round(float(v), 2) for v in extent), strict=True))}
