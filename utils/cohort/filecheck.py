"""Checks of one manifest file: existence, checksum, header, voxel values, mask labels.

Each check returns plain messages; :func:`utils.cohort.manifest.check_patient_files` adds the row,
patient and file. The header checks themselves (voxel limit, truncated data, DICOM slice
spacing) are :mod:`utils.cohort.imagecheck`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.cohort import imagecheck
from utils.geometry import format_values
from utils.io import checksum

GEOMETRY_TOLERANCE = 1e-3  # relative, for spacing, origin (mm) and direction cosines


def check_file(file: str, expected_sha: str, mask: bool = False
               ) -> tuple[sitk.Image | None, list[str]]:
    """Existence, checksum, header, data length, shape and voxel values of one file.

    Returns the image (None when it cannot be used) and the problems found. An empty
    ``file`` (an empty path cell, reported by the table checks) gives ``(None, [])``;
    an empty ``expected_sha`` skips the checksum.
    """
    if not file:
        return None, []
    path = Path(file)
    if not path.exists():
        return None, ["file does not exist"]
    if expected_sha and checksum(path) != expected_sha:
        return None, ["sha256 does not match the manifest (file changed or corrupt)"]
    try:
        image, nonfinite = _read_checked(path)
    except Exception as error:
        return None, [str(error) if isinstance(error, imagecheck.ImageFileError)
                      else f"unreadable image: {imagecheck.plain_itk_error(error)}"]
    return image, _voxel_problems(image, nonfinite, mask)


def _read_checked(path: Path) -> tuple[sitk.Image, int]:
    """An image file or DICOM folder read after every header check, and its NaN/inf count
    from the raw NIfTI data; raises :class:`~utils.cohort.imagecheck.ImageFileError`."""
    if path.is_dir():
        image, nonfinite = imagecheck.strip_metadata(imagecheck.read_dicom_series(path)), 0
    else:
        info = imagecheck.inspect_file(path, count_nonfinite=True)
        imagecheck.require_scalar_volume(info.dimension, info.size, info.components)
        image = imagecheck.strip_metadata(imagecheck.read_file(path))
        nonfinite = info.nonfinite
    imagecheck.require_scalar_volume(image.GetDimension(), image.GetSize(),
                                     image.GetNumberOfComponentsPerPixel())
    return image, nonfinite


def _voxel_problems(image: sitk.Image, nonfinite: int, mask: bool) -> list[str]:
    """NaN/inf voxels (ITK's NIfTI reader hides them as 0); images without contrast."""
    pixels = sitk.GetArrayViewFromImage(image)
    count = max(int(pixels.size - np.count_nonzero(np.isfinite(pixels))), nonfinite)
    if count:
        return [f"{count} NaN or infinite voxel(s)"]
    problem = None if mask else imagecheck.content_problem(pixels)
    return [problem] if problem else []


def mask_problems(mask: sitk.Image) -> list[str]:
    """Labels 0 and 1, or 0 and 255 (both read as tumour where > 0), and not empty."""
    pixels = sitk.GetArrayViewFromImage(mask)
    if problem := imagecheck.mask_problem(pixels):
        return [problem]
    if not np.any(pixels > 0):
        return ["mask is empty (no tumour voxel)"]
    return []


def geometry_problems(image: sitk.Image, mask: sitk.Image) -> list[str]:
    """Where a mask's grid (size, spacing, origin, direction) differs from its image's."""
    checks = {
        "size": (image.GetSize(), mask.GetSize(), 0.0),
        "spacing": (image.GetSpacing(), mask.GetSpacing(), GEOMETRY_TOLERANCE),
        "origin": (image.GetOrigin(), mask.GetOrigin(), GEOMETRY_TOLERANCE),
        "direction": (image.GetDirection(), mask.GetDirection(), GEOMETRY_TOLERANCE),
    }
    return [f"mask {name} {format_values(found)} differs from the reference image's "
            f"{format_values(expected)}" for name, (expected, found, tol) in checks.items()
            if not np.allclose(expected, found, rtol=tol, atol=tol)]
