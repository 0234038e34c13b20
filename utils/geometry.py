"""Physical-space geometry: image grids, resampling, and header checks.

The grid helpers (:func:`geometry_of`, :func:`image_from_geometry`, :func:`reference_grid`,
:func:`resample`, :func:`resample_mask`) are the preprocessing's; the checks, shared by
validation and preprocessing, read image headers only (size, spacing, origin, direction).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

# Voxel sizes outside this range (mm) are implausible for clinical MRI: a header in
# metres or centimetres, or a mis-converted file.
PLAUSIBLE_SPACING_MM = (0.1, 10.0)
# Below this overlap (of the smaller field of view) two exams barely see the same anatomy.
MIN_FOV_OVERLAP = 0.5
AXES_ZYX = ("z", "y", "x")


# --------------------------------------------------------------------------- grids
def geometry_of(image: sitk.Image) -> dict[str, list]:
    """The grid of an image as plain lists (x, y, z order, as SimpleITK)."""
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def image_from_geometry(geom: Mapping[str, Sequence], pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """An all-zero image on the grid ``geom`` (from :func:`geometry_of`)."""
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


# --------------------------------------------------------------------------- checks


def corners(image: sitk.Image) -> np.ndarray:
    """Physical (x, y, z) corners of the region the voxels cover, shape (8, 3)."""
    ranges = [(-0.5, s - 0.5) for s in image.GetSize()]
    return np.array([image.TransformContinuousIndexToPhysicalPoint(c)
                     for c in itertools.product(*ranges)])


Box = tuple[np.ndarray, np.ndarray]


def physical_box(image: sitk.Image) -> Box:
    """Axis-aligned (lo, hi) corners, in mm, of the region the image's voxels cover."""
    points = corners(image)
    return points.min(axis=0), points.max(axis=0)


def box_overlap(a: Box, b: Box) -> float:
    """Volume of the intersection of two boxes over the smaller one (0 to 1)."""
    inter = np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0.0, None)
    smaller = min(float(np.prod(hi - lo)) for lo, hi in (a, b))
    return float(np.prod(inter)) / smaller if smaller > 0 else 0.0


def overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Volume of the intersection of two fields of view over the smaller one (0 to 1)."""
    return box_overlap(physical_box(a), physical_box(b))


def format_values(values: Sequence[float]) -> str:
    """``(1, 2.5, 3)``: numbers in their shortest form, for messages."""
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def spacing_warnings(images: Mapping[str, sitk.Image], label: str) -> list[str]:
    """Voxel sizes outside :data:`PLAUSIBLE_SPACING_MM`, one line per image."""
    lo, hi = PLAUSIBLE_SPACING_MM
    return [f"{label} {name}: voxel size {format_values(image.GetSpacing())} mm is outside the "
            f"plausible MRI range {lo:g}-{hi:g} mm (header in other units?)"
            for name, image in images.items()
            if min(image.GetSpacing()) < lo or max(image.GetSpacing()) > hi]


def thin_volume_warnings(image: sitk.Image, label: str, roi_zyx: Sequence[int],
                         spacing_zyx: Sequence[float]) -> list[str]:
    """Axes along which the volume covers less than half the ROI box (mostly padding)."""
    extent_zyx = (np.array(image.GetSpacing()) * np.array(image.GetSize()))[::-1]
    roi_mm = np.asarray(roi_zyx, dtype=float) * np.asarray(spacing_zyx, dtype=float)
    return [f"{label}: {AXES_ZYX[axis]} extent {extent_zyx[axis]:.0f} mm is less than half "
            f"the ROI box's {roi_mm[axis]:.0f} mm, so most of the crop would be padding"
            for axis in range(3) if extent_zyx[axis] < 0.5 * roi_mm[axis]]


def pair_geometry_warnings(pre: Mapping[str, sitk.Image], post: Mapping[str, sitk.Image],
                           reference: str, roi_zyx: Sequence[int],
                           spacing_zyx: Sequence[float]) -> list[str]:
    """Implausible geometry of one pre/post pair, as plain sentences for the QC table."""
    warnings = spacing_warnings(pre, "pre") + spacing_warnings(post, "post")
    for label, exam in (("pre", pre), ("post", post)):
        warnings += thin_volume_warnings(exam[reference], f"{label} {reference}", roi_zyx,
                                         spacing_zyx)
    overlap = overlap_fraction(pre[reference], post[reference])
    if overlap < MIN_FOV_OVERLAP:
        warnings.append(f"pre and post {reference} fields of view overlap by {overlap:.0%} of "
                        "the smaller one in scanner coordinates (table offset, or another "
                        "region imaged?)")
    return warnings


def sequences_outside_reference(exam: Mapping[str, sitk.Image], reference: str
                                ) -> dict[str, float]:
    """Sequences of one exam whose field of view does not overlap the reference's at all
    (sequence -> overlap fraction); such a channel would be all background."""
    ref = exam[reference]
    overlaps = {name: overlap_fraction(ref, image) for name, image in exam.items()
                if name != reference}
    return {name: value for name, value in overlaps.items() if value <= 0.0}
