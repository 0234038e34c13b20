"""Geometry checks of an image header that ITK does not make, and the warnings of a header
or voxels that may be wrong.

ITK reads a NIfTI pixdim of 0 or NaN as 1 mm, keeps a sheared MetaImage/NRRD direction
matrix, reports a negative MetaImage ElementSpacing, and assumes an axis-aligned LPS
orientation for a NIfTI file without qform and sform. :func:`geometry_checks` refuses the
first three (:class:`~utils.cohort.imageerrors.ImageFileError`) and returns warnings for
what may be right; :func:`require_slices` refuses a volume too thin to register, and
:func:`saturation_warning` flags an integer image clipped at its type's maximum.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from utils.cohort.imageerrors import ImageFileError
from utils.cohort.voxeldata import NiftiGeometry, nifti_geometry
from utils.geometry import format_values

# Registration's pyramid and smoothing filters (ITK) refuse an axis of fewer than four
# voxels ("requires a minimum of four pixels along the dimension"): tried with phantom
# exams cut to 1, 2, 3, 4 and 6 slices, 4 slices of 3 mm resampled to 5 mm fail, 6 pass.
MIN_SLICES = 4
ORTHONORMAL_TOLERANCE = 1e-3  # of a direction matrix's column norms and dot products
SATURATED_FRACTION = 0.01  # share of voxels at an integer type's maximum that warns
AXES = "xyz"


def nifti_pixdim_problem(header: NiftiGeometry) -> str | None:
    """Zero, negative or non-finite pixdim[1..3] (ITK reads 0 and NaN as 1 mm)."""
    pixdim = np.asarray(header.pixdim, dtype=float)
    if np.all(np.isfinite(pixdim)) and np.all(pixdim > 0):
        return None
    return (f"voxel spacing (NIfTI pixdim[1..3]) is {format_values(pixdim)} mm: each must be "
            "a positive, finite number (ITK would read a zero or NaN spacing as 1 mm)")


def orthonormal_error(matrix: np.ndarray) -> float:
    """Largest deviation of ``matrix.T @ matrix`` from the identity."""
    return float(np.max(np.abs(matrix.T @ matrix - np.eye(matrix.shape[1]))))


def nifti_warnings(header: NiftiGeometry) -> list[str]:
    """No orientation at all, or a sheared sform that ITK replaced."""
    found = []
    if header.qform_code == 0 and header.sform_code == 0:
        found.append("NIfTI qform_code and sform_code are both 0 (no orientation): ITK "
                     "assumes an axis-aligned LPS orientation; check left and right")
    if header.sform_code > 0:
        linear = header.srow[:, :3]
        norms = np.linalg.norm(linear, axis=0)
        if np.all(norms > 0) and orthonormal_error(linear / norms) > ORTHONORMAL_TOLERANCE:
            found.append(f"NIfTI sform (sform_code {header.sform_code}) is sheared: its 3x3 "
                         "part, column scales removed, is not orthonormal; ITK used the "
                         "qform or an orthonormalised sform instead")
    return found


def geometry_checks(path: Path, reader: sitk.ImageFileReader | None = None) -> list[str]:
    """Refuse a bad spacing or a sheared direction matrix of ``path``; return warnings.

    NIfTI files are judged from their raw header (before ITK's defaults); every format
    from what ITK reports (``reader``: header read, no voxels).
    """
    warnings: list[str] = []
    header = (nifti_geometry(path) if path.name.lower().endswith((".nii", ".nii.gz"))
              else None)
    if header is not None:
        if problem := nifti_pixdim_problem(header):
            raise ImageFileError(problem)
        warnings += nifti_warnings(header)
    if reader is None:
        return warnings
    spacing = np.asarray(reader.GetSpacing(), dtype=float)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise ImageFileError(f"voxel spacing {format_values(spacing)} mm is not positive "
                             "and finite (a negative or zero ElementSpacing or space "
                             "directions entry in the header?)")
    dim = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)
    if (error := orthonormal_error(direction)) > ORTHONORMAL_TOLERANCE:
        raise ImageFileError(f"direction matrix {format_values(direction.ravel())} is not "
                             f"orthonormal (off by {error:.3g} > {ORTHONORMAL_TOLERANCE:g}): "
                             "a sheared or scaled grid, which resampling would misplace")
    return warnings


def require_slices(size: Sequence[int]) -> None:
    """Refuse a volume with fewer than :data:`MIN_SLICES` voxels along an axis."""
    for axis, count in zip(AXES, size, strict=False):
        if int(count) < MIN_SLICES:
            raise ImageFileError(f"has {int(count)} slice(s) along {axis}: a 3-D volume needs "
                                 f"at least {MIN_SLICES} (registration's filters need four "
                                 "voxels along each axis)")


def saturation_warning(pixels: np.ndarray) -> str | None:
    """More than :data:`SATURATED_FRACTION` of an integer image's voxels at its type's
    maximum: a saturated or clipped export."""
    if pixels.dtype.kind not in "iu" or pixels.size == 0:
        return None
    top = np.iinfo(pixels.dtype).max
    share = np.count_nonzero(pixels == top) / pixels.size
    if share <= SATURATED_FRACTION:
        return None
    return (f"{share:.1%} of voxels sit at the {pixels.dtype} maximum {top}: a saturated or "
            "clipped export? (registration and normalisation may fail)")
